#include "CP2PQAEAD.h"

#if defined(__linux__)

// Declarations matching BoringSSL's <openssl/aead.h> under swift-crypto's symbol prefix. The
// structs stay opaque: only pointers cross this file.
struct evp_aead_st;
struct evp_aead_ctx_st;

extern const struct evp_aead_st *CCryptoBoringSSL_EVP_aead_chacha20_poly1305(void) __attribute__((weak));
extern const struct evp_aead_st *CCryptoBoringSSL_EVP_aead_aes_256_gcm(void) __attribute__((weak));
extern struct evp_aead_ctx_st *CCryptoBoringSSL_EVP_AEAD_CTX_new(const struct evp_aead_st *aead, const uint8_t *key,
                                                                 size_t key_len, size_t tag_len) __attribute__((weak));
extern void CCryptoBoringSSL_EVP_AEAD_CTX_free(struct evp_aead_ctx_st *ctx) __attribute__((weak));
extern int CCryptoBoringSSL_EVP_AEAD_CTX_seal(const struct evp_aead_ctx_st *ctx, uint8_t *out, size_t *out_len,
                                              size_t max_out_len, const uint8_t *nonce, size_t nonce_len,
                                              const uint8_t *in, size_t in_len, const uint8_t *ad,
                                              size_t ad_len) __attribute__((weak));
extern int CCryptoBoringSSL_EVP_AEAD_CTX_open(const struct evp_aead_ctx_st *ctx, uint8_t *out, size_t *out_len,
                                              size_t max_out_len, const uint8_t *nonce, size_t nonce_len,
                                              const uint8_t *in, size_t in_len, const uint8_t *ad,
                                              size_t ad_len) __attribute__((weak));
extern void CCryptoBoringSSL_ERR_clear_error(void) __attribute__((weak));

int p2pq_aead_available(void) {
    return CCryptoBoringSSL_EVP_aead_chacha20_poly1305 != 0 && CCryptoBoringSSL_EVP_aead_aes_256_gcm != 0 &&
           CCryptoBoringSSL_EVP_AEAD_CTX_new != 0 && CCryptoBoringSSL_EVP_AEAD_CTX_free != 0 &&
           CCryptoBoringSSL_EVP_AEAD_CTX_seal != 0 && CCryptoBoringSSL_EVP_AEAD_CTX_open != 0 &&
           CCryptoBoringSSL_ERR_clear_error != 0;
}

p2pq_aead_ctx *p2pq_aead_new(int cipher, const uint8_t *key, size_t key_len) {
    if (!p2pq_aead_available()) return 0;
    const struct evp_aead_st *aead;
    switch (cipher) {
    case P2PQ_AEAD_CHACHA20_POLY1305: aead = CCryptoBoringSSL_EVP_aead_chacha20_poly1305(); break;
    case P2PQ_AEAD_AES_256_GCM: aead = CCryptoBoringSSL_EVP_aead_aes_256_gcm(); break;
    default: return 0;
    }
    // Tag length 0 selects the AEAD's default, 16 bytes for both.
    struct evp_aead_ctx_st *ctx = CCryptoBoringSSL_EVP_AEAD_CTX_new(aead, key, key_len, 0);
    if (!ctx) CCryptoBoringSSL_ERR_clear_error();
    return (p2pq_aead_ctx *)ctx;
}

void p2pq_aead_free(p2pq_aead_ctx *ctx) {
    if (ctx) CCryptoBoringSSL_EVP_AEAD_CTX_free((struct evp_aead_ctx_st *)ctx);
}

int p2pq_aead_seal(const p2pq_aead_ctx *ctx, uint8_t *out, size_t max_out, const uint8_t *nonce12,
                   const uint8_t *in, size_t in_len, const uint8_t *ad, size_t ad_len) {
    size_t written = 0;
    int ok = CCryptoBoringSSL_EVP_AEAD_CTX_seal((const struct evp_aead_ctx_st *)ctx, out, &written, max_out, nonce12,
                                                12, in, in_len, ad, ad_len);
    if (!ok) {
        // BoringSSL queues an error per failure; drop it so the thread's queue does not grow.
        CCryptoBoringSSL_ERR_clear_error();
        return 0;
    }
    return written == in_len + 16;
}

int p2pq_aead_open(const p2pq_aead_ctx *ctx, uint8_t *out, size_t max_out, const uint8_t *nonce12,
                   const uint8_t *in, size_t in_len, const uint8_t *ad, size_t ad_len) {
    size_t written = 0;
    int ok = CCryptoBoringSSL_EVP_AEAD_CTX_open((const struct evp_aead_ctx_st *)ctx, out, &written, max_out, nonce12,
                                                12, in, in_len, ad, ad_len);
    if (!ok) {
        CCryptoBoringSSL_ERR_clear_error();
        return 0;
    }
    return in_len >= 16 && written == in_len - 16;
}

#else

int p2pq_aead_available(void) { return 0; }
p2pq_aead_ctx *p2pq_aead_new(int cipher, const uint8_t *key, size_t key_len) {
    (void)cipher; (void)key; (void)key_len;
    return 0;
}
void p2pq_aead_free(p2pq_aead_ctx *ctx) { (void)ctx; }
int p2pq_aead_seal(const p2pq_aead_ctx *ctx, uint8_t *out, size_t max_out, const uint8_t *nonce12,
                   const uint8_t *in, size_t in_len, const uint8_t *ad, size_t ad_len) {
    (void)ctx; (void)out; (void)max_out; (void)nonce12; (void)in; (void)in_len; (void)ad; (void)ad_len;
    return 0;
}
int p2pq_aead_open(const p2pq_aead_ctx *ctx, uint8_t *out, size_t max_out, const uint8_t *nonce12,
                   const uint8_t *in, size_t in_len, const uint8_t *ad, size_t ad_len) {
    (void)ctx; (void)out; (void)max_out; (void)nonce12; (void)in; (void)in_len; (void)ad; (void)ad_len;
    return 0;
}

#endif
