/*
 * siv_ceiling.c: the C ceiling for vpncrypt's native AES-256-SIV path, and the two
 * OpenSSL call sequences the native core ran before.
 *
 * Three implementations ("impl"), all over the system libcrypto, in tight loops with
 * no Python in the way:
 *
 * chain (the C ceiling): exactly the code of vpncrypt/_fast.pyx (struct Siv, cbc,
 *   cmac_msg, cmac, s2v, ctr, siv_init, siv_seal, siv_open) since commit "Native AES-SIV
 *   on never-reinitialised AES-CBC (CMAC chain) and AES-ECB (CTR keystream) contexts":
 *   RFC 5297 SIV from S2V over CMAC and AES-CTR, on two AES contexts per key that are
 *   never re-initialised:
 *
 *   once per key:  cbc = EVP_EncryptInit_ex(AES-256-CBC, K1 (first 32 bytes), zero IV),
 *                        padding off; chain = 0 (our copy of the context's IV)
 *                  ecb = EVP_EncryptInit_ex(AES-256-ECB, K2 (last 32 bytes)), padding off
 *                  L = CBC(zero block); sub1 = dbl(L), sub2 = dbl(sub1)  (RFC 4493)
 *                  zero_mac = CMAC(K1, 16 zero bytes)
 *   CMAC(K1, M) on the CBC context: the last block (tail) is padded/xored with sub1 or
 *                  sub2 in a temp; the first block is xored with chain (the context's
 *                  last output block), so the effective IV is zero; then
 *                  EVP_EncryptUpdate(cbc, scratch, ...) over the blocks, at most 2048
 *                  bytes at a time into a stack scratch; the last output block is the
 *                  MAC and the new chain.
 *   per packet, seal (under the key's pthread mutex):
 *                  D = dbl(zero_mac) ^ CMAC(K1, AD)
 *                  V = CMAC(K1, body xorend D)  (n >= 16: the last 16..31 bytes copied to
 *                      a temp and D xored into its last 16; n < 16: dbl(D) ^ pad(body))
 *                  counter blocks from V with bits 63 and 31 cleared (128-bit big-endian
 *                  counter) written into a 2048-byte stack buffer, EVP_EncryptUpdate(ecb)
 *                  over them in place, xored into the body 8 bytes at a time
 *   per packet, open (under the mutex): CTR(tag) over the ciphertext into the output,
 *                  S2V over that, then CRYPTO_memcmp(V, tag, 16) (after the unlock).
 *
 * evp-mac: the native core's sequence before that commit (commit "Native AES-SIV from
 *   CMAC + AES-CTR contexts kept per key"): the same S2V / CTR composition on an
 *   EVP_MAC CMAC context (cipher AES-256-CBC, keyed once, restarted per message with
 *   EVP_MAC_init(ctx, NULL, 0, NULL) / update / final) and an AES-256-CTR context keyed
 *   once and re-IV'd per packet (EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, iv)); same
 *   precomputed zero_mac, mutex and CRYPTO_memcmp.
 *
 * copy (OpenSSL's AES-SIV cipher, context copy per packet): the sequence before that:
 *
 *   cipher fetched once: EVP_CIPHER_fetch(NULL, "AES-256-SIV", NULL)
 *   one keyed template context per direction (EVP_EncryptInit_ex / EVP_DecryptInit_ex)
 *   per packet, seal:  EVP_CIPHER_CTX_copy(work, tmpl)
 *                      EVP_EncryptUpdate(work, NULL, &outl, ad, 20)
 *                      EVP_EncryptUpdate(work, ct, &outl, body, n)
 *                      EVP_EncryptFinal_ex(work, ct + n, &outl)
 *                      EVP_CIPHER_CTX_ctrl(work, EVP_CTRL_AEAD_GET_TAG, 16, tag)
 *   per packet, open:  EVP_CIPHER_CTX_copy(work, tmpl)
 *                      EVP_CIPHER_CTX_ctrl(work, EVP_CTRL_AEAD_SET_TAG, 16, tag)
 *                      EVP_DecryptUpdate(work, NULL, &outl, ad, 20)
 *                      EVP_DecryptUpdate(work, out, &outl, ct, n)   (verifies the tag)
 *                      EVP_DecryptFinal_ex(work, out + n, &outl)
 *
 * The 8-byte header and 20-byte associated data are rebuilt per packet (as the
 * extension does) and the counter changes every packet, so every seal is distinct.
 * Output buffers are preallocated: this is the floor the extension can approach,
 * it does not pay for a Python bytes object per packet.
 *
 * Before timing, the program checks, at body sizes 1, 15, 16, 17, 31, 32, 33, 64, 2047,
 * 2048, 2049 and SIZE (2048 is the chain impl's scratch size): all three impls produce
 * byte-identical packets (header, tag, ciphertext) for the same inputs; each impl opens
 * its own and the others' packets back to the body; and a flipped bit in the header's
 * counter, the tag or the ciphertext is rejected by all (the chain impl's CBC context
 * keeps running through all of this, so its chain bookkeeping is checked as well).
 *
 * Usage: siv_ceiling SIZE COUNT REPS [MODES]
 *   MODES: all (default), or a comma-separated list of chain, evp-mac, copy.
 *   The checks run for all three impls whatever MODES says.
 * Prints one JSON object per line, per rep and selected impl, seal then open, impls in
 * the order chain, evp-mac, copy:
 *   {"impl": "chain", "op": "seal", "size": 1420, "count": 20000, "rep": 0,
 *    "ns_per_packet": 812.3}
 * Exit status 0 on success; a failed check or EVP call prints a message to stderr and
 * exits 1; bad arguments exit 2.
 *
 * Build: gcc -O2 -pthread -o siv_ceiling siv_ceiling.c -lcrypto
 */
