/*
 * siv_ceiling.c: the C ceiling for vpncrypt's native AES-256-SIV path.
 *
 * Runs exactly the EVP call sequence of vpncrypt/_fast.pyx (siv_seal / siv_open)
 * in a tight loop, with no Python in the way:
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
 * Usage: siv_ceiling SIZE COUNT REPS
 * Prints one JSON object per line:
 *   {"op": "seal", "size": 1420, "count": 20000, "rep": 0, "ns_per_packet": 812.3}
 * Exit status 0 on success; any EVP failure prints a message to stderr and exits 1.
 *
 * Build: gcc -O2 -o siv_ceiling siv_ceiling.c -lcrypto
 */
#define _POSIX_C_SOURCE 199309L

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
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

static inline void seal_one(EVP_CIPHER_CTX *work, const EVP_CIPHER_CTX *tmpl, const uint8_t *ad,
                            const uint8_t *body, int n, uint8_t *pkt)
{
    int outl = 0;
    if (EVP_CIPHER_CTX_copy(work, tmpl) != 1)
        die("EVP_CIPHER_CTX_copy (seal)");
    if (EVP_EncryptUpdate(work, NULL, &outl, ad, AD_LEN) != 1)
        die("EVP_EncryptUpdate (AD)");
    if (EVP_EncryptUpdate(work, pkt + OVERHEAD, &outl, body, n) != 1 || outl != n)
        die("EVP_EncryptUpdate (body)");
    if (EVP_EncryptFinal_ex(work, pkt + OVERHEAD + n, &outl) != 1)
        die("EVP_EncryptFinal_ex");
    if (EVP_CIPHER_CTX_ctrl(work, EVP_CTRL_AEAD_GET_TAG, TAG_LEN, pkt + HEADER_LEN) != 1)
        die("EVP_CTRL_AEAD_GET_TAG");
}

