#ifndef CP2PQ_OPENSSL_SHIM_H
#define CP2PQ_OPENSSL_SHIM_H
// ChaCha20-Poly1305 through the system's OpenSSL (libcrypto), used by P2PQNoise when the package
// is built with it: OpenSSL 3 has AVX-512 ChaCha20 and Poly1305 code, which on this project's
// machines seals full records 1.4-1.7 times as fast as the AVX2 code of the BoringSSL that
// swift-crypto vendors. Only the transport cipher comes from here; keys, hashes and DH stay on swift-crypto.
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <openssl/evp.h>

/// A context keyed with a 32-byte ChaCha20-Poly1305 key, or NULL. One context serves one
/// operation at a time (OpenSSL keeps per-message state in it); the caller serialises.
static inline EVP_CIPHER_CTX *p2pq_ossl_chacha_new(const uint8_t *key) {
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (!ctx) return NULL;
    if (EVP_CipherInit_ex(ctx, EVP_chacha20_poly1305(), NULL, key, NULL, 1) != 1) {
        EVP_CIPHER_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

/// Frees a context from `p2pq_ossl_chacha_new` (OpenSSL clears the key).
static inline void p2pq_ossl_chacha_free(EVP_CIPHER_CTX *ctx) {
    EVP_CIPHER_CTX_free(ctx);
}

/// Writes `in_len + 16` bytes (ciphertext then tag) to `out`, which may equal `in`. 1 on success.
static inline int p2pq_ossl_chacha_seal(EVP_CIPHER_CTX *ctx, uint8_t *out, const uint8_t *nonce12,
                                        const uint8_t *in, size_t in_len, const uint8_t *ad, size_t ad_len) {
    int len = 0;
    if (in_len > INT_MAX || ad_len > INT_MAX) return 0;
    // A new nonce on the key already set: NULL cipher and key keep them.
    if (EVP_CipherInit_ex(ctx, NULL, NULL, NULL, nonce12, 1) != 1) return 0;
    if (ad_len > 0 && EVP_CipherUpdate(ctx, NULL, &len, ad, (int)ad_len) != 1) return 0;
    if (in_len > 0 && EVP_CipherUpdate(ctx, out, &len, in, (int)in_len) != 1) return 0;
    if (EVP_CipherFinal_ex(ctx, out + in_len, &len) != 1) return 0;
    return EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, 16, out + in_len) == 1;
}

/// Verifies and decrypts `in_len` bytes (ciphertext then 16-byte tag) into `out` (`in_len - 16`
/// bytes; may equal `in`). 1 if the tag verifies, else 0 (nothing usable in `out`).
static inline int p2pq_ossl_chacha_open(EVP_CIPHER_CTX *ctx, uint8_t *out, const uint8_t *nonce12,
                                        const uint8_t *in, size_t in_len, const uint8_t *ad, size_t ad_len) {
    int len = 0;
    if (in_len < 16 || in_len - 16 > INT_MAX || ad_len > INT_MAX) return 0;
    size_t body = in_len - 16;
    if (EVP_CipherInit_ex(ctx, NULL, NULL, NULL, nonce12, 0) != 1) return 0;
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, 16, (void *)(in + body)) != 1) return 0;
    if (ad_len > 0 && EVP_CipherUpdate(ctx, NULL, &len, ad, (int)ad_len) != 1) return 0;
    if (body > 0 && EVP_CipherUpdate(ctx, out, &len, in, (int)body) != 1) return 0;
    return EVP_CipherFinal_ex(ctx, out + body, &len) == 1;
}

#endif