#define _POSIX_C_SOURCE 200809L

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define HEADER_LEN 8
#define TAG_LEN 16
#define OVERHEAD (HEADER_LEN + TAG_LEN)
#define AD_LEN 20
#define VERSION 1
#define MAX_BODY (65507 - OVERHEAD)
#define CHUNK 2048 /* the chain impl's stack scratch, as DEF CHUNK in _fast.pyx */

static void die(const char *what)
{
    fprintf(stderr, "siv_ceiling: %s failed\n", what);
    ERR_print_errors_fp(stderr);
    exit(1);
}

static void fail(const char *what, int size)
{
    fprintf(stderr, "siv_ceiling: check failed at %d bytes: %s\n", size, what);
    ERR_print_errors_fp(stderr);
    exit(1);
}

static inline void put16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static inline void put64(uint8_t *p, uint64_t v)
{
    put32(p, (uint32_t)(v >> 32));
    put32(p + 4, (uint32_t)v);
}

/* A big-endian 64-bit store in one move (the CTR counter blocks, _fast.pyx vc_put_be64). */
static inline void put_be64(uint8_t *p, uint64_t v)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    memcpy(p, &v, 8);
}

/* Header: type | client id | timestamp low byte | counter (wire.py pack_header). */
static inline void build_header(uint8_t *p, uint8_t ptype, uint32_t client_id, uint64_t ts,
                                uint32_t counter)
{
    p[0] = ptype;
    put16(p + 1, client_id);
    p[3] = (uint8_t)(ts & 0xFF);
    put32(p + 4, counter);
}

/* AD: version | type | client id | server id | timestamp | counter (wire.py associated_data). */
static inline void build_ad(uint8_t *ad, const uint8_t *hdr, uint32_t server_id, uint64_t ts)
{
    ad[0] = VERSION;
    ad[1] = hdr[0];
    ad[2] = hdr[1];
    ad[3] = hdr[2];
    put32(ad + 4, server_id);
    put64(ad + 8, ts);
    memcpy(ad + 16, hdr + 4, 4);
}

static inline uint64_t get64(const uint8_t *p)
{
    return ((uint64_t)p[0] << 56) | ((uint64_t)p[1] << 48) | ((uint64_t)p[2] << 40) |
           ((uint64_t)p[3] << 32) | ((uint64_t)p[4] << 24) | ((uint64_t)p[5] << 16) |
           ((uint64_t)p[6] << 8) | (uint64_t)p[7];
}

static inline void xor16(uint8_t *a, const uint8_t *b)
{
    for (int i = 0; i < 16; i++)
        a[i] ^= b[i];
}

/* Doubling in GF(2^128), without a key-dependent branch. */
static inline void dbl(uint8_t *d)
{
    uint8_t carry = d[0] >> 7;
    for (int i = 0; i < 15; i++)
        d[i] = (uint8_t)((d[i] << 1) | (d[i + 1] >> 7));
    d[15] = (uint8_t)((d[15] << 1) ^ ((-carry) & 0x87));
}

/* ---- chain: SIV on never-reinitialised AES-CBC and AES-ECB contexts, as _fast.pyx --- */

typedef struct {
    EVP_CIPHER_CTX *cbc;  /* AES-CBC keyed with K1 (the key's first half): CMAC's chain */
    EVP_CIPHER_CTX *ecb;  /* AES-ECB keyed with K2 (second half): CTR's keystream */
    uint8_t chain[16];    /* the CBC context's IV now: its last output block */
    uint8_t sub1[16];     /* the CMAC subkeys K1 and K2 of RFC 4493 */
    uint8_t sub2[16];
    uint8_t zero_mac[16]; /* CMAC(K1, 16 zero bytes): S2V's first step */
    pthread_mutex_t lock; /* a loop thread and Python callers may share a key */
} Siv;

