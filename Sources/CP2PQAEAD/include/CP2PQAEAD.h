#ifndef CP2PQ_AEAD_H
#define CP2PQ_AEAD_H

#include <stddef.h>
#include <stdint.h>

// A thin bridge to the BoringSSL that swift-crypto compiles into every binary that links it
// (symbols prefixed `CCryptoBoringSSL_`). swift-crypto's Swift API allocates and copies on
// every seal/open; BoringSSL's own EVP_AEAD API encrypts straight into caller memory, in
// place if asked. The symbols are referenced weakly: where they are absent (another
// swift-crypto layout, or Apple platforms where swift-crypto defers to CryptoKit),
// `p2pq_aead_available()` returns 0 and the caller uses swift-crypto's API instead.

/// An initialised BoringSSL `EVP_AEAD_CTX` (opaque).
typedef struct p2pq_aead_ctx p2pq_aead_ctx;

enum {
    P2PQ_AEAD_CHACHA20_POLY1305 = 0,
    P2PQ_AEAD_AES_256_GCM = 1,
};

/// 1 if BoringSSL's AEAD functions are linked in, else 0.
int p2pq_aead_available(void);

/// A context for `cipher` keyed with `key_len` bytes (32), or NULL.
p2pq_aead_ctx *_Nullable p2pq_aead_new(int cipher, const uint8_t *_Nonnull key, size_t key_len);

/// Frees (and zeroes) a context from `p2pq_aead_new`.
void p2pq_aead_free(p2pq_aead_ctx *_Nullable ctx);

/// Writes `in_len + 16` bytes (ciphertext then tag) to `out`. `out` may equal `in` but must
/// not otherwise overlap it. Returns 1 on success, 0 on failure.
int p2pq_aead_seal(const p2pq_aead_ctx *_Nonnull ctx, uint8_t *_Nonnull out, size_t max_out,
                   const uint8_t *_Nonnull nonce12,
                   const uint8_t *_Nullable in, size_t in_len,
                   const uint8_t *_Nullable ad, size_t ad_len);

/// Verifies and decrypts `in_len` bytes (ciphertext then 16-byte tag), writing
/// `in_len - 16` bytes to `out`. `out` may equal `in` but must not otherwise overlap it.
/// Returns 1 on success, 0 if the tag does not verify (nothing usable is written).
int p2pq_aead_open(const p2pq_aead_ctx *_Nonnull ctx, uint8_t *_Nullable out, size_t max_out,
                   const uint8_t *_Nonnull nonce12,
                   const uint8_t *_Nonnull in, size_t in_len,
                   const uint8_t *_Nullable ad, size_t ad_len);

#endif