static inline void open_one(EVP_CIPHER_CTX *work, const EVP_CIPHER_CTX *tmpl, const uint8_t *ad,
                            const uint8_t *pkt, int n, uint8_t *out)
{
    int outl = 0;
    if (EVP_CIPHER_CTX_copy(work, tmpl) != 1)
        die("EVP_CIPHER_CTX_copy (open)");
    if (EVP_CIPHER_CTX_ctrl(work, EVP_CTRL_AEAD_SET_TAG, TAG_LEN, (void *)(pkt + HEADER_LEN)) != 1)
        die("EVP_CTRL_AEAD_SET_TAG");
    if (EVP_DecryptUpdate(work, NULL, &outl, ad, AD_LEN) != 1)
        die("EVP_DecryptUpdate (AD)");
    if (EVP_DecryptUpdate(work, out, &outl, pkt + OVERHEAD, n) != 1 || outl != n)
        die("EVP_DecryptUpdate (body; tag mismatch?)");
    if (EVP_DecryptFinal_ex(work, out + n, &outl) != 1)
        die("EVP_DecryptFinal_ex");
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

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s SIZE COUNT REPS\n", argv[0]);
        return 2;
    }
    long size = strtol(argv[1], NULL, 10);
    long count = strtol(argv[2], NULL, 10);
    long reps = strtol(argv[3], NULL, 10);
    if (size < 1 || size > MAX_BODY || count < 1 || reps < 1) {
        fprintf(stderr, "siv_ceiling: need 1 <= SIZE <= %d, COUNT >= 1, REPS >= 1\n", MAX_BODY);
        return 2;
    }
    const int n = (int)size;
    const uint8_t ptype = 0x01; /* Kind.DATA from the client */
    const uint32_t client_id = 7, server_id = 0x5EC0DE01;
    const uint64_t ts = 1700000000ULL;

    uint8_t key[64];
    for (int i = 0; i < 64; i++)
        key[i] = (uint8_t)(i * 37 + 11);

    uint8_t *body = malloc((size_t)n);
    uint8_t *pkt = malloc((size_t)n + OVERHEAD + 32); /* +32: room for Final's (empty) output */
    uint8_t *out = malloc((size_t)n + 32);
    if (body == NULL || pkt == NULL || out == NULL)
        die("malloc");
    for (int i = 0; i < n; i++)
        body[i] = (uint8_t)(i * 13 + 5);

    EVP_CIPHER *cipher = EVP_CIPHER_fetch(NULL, "AES-256-SIV", NULL);
    if (cipher == NULL)
        die("EVP_CIPHER_fetch(AES-256-SIV)");
    EVP_CIPHER_CTX *enc_tmpl = EVP_CIPHER_CTX_new();
    EVP_CIPHER_CTX *dec_tmpl = EVP_CIPHER_CTX_new();
    EVP_CIPHER_CTX *work = EVP_CIPHER_CTX_new();
    if (enc_tmpl == NULL || dec_tmpl == NULL || work == NULL)
        die("EVP_CIPHER_CTX_new");
    if (EVP_EncryptInit_ex(enc_tmpl, cipher, NULL, key, NULL) != 1)
        die("EVP_EncryptInit_ex");
    if (EVP_DecryptInit_ex(dec_tmpl, cipher, NULL, key, NULL) != 1)
        die("EVP_DecryptInit_ex");

    uint8_t hdr_ad[AD_LEN];
    volatile uint8_t sink = 0;

    /* Self-check: seal then open round-trips, and a flipped bit is rejected. */
    build_header(pkt, ptype, client_id, ts, 0);
    build_ad(hdr_ad, pkt, server_id, ts);
    seal_one(work, enc_tmpl, hdr_ad, body, n, pkt);
    open_one(work, dec_tmpl, hdr_ad, pkt, n, out);
    if (memcmp(out, body, (size_t)n) != 0)
        die("round-trip comparison");
    {
        int outl = 0;
        pkt[OVERHEAD] ^= 1;
        if (EVP_CIPHER_CTX_copy(work, dec_tmpl) != 1 ||
            EVP_CIPHER_CTX_ctrl(work, EVP_CTRL_AEAD_SET_TAG, TAG_LEN, pkt + HEADER_LEN) != 1 ||
            EVP_DecryptUpdate(work, NULL, &outl, hdr_ad, AD_LEN) != 1)
            die("tamper check setup");
        if (EVP_DecryptUpdate(work, out, &outl, pkt + OVERHEAD, n) == 1 &&
            EVP_DecryptFinal_ex(work, out + n, &outl) == 1) {
            fprintf(stderr, "siv_ceiling: tampered packet was accepted\n");
            return 1;
        }
        ERR_clear_error();
        pkt[OVERHEAD] ^= 1;
    }

    /* Warm-up (caches, branch predictors, CPU frequency). */
    for (long i = 0; i < count / 4 + 1; i++) {
        build_header(pkt, ptype, client_id, ts, (uint32_t)i);
        build_ad(hdr_ad, pkt, server_id, ts);
        seal_one(work, enc_tmpl, hdr_ad, body, n, pkt);
    }

    for (long r = 0; r < reps; r++) {
        /* seal: fresh counter every packet, as the extension's callers do */
        double t0 = now_ns();
        for (long i = 0; i < count; i++) {
            build_header(pkt, ptype, client_id, ts, (uint32_t)i);
            build_ad(hdr_ad, pkt, server_id, ts);
            seal_one(work, enc_tmpl, hdr_ad, body, n, pkt);
        }
        double t1 = now_ns();
        sink ^= pkt[HEADER_LEN];
        printf("{\"op\": \"seal\", \"size\": %d, \"count\": %ld, \"rep\": %ld, "
               "\"ns_per_packet\": %.2f}\n",
               n, count, r, (t1 - t0) / (double)count);

        /* open: one valid packet (the last sealed), AD rebuilt from its header each time */
        t0 = now_ns();
        for (long i = 0; i < count; i++) {
            build_ad(hdr_ad, pkt, server_id, ts);
            open_one(work, dec_tmpl, hdr_ad, pkt, n, out);
        }
        t1 = now_ns();
        sink ^= out[0];
        printf("{\"op\": \"open\", \"size\": %d, \"count\": %ld, \"rep\": %ld, "
               "\"ns_per_packet\": %.2f}\n",
               n, count, r, (t1 - t0) / (double)count);
    }
    if (memcmp(out, body, (size_t)n) != 0)
        die("final round-trip comparison");
    fprintf(stderr, "openssl: %s (sink %u)\n", OpenSSL_version(OPENSSL_VERSION), (unsigned)sink);

    EVP_CIPHER_CTX_free(work);
    EVP_CIPHER_CTX_free(enc_tmpl);
    EVP_CIPHER_CTX_free(dec_tmpl);
    EVP_CIPHER_free(cipher);
    free(body);
    free(pkt);
    free(out);
    return 0;
}