/* CBC-encrypt n bytes (a multiple of 16, > 0) on from the chain; last = the final block. */
static int cbc(Siv *s, const uint8_t *src, size_t n, uint8_t *last)
{
    uint8_t scratch[CHUNK];
    int outl = 0;
    size_t k = 0;
    uint8_t zero[16];
    while (n) {
        k = n < CHUNK ? n : CHUNK;
        if (EVP_EncryptUpdate(s->cbc, scratch, &outl, src, (int)k) != 1 || outl != (int)k) {
            /* Put the context and our copy of its chain back in step. */
            memset(zero, 0, 16);
            memset(s->chain, 0, 16);
            EVP_EncryptInit_ex(s->cbc, NULL, NULL, NULL, zero);
            return 0;
        }
        src += k;
        n -= k;
    }
    memcpy(last, scratch + k - 16, 16);
    memcpy(s->chain, last, 16);
    return 1;
}

/* CMAC(K1, head || tail): head_len a multiple of 16, tail 0..32 bytes in a writable
   buffer of at least 32 bytes (padded and xored with a subkey here). */
static int cmac_msg(Siv *s, const uint8_t *head, size_t head_len, uint8_t *tail, int tail_len,
                    uint8_t *out)
{
    uint8_t first[16];
    int nb;
    if (tail_len == 0 || tail_len % 16) {
        nb = tail_len % 16 ? (tail_len + 16) / 16 : 1;
        tail[tail_len] = 0x80;
        memset(tail + tail_len + 1, 0, (size_t)(nb * 16 - tail_len - 1));
        xor16(tail + (nb - 1) * 16, s->sub2);
    } else {
        nb = tail_len / 16;
        xor16(tail + (nb - 1) * 16, s->sub1);
    }
    if (head_len) {
        memcpy(first, head, 16);
        xor16(first, s->chain);
        if (!cbc(s, first, 16, out))
            return 0;
        if (head_len > 16 && !cbc(s, head + 16, head_len - 16, out))
            return 0;
    } else {
        xor16(tail, s->chain);
    }
    return cbc(s, tail, (size_t)nb * 16, out);
}

static int cmac(Siv *s, const uint8_t *a, size_t an, uint8_t *out)
{
    uint8_t t[48];
    size_t head = an ? ((an - 1) / 16) * 16 : 0;
    memcpy(t, a + head, an - head);
    return cmac_msg(s, a, head, t, (int)(an - head), out);
}

/* RFC 5297 S2V over the associated data strings and the plaintext (n >= 1). */
static int s2v(Siv *s, const uint8_t **ads, const int *adl, int nad, const uint8_t *p, int n,
               uint8_t *v)
{
    uint8_t d[16];
    uint8_t t[48];
    int head;
    memcpy(d, s->zero_mac, 16);
    for (int i = 0; i < nad; i++) {
        dbl(d);
        if (!cmac(s, ads[i], (size_t)adl[i], t))
            return 0;
        xor16(d, t);
    }
    if (n >= 16) { /* T = P xorend D: D lands in the last 16 bytes, within the last two blocks */
        head = ((n - 16) / 16) * 16;
        memcpy(t, p + head, (size_t)(n - head));
        xor16(t + n - head - 16, d);
        return cmac_msg(s, p, (size_t)head, t, n - head, v);
    }
    dbl(d);
    memset(t, 0, 16);
    memcpy(t, p, (size_t)n);
    t[n] = 0x80;
    xor16(t, d);
    return cmac_msg(s, NULL, 0, t, 16, v);
}

/* AES-CTR from the synthetic IV with its two 31st bits cleared (RFC 5297 2.6), the
   128-bit counter big-endian; dst may be src. */
static int ctr(Siv *s, const uint8_t *v, const uint8_t *src, int n, uint8_t *dst)
{
    uint8_t ks[CHUNK];
    uint8_t q[16];
    uint64_t hi, lo, w, x;
    int off = 0, k, nb, j, outl = 0;
    memcpy(q, v, 16);
    q[8] &= 0x7F;
    q[12] &= 0x7F;
    hi = get64(q);
    lo = get64(q + 8);
    while (off < n) {
        k = n - off < CHUNK ? n - off : CHUNK;
        nb = (k + 15) / 16;
        for (j = 0; j < nb; j++) {
            put_be64(ks + 16 * j, hi);  /* one byte swap each, as the core's vc_put_be64 */
            put_be64(ks + 16 * j + 8, lo);
            lo += 1;
            hi += lo == 0;
        }
        if (EVP_EncryptUpdate(s->ecb, ks, &outl, ks, nb * 16) != 1 || outl != nb * 16)
            return 0;
        j = 0;
        while (j + 8 <= k) {
            memcpy(&w, src + off + j, 8);
            memcpy(&x, ks + j, 8);
            w ^= x;
            memcpy(dst + off + j, &w, 8);
            j += 8;
        }
        while (j < k) {
            dst[off + j] = src[off + j] ^ ks[j];
            j += 1;
        }
        off += k;
    }
    return 1;
}

