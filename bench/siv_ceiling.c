/*
 * siv_ceiling.c: the C ceiling for vpncrypt's native AES-256-SIV path, and the
 * OpenSSL AES-SIV cipher sequence it replaced.
 *
 * Two implementations ("impl"), both over the system libcrypto, in tight loops with
 * no Python in the way:
 *
 * composed (the C ceiling): exactly the calls of vpncrypt/_fast.pyx (siv_init /
 *   siv_seal / siv_open), RFC 5297 SIV built from S2V over CMAC and AES-CTR:
 *
 *   once per key:  EVP_MAC_CTX_new(EVP_MAC_fetch(NULL, "CMAC", NULL))
 *                  EVP_MAC_init(mac, K1 (first 32 bytes), 32, {cipher=AES-256-CBC})
 *                  EVP_EncryptInit_ex(ctr, AES-256-CTR, NULL, K2 (last 32 bytes), NULL)
 *                  zero_mac = CMAC(K1, 16 zero bytes)
 *   per packet, seal (under the key's pthread mutex):
 *                  D = dbl(zero_mac); D ^= CMAC(K1, AD)         (init(NULL) / update / final)
 *                  V = CMAC(K1, body[..n-16] || (body[n-16..] ^ D))   (n >= 16: xorend;
 *                       n < 16: dbl(D) ^ pad(body))
 *                  EVP_EncryptInit_ex(ctr, NULL, NULL, NULL, V with bits 63, 31 cleared)
 *                  EVP_EncryptUpdate(ctr, ct, &outl, body, n)
 *   per packet, open (under the mutex): CTR(tag) over the ciphertext into the output,
 *                  S2V over that, then CRYPTO_memcmp(V, tag, 16) (after the unlock).
 *
 * copy (OpenSSL's AES-SIV cipher, context copy per packet): the sequence the native
 *   core ran before commit "Native AES-SIV from CMAC + AES-CTR contexts kept per key":
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
 * Before timing, the program checks, at body sizes 1, 15, 16, 17, 31, 32, 33, 64 and
 * SIZE: both impls produce byte-identical packets (header, tag, ciphertext) for the
 * same inputs; each impl opens its own and the other's packets back to the body; and
 * a flipped bit in the header's counter, the tag or the ciphertext is rejected by both.
 *
 * Usage: siv_ceiling SIZE COUNT REPS [composed|copy|both]     (default: both)
 * Prints one JSON object per line, per rep: composed seal, composed open, copy seal,
 * copy open (those selected):
 *   {"impl": "composed", "op": "seal", "size": 1420, "count": 20000, "rep": 0,
 *    "ns_per_packet": 812.3}
 * Exit status 0 on success; a failed check or EVP call prints a message to stderr and
 * exits 1.
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

/* ---- composed: RFC 5297 SIV from CMAC and AES-CTR, as vpncrypt/_fast.pyx ------------- */

typedef struct {
    EVP_MAC_CTX *mac;     /* CMAC keyed with K1, the key's first half */
    EVP_CIPHER_CTX *ctr;  /* AES-CTR keyed with K2, the second half */
    uint8_t zero_mac[16]; /* CMAC(K1, 16 zero bytes): S2V's first step */
    pthread_mutex_t lock; /* the extension shares a key between threads */
} Siv;

static inline void xor16(uint8_t *a, const uint8_t *b)
{
    for (int i = 0; i < 16; i++)
        a[i] ^= b[i];
}

static inline void dbl(uint8_t *d)
{
    uint8_t carry = d[0] >> 7;
    for (int i = 0; i < 15; i++)
        d[i] = (uint8_t)((d[i] << 1) | (d[i + 1] >> 7));
    d[15] = (uint8_t)((d[15] << 1) ^ ((-carry) & 0x87));
}

static int cmac(Siv *s, const uint8_t *a, size_t an, const uint8_t *b, size_t bn, uint8_t *out)
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

static int s2v(Siv *s, const uint8_t **ads, const int *adl, int nad, const uint8_t *p, int n,
               uint8_t *v)
{
    uint8_t d[16], t[16];
    memcpy(d, s->zero_mac, 16);
    for (int i = 0; i < nad; i++) {
        dbl(d);
        if (!cmac(s, ads[i], (size_t)adl[i], NULL, 0, t))
            return 0;
        xor16(d, t);
    }
    if (n >= 16) { /* T = P xorend D: the last block only */
        memcpy(t, p + n - 16, 16);
        xor16(t, d);
        return cmac(s, p, (size_t)n - 16, t, 16, v);
    }
    dbl(d);
    memset(t, 0, 16);
    memcpy(t, p, (size_t)n);
    t[n] = 0x80;
    xor16(t, d);
    return cmac(s, t, 16, NULL, 0, v);
}

static int ctr(Siv *s, const uint8_t *v, const uint8_t *src, int n, uint8_t *dst)
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