/* Key a Siv with a 64-byte key (AES-256 halves); 0 on failure (siv_free cleans up). */
static int siv_init(Siv *s, const EVP_CIPHER *cbc_alg, const EVP_CIPHER *ecb_alg,
                    const uint8_t *key)
{
    const int half = 32;
    uint8_t zero[16];
    uint8_t t[48];
    memset(s, 0, sizeof(*s));
    memset(zero, 0, 16);
    pthread_mutex_init(&s->lock, NULL);
    s->cbc = EVP_CIPHER_CTX_new();
    s->ecb = EVP_CIPHER_CTX_new();
    if (s->cbc == NULL || s->ecb == NULL)
        return 0;
    if (EVP_EncryptInit_ex(s->cbc, cbc_alg, NULL, key, zero) != 1 ||
        EVP_CIPHER_CTX_set_padding(s->cbc, 0) != 1)
        return 0;
    if (EVP_EncryptInit_ex(s->ecb, ecb_alg, NULL, key + half, NULL) != 1 ||
        EVP_CIPHER_CTX_set_padding(s->ecb, 0) != 1)
        return 0;
    memset(s->chain, 0, 16);
    if (!cbc(s, zero, 16, s->sub1)) /* L = AES(K1, 0); K1 = dbl(L), K2 = dbl(K1) */
        return 0;
    dbl(s->sub1);
    memcpy(s->sub2, s->sub1, 16);
    dbl(s->sub2);
    memset(t, 0, 16);
    return cmac_msg(s, NULL, 0, t, 16, s->zero_mac);
}

static void siv_free(Siv *s)
{
    EVP_CIPHER_CTX_free(s->cbc);
    EVP_CIPHER_CTX_free(s->ecb);
    pthread_mutex_destroy(&s->lock);
    memset(s, 0, sizeof(*s));
}

/* tag_out = S2V(ads, body); ct_out = CTR(body). ct_out may be body (in place). */
static int siv_seal(Siv *s, const uint8_t **ads, const int *adl, int nad, const uint8_t *body,
                    int n, uint8_t *tag_out, uint8_t *ct_out)
{
    int ok;
    pthread_mutex_lock(&s->lock);
    ok = s2v(s, ads, adl, nad, body, n, tag_out) && ctr(s, tag_out, body, n, ct_out);
    pthread_mutex_unlock(&s->lock);
    return ok;
}

/* Decrypt into out and check the tag (constant time); 0 if it does not authenticate. */
static int siv_open(Siv *s, const uint8_t **ads, const int *adl, int nad, const uint8_t *tag,
                    const uint8_t *ct, int n, uint8_t *out)
{
    uint8_t v[16];
    int ok;
    pthread_mutex_lock(&s->lock);
    ok = ctr(s, tag, ct, n, out) && s2v(s, ads, adl, nad, out, n, v);
    pthread_mutex_unlock(&s->lock);
    return ok && CRYPTO_memcmp(v, tag, 16) == 0;
}

/* Packet-level calls, as SivContext.seal / .open make them (one AD component). */
static inline int seal_chain(Siv *s, const uint8_t *ad, const uint8_t *body, int n,
                             uint8_t *pkt)
{
    const uint8_t *adp = ad;
    int adl = AD_LEN;
    return siv_seal(s, &adp, &adl, 1, body, n, pkt + HEADER_LEN, pkt + OVERHEAD);
}

static inline int open_chain(Siv *s, const uint8_t *ad, const uint8_t *pkt, int n,
                             uint8_t *out)
{
    const uint8_t *adp = ad;
    int adl = AD_LEN;
    return siv_open(s, &adp, &adl, 1, pkt + HEADER_LEN, pkt + OVERHEAD, n, out);
}

/* ---- evp-mac: SIV from an EVP_MAC CMAC context and an AES-CTR context (previous core) -- */

typedef struct {
    EVP_MAC_CTX *mac;     /* CMAC keyed with K1, the key's first half */
    EVP_CIPHER_CTX *ctr;  /* AES-CTR keyed with K2, the second half */
    uint8_t zero_mac[16]; /* CMAC(K1, 16 zero bytes): S2V's first step */
    pthread_mutex_t lock; /* the extension shares a key between threads */
} MacSiv;

static int mac_cmac(MacSiv *s, const uint8_t *a, size_t an, const uint8_t *b, size_t bn,
                    uint8_t *out)
{
    size_t outl = 0;
    if (EVP_MAC_init(s->mac, NULL, 0, NULL) != 1)
        return 0;
    if (an && EVP_MAC_update(s->mac, a, an) != 1)
        return 0;
    if (bn && EVP_MAC_update(s->mac, b, bn) != 1)
        return 0;
    return EVP_MAC_final(s->mac, out, &outl, 16) == 1 && outl == 16;
}

static int mac_s2v(MacSiv *s, const uint8_t **ads, const int *adl, int nad, const uint8_t *p, int n,
               uint8_t *v)
{
    uint8_t d[16], t[16];
    memcpy(d, s->zero_mac, 16);
    for (int i = 0; i < nad; i++) {
        dbl(d);
        if (!mac_cmac(s, ads[i], (size_t)adl[i], NULL, 0, t))
            return 0;
        xor16(d, t);
    }
    if (n >= 16) { /* T = P xorend D: the last block only */
        memcpy(t, p + n - 16, 16);
        xor16(t, d);
        return mac_cmac(s, p, (size_t)n - 16, t, 16, v);
    }
    dbl(d);
    memset(t, 0, 16);
    memcpy(t, p, (size_t)n);
    t[n] = 0x80;
    xor16(t, d);
    return mac_cmac(s, t, 16, NULL, 0, v);
}

static int mac_ctr(MacSiv *s, const uint8_t *v, const uint8_t *src, int n, uint8_t *dst)
{
    uint8_t q[16];
    int outl = 0;
    memcpy(q, v, 16);
    q[8] &= 0x7F;
    q[12] &= 0x7F;
    if (EVP_EncryptInit_ex(s->ctr, NULL, NULL, NULL, q) != 1)
        return 0;
    return EVP_EncryptUpdate(s->ctr, dst, &outl, src, n) == 1 && outl == n;
}

static int mac_init(MacSiv *s, EVP_MAC *cmac_alg, const EVP_CIPHER *ctr_alg, const uint8_t *key)
{
    OSSL_PARAM params[2];
    uint8_t zero[16];
    memset(s, 0, sizeof(*s));
    pthread_mutex_init(&s->lock, NULL);
    s->mac = EVP_MAC_CTX_new(cmac_alg);
    s->ctr = EVP_CIPHER_CTX_new();
    if (s->mac == NULL || s->ctr == NULL)
        return 0;
    params[0] = OSSL_PARAM_construct_utf8_string("cipher", (char *)"AES-256-CBC", 0);
    params[1] = OSSL_PARAM_construct_end();
    if (EVP_MAC_init(s->mac, key, 32, params) != 1)
        return 0;
    if (EVP_EncryptInit_ex(s->ctr, ctr_alg, NULL, key + 32, NULL) != 1)
        return 0;
    memset(zero, 0, 16);
    return mac_cmac(s, zero, 16, NULL, 0, s->zero_mac);
}

static void mac_free(MacSiv *s)
{
    EVP_MAC_CTX_free(s->mac);
    EVP_CIPHER_CTX_free(s->ctr);
    pthread_mutex_destroy(&s->lock);
}

static int mac_siv_seal(MacSiv *s, const uint8_t **ads, const int *adl, int nad,
                        const uint8_t *body, int n, uint8_t *tag_out, uint8_t *ct_out)
{
    int ok;
    pthread_mutex_lock(&s->lock);
    ok = mac_s2v(s, ads, adl, nad, body, n, tag_out) && mac_ctr(s, tag_out, body, n, ct_out);
    pthread_mutex_unlock(&s->lock);
    return ok;
}

static int mac_siv_open(MacSiv *s, const uint8_t **ads, const int *adl, int nad,
                        const uint8_t *tag, const uint8_t *ct, int n, uint8_t *out)
{
    uint8_t v[16];
    int ok;
    pthread_mutex_lock(&s->lock);
    ok = mac_ctr(s, tag, ct, n, out) && mac_s2v(s, ads, adl, nad, out, n, v);
    pthread_mutex_unlock(&s->lock);
    return ok && CRYPTO_memcmp(v, tag, 16) == 0;
}

static inline int seal_evpmac(MacSiv *s, const uint8_t *ad, const uint8_t *body, int n,
                                uint8_t *pkt)
{
    const uint8_t *adp = ad;
    int adl = AD_LEN;
    return mac_siv_seal(s, &adp, &adl, 1, body, n, pkt + HEADER_LEN, pkt + OVERHEAD);
}

static inline int open_evpmac(MacSiv *s, const uint8_t *ad, const uint8_t *pkt, int n,
                                uint8_t *out)
{
    const uint8_t *adp = ad;
    int adl = AD_LEN;
    return mac_siv_open(s, &adp, &adl, 1, pkt + HEADER_LEN, pkt + OVERHEAD, n, out);
}

/* ---- copy: OpenSSL's AES-256-SIV cipher, keyed template copied per packet --------------- */

typedef struct {
    EVP_CIPHER *cipher;
    EVP_CIPHER_CTX *enc_tmpl, *dec_tmpl, *work;
} Copy;