static int siv_init(Siv *s, EVP_MAC *cmac_alg, const EVP_CIPHER *ctr_alg, const uint8_t *key)
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
    return cmac(s, zero, 16, NULL, 0, s->zero_mac);
}

static void siv_free(Siv *s)
{
    EVP_MAC_CTX_free(s->mac);
    EVP_CIPHER_CTX_free(s->ctr);
    pthread_mutex_destroy(&s->lock);
}

static int siv_seal(Siv *s, const uint8_t **ads, const int *adl, int nad, const uint8_t *body,
                    int n, uint8_t *tag_out, uint8_t *ct_out)
{
    int ok;
    pthread_mutex_lock(&s->lock);
    ok = s2v(s, ads, adl, nad, body, n, tag_out) && ctr(s, tag_out, body, n, ct_out);
    pthread_mutex_unlock(&s->lock);
    return ok;
}

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
static inline int seal_composed(Siv *s, const uint8_t *ad, const uint8_t *body, int n,
                                uint8_t *pkt)
{
    const uint8_t *adp = ad;
    int adl = AD_LEN;
    return siv_seal(s, &adp, &adl, 1, body, n, pkt + HEADER_LEN, pkt + OVERHEAD);
}

static inline int open_composed(Siv *s, const uint8_t *ad, const uint8_t *pkt, int n,
                                uint8_t *out)
{
    const uint8_t *adp = ad;
    int adl = AD_LEN;
    return siv_open(s, &adp, &adl, 1, pkt + HEADER_LEN, pkt + OVERHEAD, n, out);
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

/* Both impls at body size m: identical packets, cross-opening, tampering rejected. */
static void check_size(Siv *s, Copy *c, const uint8_t *body, int m, uint8_t *pa, uint8_t *pb,
                       uint8_t *out)
{
    uint8_t ad[AD_LEN];
    const uint32_t counter = 0x01020300u + (uint32_t)m;
    build_header(pa, PTYPE, CLIENT_ID, TS, counter);
    build_header(pb, PTYPE, CLIENT_ID, TS, counter);
    build_ad(ad, pa, SERVER_ID, TS);
    if (!seal_composed(s, ad, body, m, pa))
        fail("composed seal", m);
    if (!seal_copy(c, ad, body, m, pb))
        fail("copy seal", m);
    if (memcmp(pa, pb, (size_t)m + OVERHEAD) != 0)
        fail("composed and copy packets differ", m);

    const uint8_t *pkts[2] = {pa, pb};
    for (int k = 0; k < 2; k++) {
        memset(out, 0xAA, (size_t)m);
        if (!open_composed(s, ad, pkts[k], m, out) || memcmp(out, body, (size_t)m) != 0)
            fail(k ? "composed open of the copy packet" : "composed round trip", m);
        memset(out, 0xAA, (size_t)m);
        if (!open_copy(c, ad, pkts[k], m, out) || memcmp(out, body, (size_t)m) != 0)
            fail(k ? "copy round trip" : "copy open of the composed packet", m);
    }

    /* Flip one bit of the counter (so of the AD), of the tag, of the last ciphertext byte. */
    const int where[3] = {HEADER_LEN - 1, HEADER_LEN, OVERHEAD + m - 1};
    for (int w = 0; w < 3; w++) {
        uint8_t tad[AD_LEN];
        pa[where[w]] ^= 0x04;
        build_ad(tad, pa, SERVER_ID, TS);
        if (open_composed(s, tad, pa, m, out))
            fail("composed accepted a tampered packet", m);
        if (open_copy(c, tad, pa, m, out))
            fail("copy accepted a tampered packet", m);
        pa[where[w]] ^= 0x04;
    }
    if (!open_composed(s, ad, pa, m, out) || !open_copy(c, ad, pa, m, out))
        fail("open after restoring the tampered bit", m);
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

int main(int argc, char **argv)
{
    if (argc != 4 && argc != 5) {
        fprintf(stderr, "usage: %s SIZE COUNT REPS [composed|copy|both]\n", argv[0]);
        return 2;
    }
    long size = strtol(argv[1], NULL, 10);
    long count = strtol(argv[2], NULL, 10);
    long reps = strtol(argv[3], NULL, 10);
    const char *mode = argc == 5 ? argv[4] : "both";
    int do_composed = !strcmp(mode, "composed") || !strcmp(mode, "both");
    int do_copy = !strcmp(mode, "copy") || !strcmp(mode, "both");
    if (size < 1 || size > MAX_BODY || count < 1 || reps < 1 || !(do_composed || do_copy)) {
        fprintf(stderr, "siv_ceiling: need 1 <= SIZE <= %d, COUNT >= 1, REPS >= 1, "
                        "mode composed, copy or both\n", MAX_BODY);
        return 2;
    }
    const int n = (int)size;
    const int cap = n > 64 ? n : 64;

    uint8_t key[64];
    for (int i = 0; i < 64; i++)
        key[i] = (uint8_t)(i * 37 + 11);

    uint8_t *body = malloc((size_t)cap);
    uint8_t *pkt = malloc((size_t)cap + OVERHEAD + 32); /* +32: room for Final's (empty) output */
    uint8_t *pkt2 = malloc((size_t)cap + OVERHEAD + 32);
    uint8_t *out = malloc((size_t)cap + 32);
    if (body == NULL || pkt == NULL || pkt2 == NULL || out == NULL)
        die("malloc");
    for (int i = 0; i < cap; i++)
        body[i] = (uint8_t)(i * 13 + 5);

    EVP_MAC *cmac_alg = EVP_MAC_fetch(NULL, "CMAC", NULL);
    EVP_CIPHER *ctr_alg = EVP_CIPHER_fetch(NULL, "AES-256-CTR", NULL);
    if (cmac_alg == NULL || ctr_alg == NULL)
        die("EVP_MAC_fetch(CMAC) / EVP_CIPHER_fetch(AES-256-CTR)");
    Siv siv;
    Copy cp;
    if (!siv_init(&siv, cmac_alg, ctr_alg, key))
        die("composed set-up (CMAC / AES-256-CTR)");
    if (!copy_init(&cp, key))
        die("copy set-up (AES-256-SIV)");

    /* Self-check, both impls whatever the mode. */
    const int check_sizes[] = {1, 15, 16, 17, 31, 32, 33, 64, n};
    for (size_t i = 0; i < sizeof(check_sizes) / sizeof(check_sizes[0]); i++)
        check_size(&siv, &cp, body, check_sizes[i], pkt, pkt2, out);

    uint8_t hdr_ad[AD_LEN];
    volatile uint8_t sink = 0;

    /* Warm-up (caches, branch predictors, CPU frequency). */
    for (long i = 0; i < count / 4 + 1; i++) {
        build_header(pkt, PTYPE, CLIENT_ID, TS, (uint32_t)i);
        build_ad(hdr_ad, pkt, SERVER_ID, TS);
        if (do_composed && !seal_composed(&siv, hdr_ad, body, n, pkt))
            die("composed seal (warm-up)");
        if (do_copy && !seal_copy(&cp, hdr_ad, body, n, pkt))
            die("copy seal (warm-up)");
    }

    for (long r = 0; r < reps; r++) {
        double t0, t1;
        if (do_composed) {
            /* seal: fresh counter every packet, as the extension's callers do */
            t0 = now_ns();
            for (long i = 0; i < count; i++) {
                build_header(pkt, PTYPE, CLIENT_ID, TS, (uint32_t)i);
                build_ad(hdr_ad, pkt, SERVER_ID, TS);
                if (!seal_composed(&siv, hdr_ad, body, n, pkt))
                    die("composed seal");
            }
            t1 = now_ns();
            sink ^= pkt[HEADER_LEN];
            report("composed", "seal", n, count, r, t1 - t0);

            /* open: one valid packet (the last sealed), AD rebuilt from its header */
            t0 = now_ns();
            for (long i = 0; i < count; i++) {
                build_ad(hdr_ad, pkt, SERVER_ID, TS);
                if (!open_composed(&siv, hdr_ad, pkt, n, out))
                    die("composed open");
            }
            t1 = now_ns();
            sink ^= out[0];
            report("composed", "open", n, count, r, t1 - t0);
        }
        if (do_copy) {
            t0 = now_ns();
            for (long i = 0; i < count; i++) {
                build_header(pkt, PTYPE, CLIENT_ID, TS, (uint32_t)i);
                build_ad(hdr_ad, pkt, SERVER_ID, TS);
                if (!seal_copy(&cp, hdr_ad, body, n, pkt))
                    die("copy seal");
            }
            t1 = now_ns();
            sink ^= pkt[HEADER_LEN];
            report("copy", "seal", n, count, r, t1 - t0);

            t0 = now_ns();
            for (long i = 0; i < count; i++) {
                build_ad(hdr_ad, pkt, SERVER_ID, TS);
                if (!open_copy(&cp, hdr_ad, pkt, n, out))
                    die("copy open");
            }
            t1 = now_ns();
            sink ^= out[0];
            report("copy", "open", n, count, r, t1 - t0);
        }
    }
    if (memcmp(out, body, (size_t)n) != 0)
        die("final round-trip comparison");
    fprintf(stderr, "openssl: %s (sink %u)\n", OpenSSL_version(OPENSSL_VERSION), (unsigned)sink);

    siv_free(&siv);
    copy_free(&cp);
    EVP_MAC_free(cmac_alg);
    EVP_CIPHER_free(ctr_alg);
    free(body);
    free(pkt);
    free(pkt2);
    free(out);
    return 0;
}