static int copy_init(Copy *c, const uint8_t *key)
{
    memset(c, 0, sizeof(*c));
    c->cipher = EVP_CIPHER_fetch(NULL, "AES-256-SIV", NULL);
    c->enc_tmpl = EVP_CIPHER_CTX_new();
    c->dec_tmpl = EVP_CIPHER_CTX_new();
    c->work = EVP_CIPHER_CTX_new();
    if (c->cipher == NULL || c->enc_tmpl == NULL || c->dec_tmpl == NULL || c->work == NULL)
        return 0;
    return EVP_EncryptInit_ex(c->enc_tmpl, c->cipher, NULL, key, NULL) == 1 &&
           EVP_DecryptInit_ex(c->dec_tmpl, c->cipher, NULL, key, NULL) == 1;
}

static void copy_free(Copy *c)
{
    EVP_CIPHER_CTX_free(c->work);
    EVP_CIPHER_CTX_free(c->enc_tmpl);
    EVP_CIPHER_CTX_free(c->dec_tmpl);
    EVP_CIPHER_free(c->cipher);
}

static inline int seal_copy(Copy *c, const uint8_t *ad, const uint8_t *body, int n,
                            uint8_t *pkt)
{
    int outl = 0;
    return EVP_CIPHER_CTX_copy(c->work, c->enc_tmpl) == 1 &&
           EVP_EncryptUpdate(c->work, NULL, &outl, ad, AD_LEN) == 1 &&
           EVP_EncryptUpdate(c->work, pkt + OVERHEAD, &outl, body, n) == 1 && outl == n &&
           EVP_EncryptFinal_ex(c->work, pkt + OVERHEAD + n, &outl) == 1 &&
           EVP_CIPHER_CTX_ctrl(c->work, EVP_CTRL_AEAD_GET_TAG, TAG_LEN, pkt + HEADER_LEN) == 1;
}

static inline int open_copy(Copy *c, const uint8_t *ad, const uint8_t *pkt, int n, uint8_t *out)
{
    int outl = 0;
    int ok = EVP_CIPHER_CTX_copy(c->work, c->dec_tmpl) == 1 &&
             EVP_CIPHER_CTX_ctrl(c->work, EVP_CTRL_AEAD_SET_TAG, TAG_LEN,
                                 (void *)(pkt + HEADER_LEN)) == 1 &&
             EVP_DecryptUpdate(c->work, NULL, &outl, ad, AD_LEN) == 1 &&
             EVP_DecryptUpdate(c->work, out, &outl, pkt + OVERHEAD, n) == 1 && outl == n &&
             EVP_DecryptFinal_ex(c->work, out + n, &outl) == 1;
    if (!ok)
        ERR_clear_error();
    return ok;
}

/* ---- checks and timing -------------------------------------------------------------------- */

static const uint8_t PTYPE = 0x01; /* Kind.DATA from the client */
static const uint32_t CLIENT_ID = 7, SERVER_ID = 0x5EC0DE01;
static const uint64_t TS = 1700000000ULL;

enum { CHAIN, EVPMAC, COPY, NIMPL };
static const char *const IMPL_NAME[NIMPL] = {"chain", "evp-mac", "copy"};

typedef struct {
    Siv chain;
    MacSiv mac;
    Copy copy;
} Impls;

/* Dispatch for the checks only; the timed loops call each impl directly. */
static int seal_impl(Impls *im, int which, const uint8_t *ad, const uint8_t *body, int n,
                     uint8_t *pkt)
{
    switch (which) {
    case CHAIN:
        return seal_chain(&im->chain, ad, body, n, pkt);
    case EVPMAC:
        return seal_evpmac(&im->mac, ad, body, n, pkt);
    default:
        return seal_copy(&im->copy, ad, body, n, pkt);
    }
}

static int open_impl(Impls *im, int which, const uint8_t *ad, const uint8_t *pkt, int n,
                     uint8_t *out)
{
    switch (which) {
    case CHAIN:
        return open_chain(&im->chain, ad, pkt, n, out);
    case EVPMAC:
        return open_evpmac(&im->mac, ad, pkt, n, out);
    default:
        return open_copy(&im->copy, ad, pkt, n, out);
    }
}

/* All impls at body size m: identical packets, cross-opening, tampering rejected.
   pkts: NIMPL buffers of m + OVERHEAD + 32 bytes; out: m + 32 bytes. */
static void check_size(Impls *im, const uint8_t *body, int m, uint8_t **pkts, uint8_t *out)
{
    char msg[128];
    uint8_t ad[AD_LEN];
    const uint32_t counter = 0x01020300u + (uint32_t)m;
    for (int a = 0; a < NIMPL; a++) {
        build_header(pkts[a], PTYPE, CLIENT_ID, TS, counter);
        if (a == 0)
            build_ad(ad, pkts[0], SERVER_ID, TS);
        if (!seal_impl(im, a, ad, body, m, pkts[a])) {
            snprintf(msg, sizeof msg, "%s seal", IMPL_NAME[a]);
            fail(msg, m);
        }
        if (a && memcmp(pkts[0], pkts[a], (size_t)m + OVERHEAD) != 0) {
            snprintf(msg, sizeof msg, "%s and %s packets differ", IMPL_NAME[0], IMPL_NAME[a]);
            fail(msg, m);
        }
    }

    /* Every impl opens every impl's packet. */
    for (int k = 0; k < NIMPL; k++) {
        for (int a = 0; a < NIMPL; a++) {
            memset(out, 0xAA, (size_t)m);
            if (!open_impl(im, a, ad, pkts[k], m, out) || memcmp(out, body, (size_t)m) != 0) {
                snprintf(msg, sizeof msg, "%s open of the %s packet", IMPL_NAME[a],
                         IMPL_NAME[k]);
                fail(msg, m);
            }
        }
    }

    /* Flip one bit of the counter (so of the AD), of the tag, of the last ciphertext byte,
       of the first ciphertext byte. */
    uint8_t *pa = pkts[0];
    const int where[4] = {HEADER_LEN - 1, HEADER_LEN, OVERHEAD + m - 1, OVERHEAD};
    for (int w = 0; w < 4; w++) {
        uint8_t tad[AD_LEN];
        pa[where[w]] ^= 0x04;
        build_ad(tad, pa, SERVER_ID, TS);
        for (int a = 0; a < NIMPL; a++) {
            if (open_impl(im, a, tad, pa, m, out)) {
                snprintf(msg, sizeof msg, "%s accepted a tampered packet (byte %d)",
                         IMPL_NAME[a], where[w]);
                fail(msg, m);
            }
        }
        pa[where[w]] ^= 0x04;
    }
    for (int a = 0; a < NIMPL; a++) {
        if (!open_impl(im, a, ad, pa, m, out) || memcmp(out, body, (size_t)m) != 0) {
            snprintf(msg, sizeof msg, "%s open after restoring the tampered bit", IMPL_NAME[a]);
            fail(msg, m);
        }
    }
}

static double now_ns(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
        perror("clock_gettime");
        exit(1);
    }
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static void report(const char *impl, const char *op, int n, long count, long rep, double ns)
{
    printf("{\"impl\": \"%s\", \"op\": \"%s\", \"size\": %d, \"count\": %ld, \"rep\": %ld, "
           "\"ns_per_packet\": %.2f}\n",
           impl, op, n, count, rep, ns / (double)count);
}

/* MODES: "all" or a comma-separated list of impl names; sets want[]; 0 if invalid. */
static int parse_modes(const char *modes, int *want)
{
    memset(want, 0, NIMPL * sizeof(int));
    if (!strcmp(modes, "all")) {
        for (int a = 0; a < NIMPL; a++)
            want[a] = 1;
        return 1;
    }
    const char *p = modes;
    while (*p) {
        size_t len = strcspn(p, ",");
        int found = 0;
        for (int a = 0; a < NIMPL; a++) {
            if (strlen(IMPL_NAME[a]) == len && !strncmp(p, IMPL_NAME[a], len)) {
                want[a] = found = 1;
            }
        }
        if (!found)
            return 0;
        p += len;
        if (*p == ',')
            p++;
    }
    return want[CHAIN] || want[EVPMAC] || want[COPY];
}

/* One timed batch of `count` seals (fresh counter each) then one of `count` opens of the
   last sealed packet (AD rebuilt from its header each time). SEAL/OPEN: direct calls. */
#define TIME_IMPL(NAME, SEAL, OPEN, CTX)                                                    \
    do {                                                                                    \
        double t0 = now_ns();                                                               \
        for (long i = 0; i < count; i++) {                                                  \
            build_header(pkt, PTYPE, CLIENT_ID, TS, (uint32_t)i);                           \
            build_ad(hdr_ad, pkt, SERVER_ID, TS);                                           \
            if (!SEAL(CTX, hdr_ad, body, n, pkt))                                           \
                die(NAME " seal");                                                          \
        }                                                                                   \
        double t1 = now_ns();                                                               \
        sink ^= pkt[HEADER_LEN];                                                            \
        report(NAME, "seal", n, count, r, t1 - t0);                                         \
        t0 = now_ns();                                                                      \
        for (long i = 0; i < count; i++) {                                                  \
            build_ad(hdr_ad, pkt, SERVER_ID, TS);                                           \
            if (!OPEN(CTX, hdr_ad, pkt, n, out))                                            \
                die(NAME " open");                                                          \
        }                                                                                   \
        t1 = now_ns();                                                                      \
        sink ^= out[0];                                                                     \
        report(NAME, "open", n, count, r, t1 - t0);                                         \
    } while (0)

int main(int argc, char **argv)
{
    int want[NIMPL];
    if (argc != 4 && argc != 5) {
        fprintf(stderr, "usage: %s SIZE COUNT REPS [all | chain,evp-mac,copy]\n", argv[0]);
        return 2;
    }
    long size = strtol(argv[1], NULL, 10);
    long count = strtol(argv[2], NULL, 10);
    long reps = strtol(argv[3], NULL, 10);
    const char *modes = argc == 5 ? argv[4] : "all";
    if (size < 1 || size > MAX_BODY || count < 1 || reps < 1 || !parse_modes(modes, want)) {
        fprintf(stderr, "siv_ceiling: need 1 <= SIZE <= %d, COUNT >= 1, REPS >= 1, "
                        "MODES all or a comma-separated list of chain, evp-mac, copy\n",
                MAX_BODY);
        return 2;
    }
    const int n = (int)size;
    const int cap = n > 2 * CHUNK + 1 ? n : 2 * CHUNK + 1;

    uint8_t key[64];
    for (int i = 0; i < 64; i++)
        key[i] = (uint8_t)(i * 37 + 11);

    uint8_t *body = malloc((size_t)cap);
    uint8_t *out = malloc((size_t)cap + 32);
    uint8_t *pkts[NIMPL];
    for (int a = 0; a < NIMPL; a++) {
        pkts[a] = malloc((size_t)cap + OVERHEAD + 32); /* +32: room for Final's (empty) output */
        if (pkts[a] == NULL)
            die("malloc");
    }
    uint8_t *pkt = pkts[0];
    if (body == NULL || out == NULL)
        die("malloc");
    for (int i = 0; i < cap; i++)
        body[i] = (uint8_t)(i * 13 + 5);

    EVP_CIPHER *cbc_alg = EVP_CIPHER_fetch(NULL, "AES-256-CBC", NULL);
    EVP_CIPHER *ecb_alg = EVP_CIPHER_fetch(NULL, "AES-256-ECB", NULL);
    EVP_MAC *cmac_alg = EVP_MAC_fetch(NULL, "CMAC", NULL);
    EVP_CIPHER *ctr_alg = EVP_CIPHER_fetch(NULL, "AES-256-CTR", NULL);
    if (cbc_alg == NULL || ecb_alg == NULL || cmac_alg == NULL || ctr_alg == NULL)
        die("EVP_CIPHER_fetch(AES-256-CBC / -ECB / -CTR) / EVP_MAC_fetch(CMAC)");
    static Impls im;
    if (!siv_init(&im.chain, cbc_alg, ecb_alg, key))
        die("chain set-up (AES-256-CBC / AES-256-ECB)");
    if (!mac_init(&im.mac, cmac_alg, ctr_alg, key))
        die("evp-mac set-up (CMAC / AES-256-CTR)");
    if (!copy_init(&im.copy, key))
        die("copy set-up (AES-256-SIV)");

    /* Self-check, all impls whatever the mode. */
    const int check_sizes[] = {1, 15, 16, 17, 31, 32, 33, 64, 2047, 2048, 2049, n};
    for (size_t i = 0; i < sizeof(check_sizes) / sizeof(check_sizes[0]); i++)
        check_size(&im, body, check_sizes[i], pkts, out);

    uint8_t hdr_ad[AD_LEN];
    volatile uint8_t sink = 0;

    /* Warm-up (caches, branch predictors, CPU frequency). */
    for (long i = 0; i < count / 4 + 1; i++) {
        build_header(pkt, PTYPE, CLIENT_ID, TS, (uint32_t)i);
        build_ad(hdr_ad, pkt, SERVER_ID, TS);
        if (want[CHAIN] && !seal_chain(&im.chain, hdr_ad, body, n, pkt))
            die("chain seal (warm-up)");
        if (want[EVPMAC] && !seal_evpmac(&im.mac, hdr_ad, body, n, pkt))
            die("evp-mac seal (warm-up)");
        if (want[COPY] && !seal_copy(&im.copy, hdr_ad, body, n, pkt))
            die("copy seal (warm-up)");
    }

    for (long r = 0; r < reps; r++) {
        if (want[CHAIN])
            TIME_IMPL("chain", seal_chain, open_chain, &im.chain);
        if (want[EVPMAC])
            TIME_IMPL("evp-mac", seal_evpmac, open_evpmac, &im.mac);
        if (want[COPY])
            TIME_IMPL("copy", seal_copy, open_copy, &im.copy);
    }
    if (memcmp(out, body, (size_t)n) != 0)
        die("final round-trip comparison");
    fprintf(stderr, "openssl: %s (sink %u)\n", OpenSSL_version(OPENSSL_VERSION), (unsigned)sink);

    siv_free(&im.chain);
    mac_free(&im.mac);
    copy_free(&im.copy);
    EVP_CIPHER_free(cbc_alg);
    EVP_CIPHER_free(ecb_alg);
    EVP_MAC_free(cmac_alg);
    EVP_CIPHER_free(ctr_alg);
    free(body);
    free(out);
    for (int a = 0; a < NIMPL; a++)
        free(pkts[a]);
    return 0;
}
