# cython: language_level=3
"""Native core: AES-256-SIV packet sealing and opening through OpenSSL's EVP API.

Produces byte-identical packets to the reference path in protocol/aead.py (pinned
by tests/vectors/). The crypto runs with the GIL released.

SIV is composed here from its RFC 5297 parts (S2V over CMAC, then CTR) on two keyed
AES contexts per key that are never re-initialised, rather than through OpenSSL's
AES-SIV cipher: that cipher cannot be re-initialised without its key on OpenSSL 3.0, so
each packet had to copy a keyed template context (allocations and a CMAC context
rebuild, ~18% of a loop thread's time), and even re-initialising a CMAC or CTR context
costs more than a small packet's AES work (see the section below). S2V's first step
and the CMAC subkeys depend on the key only and are computed once. Tags are compared
with CRYPTO_memcmp (constant time). RFC 5297's vectors and the reference path pin the
result (tests/test_aead.py).
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport (PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize,
                            PyBytes_GET_SIZE)
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

cdef extern from "openssl/evp.h" nogil:
    ctypedef struct EVP_CIPHER_CTX:
        pass
    ctypedef struct EVP_CIPHER:
        pass
    ctypedef struct ENGINE:
        pass
    ctypedef struct OSSL_LIB_CTX:
        pass
    EVP_CIPHER_CTX *EVP_CIPHER_CTX_new()
    void EVP_CIPHER_CTX_free(EVP_CIPHER_CTX *ctx)
    EVP_CIPHER *EVP_CIPHER_fetch(OSSL_LIB_CTX *ctx, const char *algorithm,
                                 const char *properties)
    int EVP_EncryptInit_ex(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *t, ENGINE *impl,
                           const unsigned char *key, const unsigned char *iv)
    int EVP_EncryptUpdate(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl,
                          const unsigned char *inp, int inl)
    int EVP_CIPHER_CTX_set_padding(EVP_CIPHER_CTX *ctx, int pad)

cdef extern from "openssl/crypto.h" nogil:
    const char *OpenSSL_version(int t)
    int OPENSSL_init_crypto(uint64_t opts, const void *settings)
    uint64_t OPENSSL_INIT_NO_LOAD_CONFIG
    int OPENSSL_VERSION
    int CRYPTO_memcmp(const void *a, const void *b, size_t n)

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    int pthread_mutex_init(pthread_mutex_t *m, void *attr)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)
    int pthread_mutex_destroy(pthread_mutex_t *m)

DEF HEADER_LEN = 8
DEF TAG_LEN = 16
DEF OVERHEAD = 24
DEF AD_LEN = 20
DEF VERSION = 1
DEF MAX_DATAGRAM = 65507

PATH = "native"

# By SIV key size (32/48/64 bytes): AES-CBC for CMAC, AES-ECB for CTR, over each half.
cdef EVP_CIPHER *CBC[3]
cdef EVP_CIPHER *ECB[3]
cdef int _i
# AES from the default provider is all this needs: parsing openssl.cnf (and what it
# pulls in) costs ~0.6 MB of resident memory, so it is read only when OPENSSL_CONF
# names one explicitly.
import os as _os
if not _os.environ.get("OPENSSL_CONF"):
    OPENSSL_init_crypto(OPENSSL_INIT_NO_LOAD_CONFIG, NULL)
del _os
for _i, _bits in enumerate((b"128", b"192", b"256")):
    CBC[_i] = EVP_CIPHER_fetch(NULL, b"AES-" + _bits + b"-CBC", NULL)
    ECB[_i] = EVP_CIPHER_fetch(NULL, b"AES-" + _bits + b"-ECB", NULL)
    if CBC[_i] == NULL or ECB[_i] == NULL:
        raise ImportError("OpenSSL libcrypto lacks AES-CBC or AES-ECB (need OpenSSL >= 3.0)")


def openssl_version():
    return OpenSSL_version(OPENSSL_VERSION).decode()


cdef inline void put16(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = (v >> 8) & 0xFF
    p[1] = v & 0xFF


cdef inline void put32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = (v >> 24) & 0xFF
    p[1] = (v >> 16) & 0xFF
    p[2] = (v >> 8) & 0xFF
    p[3] = v & 0xFF


cdef inline void put64(uint8_t *p, uint64_t v) noexcept nogil:
    put32(p, <uint32_t>(v >> 32))
    put32(p + 4, <uint32_t>v)


cdef inline void build_ad(uint8_t *ad, const uint8_t *hdr, uint32_t server_id,
                          uint64_t ts) noexcept nogil:
    # version | type | client id | server id | timestamp | counter (see wire.py)
    ad[0] = VERSION
    ad[1] = hdr[0]
    ad[2] = hdr[1]
    ad[3] = hdr[2]
    put32(ad + 4, server_id)
    put64(ad + 8, ts)
    memcpy(ad + 16, hdr + 4, 4)


# ---- AES-SIV (RFC 5297) from CMAC and CTR ----------------------------------------------------
#
# OpenSSL 3.0 spends most of a small packet's time in context (re)initialisation and
# parameter lookups (EVP_MAC_init, setting a CTR IV), so no context is ever re-initialised:
# CMAC runs on an AES-CBC context whose chain simply continues from one message to the
# next (the first block of each message is xored with the previous last block, which
# makes the effective IV zero), and CTR's keystream comes from an AES-ECB context over
# counter blocks we write. Each packet costs a few EVP_EncryptUpdate calls and nothing else.

DEF CHUNK = 2048   # stack scratch for CBC output and CTR keystream

cdef struct Siv:
    EVP_CIPHER_CTX *cbc     # AES-CBC keyed with K1 (the key's first half): CMAC's chain
    EVP_CIPHER_CTX *ecb     # AES-ECB keyed with K2 (second half): CTR's keystream
    uint8_t chain[16]       # the CBC context's IV now: its last output block
    uint8_t sub1[16]        # the CMAC subkeys K1 and K2 of RFC 4493
    uint8_t sub2[16]
    uint8_t zero_mac[16]    # CMAC(K1, 16 zero bytes): S2V's first step
    pthread_mutex_t lock    # a loop thread and Python callers may share a key
    int broken              # the chain could not be put back in step: refuse everything


cdef inline void xor16(uint8_t *a, const uint8_t *b) noexcept nogil:
    cdef int i
    for i in range(16):
        a[i] ^= b[i]


cdef inline void dbl(uint8_t *d) noexcept nogil:
    # Doubling in GF(2^128), without a key-dependent branch.
    cdef uint8_t carry = d[0] >> 7
    cdef int i
    for i in range(15):
        d[i] = <uint8_t>((d[i] << 1) | (d[i + 1] >> 7))
    d[15] = <uint8_t>((d[15] << 1) ^ ((-carry) & 0x87))


cdef int cbc(Siv *s, const uint8_t *src, size_t n, uint8_t *last) noexcept nogil:
    """CBC-encrypt n bytes (a multiple of 16, > 0) on from the chain; last = the final block."""
    cdef uint8_t scratch[CHUNK]
    cdef int outl = 0
    cdef size_t k = 0
    cdef uint8_t zero[16]
    while n:
        k = n if n < CHUNK else CHUNK
        if EVP_EncryptUpdate(s.cbc, scratch, &outl, src, <int>k) != 1 or outl != <int>k:
            # Put the context and our copy of its chain back in step (never seen to happen).
            memset(zero, 0, 16)
            memset(s.chain, 0, 16)
            if EVP_EncryptInit_ex(s.cbc, NULL, NULL, NULL, zero) != 1:
                s.broken = 1  # a chain we cannot know would give wrong tags: fail closed
            return 0
        src += k
        n -= k
    memcpy(last, scratch + k - 16, 16)
    memcpy(s.chain, last, 16)
    return 1


# cmac_msg, cmac, s2v and ctr divide only non-negative lengths: C division
# (cdivision) gives the same results without Cython's sign fix-ups for Python's floor
# semantics, so they compile to what bench/siv_ceiling.c compiles to.
@cython.cdivision(True)
cdef int cmac_msg(Siv *s, const uint8_t *head, size_t head_len, uint8_t *tail, int tail_len,
                  uint8_t *out) noexcept nogil:
    """CMAC(K1, head || tail): head_len a multiple of 16, tail 0..32 bytes in a writable
    buffer of at least 32 bytes (padded and xored with a subkey here)."""
    cdef uint8_t first[16]
    cdef int nb
    if tail_len == 0 or tail_len % 16:
        nb = (tail_len + 16) // 16 if tail_len % 16 else 1
        tail[tail_len] = 0x80
        memset(tail + tail_len + 1, 0, nb * 16 - tail_len - 1)
        xor16(tail + (nb - 1) * 16, s.sub2)
    else:
        nb = tail_len // 16
        xor16(tail + (nb - 1) * 16, s.sub1)
    if head_len:
        memcpy(first, head, 16)
        xor16(first, s.chain)
        if not cbc(s, first, 16, out):
            return 0
        if head_len > 16 and not cbc(s, head + 16, head_len - 16, out):
            return 0
    else:
        xor16(tail, s.chain)
    return cbc(s, tail, <size_t>nb * 16, out)


@cython.cdivision(True)
cdef int cmac(Siv *s, const uint8_t *a, size_t an, uint8_t *out) noexcept nogil:
    cdef uint8_t t[48]
    cdef size_t head = ((an - 1) // 16) * 16 if an else 0
    memcpy(t, a + head, an - head)
    return cmac_msg(s, a, head, t, <int>(an - head), out)


@cython.cdivision(True)
cdef int s2v(Siv *s, const uint8_t **ads, const int *adl, int nad, const uint8_t *p, int n,
             uint8_t *v) noexcept nogil:
    """RFC 5297 S2V over the associated data strings and the plaintext (n >= 1)."""
    cdef uint8_t d[16]
    cdef uint8_t t[48]
    cdef int i, head
    memcpy(d, s.zero_mac, 16)
    for i in range(nad):
        dbl(d)
        if not cmac(s, ads[i], adl[i], t):
            return 0
        xor16(d, t)
    if n >= 16:  # T = P xorend D: D lands in the last 16 bytes, within the last two blocks
        head = ((n - 16) // 16) * 16
        memcpy(t, p + head, n - head)
        xor16(t + n - head - 16, d)
        return cmac_msg(s, p, head, t, n - head, v)
    dbl(d)
    memset(t, 0, 16)
    memcpy(t, p, n)
    t[n] = 0x80
    xor16(t, d)
    return cmac_msg(s, NULL, 0, t, 16, v)


cdef extern from *:
    """
    #include <string.h>
    /* A big-endian 64-bit store in one move (the CTR counter blocks). */
    static inline void vc_put_be64(unsigned char *p, unsigned long long v) {
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        v = __builtin_bswap64(v);
    #endif
        memcpy(p, &v, 8);
    }
    /* A counter the packet loop adds to while Python takes it (GIL released on both
     * sides): a plain read-then-zero loses the adds in between. 32-bit atomics exist on
     * every target (MIPS ll/sc, ARMv7 ldrex/strex). */
    static inline void vc_add32(uint32_t *p, uint32_t v) {
        __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
    }
    static inline uint32_t vc_take32(uint32_t *p) {
        return __atomic_exchange_n(p, 0, __ATOMIC_RELAXED);
    }
    """
    void vc_put_be64(uint8_t *p, uint64_t v) nogil
    void vc_add32(uint32_t *p, uint32_t v) nogil
    uint32_t vc_take32(uint32_t *p) nogil


cdef inline uint32_t get32(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline uint64_t get64(const uint8_t *p) noexcept nogil:
    return (<uint64_t>p[0] << 56) | (<uint64_t>p[1] << 48) | (<uint64_t>p[2] << 40) | \
           (<uint64_t>p[3] << 32) | (<uint64_t>p[4] << 24) | (<uint64_t>p[5] << 16) | \
           (<uint64_t>p[6] << 8) | <uint64_t>p[7]


@cython.cdivision(True)
cdef int ctr(Siv *s, const uint8_t *v, const uint8_t *src, int n, uint8_t *dst) noexcept nogil:
    """AES-CTR from the synthetic IV with its two 31st bits cleared (RFC 5297 2.6), the
    128-bit counter big-endian; dst may be src."""
    cdef uint8_t ks[CHUNK]
    cdef uint8_t q[16]
    cdef uint64_t hi, lo, w, x
    cdef int off = 0, k, nb, j, outl = 0
    memcpy(q, v, 16)
    q[8] &= 0x7F
    q[12] &= 0x7F
    hi, lo = get64(q), get64(q + 8)
    while off < n:
        k = min(CHUNK, n - off)
        nb = (k + 15) // 16
        for j in range(nb):
            vc_put_be64(ks + 16 * j, hi)
            vc_put_be64(ks + 16 * j + 8, lo)
            lo += 1
            hi += lo == 0
        if EVP_EncryptUpdate(s.ecb, ks, &outl, ks, nb * 16) != 1 or outl != nb * 16:
            return 0
        j = 0
        while j + 8 <= k:
            memcpy(&w, src + off + j, 8)
            memcpy(&x, ks + j, 8)
            w ^= x
            memcpy(dst + off + j, &w, 8)
            j += 8
        while j < k:
            dst[off + j] = src[off + j] ^ ks[j]
            j += 1
        off += k
    return 1


cdef int siv_init(Siv *s, const uint8_t *key, int keylen) noexcept nogil:
    """Key a zeroed Siv (keylen 32, 48 or 64); 0 on failure (siv_free cleans up)."""
    cdef int half = keylen // 2, which = keylen // 16 - 2
    cdef uint8_t zero[16]
    cdef uint8_t t[48]
    memset(zero, 0, 16)
    pthread_mutex_init(&s.lock, NULL)
    s.cbc = EVP_CIPHER_CTX_new()
    s.ecb = EVP_CIPHER_CTX_new()
    if s.cbc == NULL or s.ecb == NULL:
        return 0
    if EVP_EncryptInit_ex(s.cbc, CBC[which], NULL, key, zero) != 1 or \
            EVP_CIPHER_CTX_set_padding(s.cbc, 0) != 1:
        return 0
    if EVP_EncryptInit_ex(s.ecb, ECB[which], NULL, key + half, NULL) != 1 or \
            EVP_CIPHER_CTX_set_padding(s.ecb, 0) != 1:
        return 0
    memset(s.chain, 0, 16)
    if not cbc(s, zero, 16, s.sub1):   # L = AES(K1, 0); K1 = dbl(L), K2 = dbl(K1)
        return 0
    dbl(s.sub1)
    memcpy(s.sub2, s.sub1, 16)
    dbl(s.sub2)
    memset(t, 0, 16)
    return cmac_msg(s, NULL, 0, t, 16, s.zero_mac)


cdef void siv_free(Siv *s) noexcept nogil:
    EVP_CIPHER_CTX_free(s.cbc)
    EVP_CIPHER_CTX_free(s.ecb)
    pthread_mutex_destroy(&s.lock)
    memset(s, 0, sizeof(Siv))   # no key-derived bytes left behind


cdef int siv_seal(Siv *s, const uint8_t **ads, const int *adl, int nad, const uint8_t *body,
                  int n, uint8_t *tag_out, uint8_t *ct_out) noexcept nogil:
    """tag_out = S2V(ads, body); ct_out = CTR(body). ct_out may be body (in place)."""
    cdef int ok
    pthread_mutex_lock(&s.lock)
    ok = not s.broken and s2v(s, ads, adl, nad, body, n, tag_out) and ctr(s, tag_out, body, n, ct_out)
    pthread_mutex_unlock(&s.lock)
    return ok


cdef int siv_open(Siv *s, const uint8_t **ads, const int *adl, int nad, const uint8_t *tag,
                  const uint8_t *ct, int n, uint8_t *out) noexcept nogil:
    """Decrypt into out and check the tag (constant time); 0 if it does not authenticate."""
    cdef uint8_t v[16]
    cdef int ok
    pthread_mutex_lock(&s.lock)
    ok = not s.broken and ctr(s, tag, ct, n, out) and s2v(s, ads, adl, nad, out, n, v)
    pthread_mutex_unlock(&s.lock)
    return ok and CRYPTO_memcmp(v, tag, 16) == 0


cdef inline int seal_packet(Siv *s, uint8_t ptype, uint32_t client_id, uint32_t server_id,
                            uint64_t ts, uint32_t counter, const uint8_t *body, int n,
                            uint8_t *o) noexcept nogil:
    """One packet at o: the 8-byte header (wire.py), then tag and ciphertext sealed under
    the associated data built from it. body may be o + OVERHEAD (sealed in place). Every
    sealing path (SivContext.seal, the Engine's loop and control packets, bench_siv)
    goes through here, so they cannot lay a packet out differently."""
    cdef uint8_t ad[AD_LEN]
    cdef const uint8_t *adp = ad
    cdef int adl = AD_LEN
    o[0] = ptype
    put16(o + 1, client_id)
    o[3] = <uint8_t>(ts & 0xFF)
    put32(o + 4, counter)
    build_ad(ad, o, server_id, ts)
    return siv_seal(s, &adp, &adl, 1, body, n, o + HEADER_LEN, o + OVERHEAD)


cdef inline int open_packet(Siv *s, uint32_t server_id, uint64_t ts, const uint8_t *pkt,
                            int body, uint8_t *out) noexcept nogil:
    """The plaintext of a packet (body bytes after the 24-byte overhead) into out, under
    the associated data built from its header and the full timestamp ts; 0 if it does
    not authenticate. The counterpart of seal_packet for every opening path."""
    cdef uint8_t ad[AD_LEN]
    cdef const uint8_t *adp = ad
    cdef int adl = AD_LEN
    build_ad(ad, pkt, server_id, ts)
    return siv_open(s, &adp, &adl, 1, pkt + HEADER_LEN, pkt + OVERHEAD, body, out)


def rfc5297(bint encrypt, bytes key, list ads, bytes data):
    """Raw AES-SIV (any key size) over the same code, for RFC 5297's test vectors.

    encrypt: returns V || C. decrypt: `data` is V || C; returns the plaintext or None.
    """
    if len(key) not in (32, 48, 64) or len(ads) > 8:
        raise ValueError("bad key size or too many AD components")
    cdef Siv siv
    cdef const uint8_t *adp[8]
    cdef int adl[8]
    cdef int i, ok = 0, n
    cdef const uint8_t *d = data
    memset(&siv, 0, sizeof(Siv))
    try:
        if not siv_init(&siv, <const uint8_t *>PyBytes_AS_STRING(key), len(key)):
            raise RuntimeError("OpenSSL AES-CBC/ECB set-up failed")
        for i in range(len(ads)):
            adp[i] = <const uint8_t *>PyBytes_AS_STRING(ads[i])
            adl[i] = len(ads[i])
        if encrypt:
            out = PyBytes_FromStringAndSize(NULL, TAG_LEN + len(data))
            ok = siv_seal(&siv, adp, adl, len(ads), d, len(data),
                          <uint8_t *>PyBytes_AS_STRING(out),
                          <uint8_t *>PyBytes_AS_STRING(out) + TAG_LEN)
        else:
            n = len(data) - TAG_LEN
            if n < 1:
                return None
            out = PyBytes_FromStringAndSize(NULL, n)
            ok = siv_open(&siv, adp, adl, len(ads), d, d + TAG_LEN, n,
                          <uint8_t *>PyBytes_AS_STRING(out))
        return out if ok else None
    finally:
        siv_free(&siv)


cdef inline bint acquire(object obj, Py_buffer *view, const uint8_t **ptr,
                         Py_ssize_t *n) except -1:
    """Point at obj's bytes. True if borrowed from a bytes object (nothing to release);
    False if `view` was filled and must be released. Plain bytes skip the buffer
    protocol: a typed memoryview argument costs more per call than the crypto's own
    fixed overhead (see bench/crypto_bench.py)."""
    if PyBytes_CheckExact(obj):
        ptr[0] = <const uint8_t *>PyBytes_AS_STRING(obj)
        n[0] = PyBytes_GET_SIZE(obj)
        return True
    PyObject_GetBuffer(obj, view, PyBUF_SIMPLE)
    ptr[0] = <const uint8_t *>view.buf
    n[0] = view.len
    return False


cdef class SivContext:
    """AES-256-SIV for one (key, client id, server id): seal and open whole packets."""

    cdef Siv siv
    cdef readonly uint32_t client_id
    cdef readonly uint32_t server_id

    def __cinit__(self, bytes key, uint32_t client_id, uint32_t server_id):
        memset(&self.siv, 0, sizeof(Siv))

    def __init__(self, bytes key, uint32_t client_id, uint32_t server_id):
        if len(key) != 64:
            raise ValueError("AES-256-SIV key must be 64 bytes")
        if client_id > 0xFFFF:
            raise ValueError("client id must fit 16 bits")
        self.client_id = client_id
        self.server_id = server_id
        if self.siv.cbc != NULL:
            siv_free(&self.siv)
        if not siv_init(&self.siv, <const uint8_t *>PyBytes_AS_STRING(key), 64):
            raise RuntimeError("OpenSSL AES-256-CBC/ECB set-up failed")

    def __dealloc__(self):
        siv_free(&self.siv)

    def seal(self, int ptype, uint64_t timestamp, uint32_t counter, object body):
        """Return header | tag | ciphertext for `body` (1..65483 bytes, any buffer)."""
        cdef Py_buffer view
        cdef const uint8_t *src
        cdef Py_ssize_t n
        cdef int ok
        cdef uint8_t *p
        if ptype < 0 or ptype > 255:
            raise ValueError("packet type must fit one byte")
        borrowed = acquire(body, &view, &src, &n)
        try:
            if n < 1 or n > MAX_DATAGRAM - OVERHEAD:
                raise ValueError("body must be 1..%d bytes" % (MAX_DATAGRAM - OVERHEAD))
            out = PyBytes_FromStringAndSize(NULL, OVERHEAD + n)
            p = <uint8_t *>PyBytes_AS_STRING(out)
            with nogil:
                ok = seal_packet(&self.siv, <uint8_t>ptype, self.client_id, self.server_id,
                                 timestamp, counter, src, <int>n, p)
        finally:
            if not borrowed:
                PyBuffer_Release(&view)
        if not ok:
            raise RuntimeError("AES-SIV seal failed")
        return out

    def open(self, object packet, uint64_t timestamp):
        """Return the plaintext body, or None if the packet does not authenticate.

        `timestamp` is the full timestamp the receiver rebuilt from the header's low
        byte. The caller has checked the header's client id.
        """
        cdef Py_buffer view
        cdef const uint8_t *src
        cdef Py_ssize_t size
        cdef int ok = 0
        cdef uint8_t *dst
        out = None
        borrowed = acquire(packet, &view, &src, &size)
        try:
            # The header's timestamp byte must match the rebuilt timestamp: the AD holds
            # the full value, so the whole 8-byte header is authenticated.
            if size < OVERHEAD + 1 or size > MAX_DATAGRAM or src[3] != (timestamp & 0xFF):
                return None
            out = PyBytes_FromStringAndSize(NULL, size - OVERHEAD)
            dst = <uint8_t *>PyBytes_AS_STRING(out)
            with nogil:
                ok = open_packet(&self.siv, self.server_id, timestamp, src,
                                 <int>(size - OVERHEAD), dst)
        finally:
            if not borrowed:
                PyBuffer_Release(&view)
        return out if ok else None


# =============================================================================================
# The native packet loop: TUN <-> UDP with the GIL released, one thread per direction.
#
# It handles DATA packets only. Everything else (keepalives, time sync), and samples of
# what it drops, go to the Python side over an event socket, where the sans-IO core in
# vpncrypt/protocol decides as for the Python loop. The rules it applies to DATA packets
# mirror protocol/wire.py and protocol/replay.py; tests/test_engine.py pins them against
# those modules.
# =============================================================================================

from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcmp
from libc.errno cimport errno, EAGAIN, EINTR, EIO, EINVAL
from posix.unistd cimport read, write
from posix.time cimport clock_gettime, timespec, CLOCK_REALTIME, CLOCK_MONOTONIC

cdef extern from "<sched.h>" nogil:
    int sched_yield()

cdef extern from "<sys/mman.h>" nogil:
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset)
    int munmap(void *addr, size_t length)
    int madvise(void *addr, size_t length, int advice)
    void *MAP_FAILED
    int PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS, MADV_DONTNEED

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    short POLLIN
    short POLLOUT
from cpython.exc cimport PyErr_SetFromErrno


# Privilege drop (daemon/privileges.py): prctl(PR_SET_KEEPCAPS) and capset(2) here, and the
# socket filter (daemon/sockfilter.py), so the running daemon does not load ctypes for
# three system calls (~0.5 MB resident).
cdef extern from *:
    """
    #include <errno.h>
    #ifdef __linux__
    #include <sys/prctl.h>
    #include <sys/syscall.h>
    #include <unistd.h>
    #include <linux/capability.h>
    #include <linux/filter.h>
    #include <sys/socket.h>
    static int vc_keepcaps(int on) { return prctl(PR_SET_KEEPCAPS, on, 0, 0, 0); }
    static int vc_attach_filter(int fd, const void *code, size_t len) {
        struct sock_fprog prog;
        size_t insns = len / sizeof(struct sock_filter);
        if (len == 0 || len % sizeof(struct sock_filter) || insns > BPF_MAXINSNS) {
            errno = EINVAL;
            return -1;
        }
        prog.len = (unsigned short)insns;
        prog.filter = (struct sock_filter *)code;   /* the kernel copies it */
        return setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog);
    }
    static int vc_capset(unsigned int mask) {
        struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
        struct __user_cap_data_struct d[2];
        memset(d, 0, sizeof d);
        d[0].effective = d[0].permitted = mask;
        return (int)syscall(SYS_capset, &h, d);
    }
    #else
    static int vc_keepcaps(int on) { (void)on; errno = ENOSYS; return -1; }
    static int vc_capset(unsigned int mask) { (void)mask; errno = ENOSYS; return -1; }
    static int vc_attach_filter(int fd, const void *code, size_t len) {
        (void)fd; (void)code; (void)len; errno = ENOSYS; return -1;
    }
    #endif
    """
    int vc_keepcaps(int on)
    int vc_capset(unsigned int mask)
    int vc_attach_filter(int fd, const void *code, size_t len)


def keep_caps(bint on):
    """prctl(PR_SET_KEEPCAPS, on): keep the permitted capabilities across setuid."""
    if vc_keepcaps(on) != 0:
        PyErr_SetFromErrno(OSError)


def set_caps(unsigned int mask):
    """capset(2): exactly the capabilities in mask (below 32), effective and permitted."""
    if vc_capset(mask) != 0:
        PyErr_SetFromErrno(OSError)


def attach_filter(int fd, bytes code):
    """setsockopt(SO_ATTACH_FILTER) with a classic BPF program: code is its struct
    sock_filter array (8 bytes an instruction, native byte order)."""
    if vc_attach_filter(fd, <const char *>code, len(code)) != 0:
        PyErr_SetFromErrno(OSError)


cdef extern from *:
    """
    #if defined(__GLIBC__)
    #include <malloc.h>
    static int vc_trim(void) { return malloc_trim(0); }
    #else
    static int vc_trim(void) { return 0; }   /* musl (OpenWrt) gives free pages back itself */
    #endif
    """
    int vc_trim() nogil


def trim_heap():
    """malloc_trim(0): hand the C heap's free pages back to the kernel. glibc keeps what
    start-up allocated and freed (config parsing, key schedule, the helper's output) as
    resident memory otherwise. True if anything was released."""
    return bool(vc_trim())


cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    ctypedef unsigned short sa_family_t
    struct sockaddr:
        sa_family_t sa_family
    struct sockaddr_storage:
        sa_family_t ss_family
    struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    struct cmsghdr:
        size_t cmsg_len
        int cmsg_level
        int cmsg_type
    cmsghdr *CMSG_FIRSTHDR(msghdr *m)
    cmsghdr *CMSG_NXTHDR(msghdr *m, cmsghdr *c)
    unsigned char *CMSG_DATA(cmsghdr *c)
    size_t CMSG_SPACE(size_t n)
    size_t CMSG_LEN(size_t n)
    int recvmmsg(int fd, mmsghdr *vec, unsigned int vlen, int flags, void *timeout)
    int setsockopt(int fd, int level, int name, const void *value, socklen_t n)
    int sendmmsg(int fd, mmsghdr *vec, unsigned int vlen, int flags)
    ssize_t send(int fd, const void *buf, size_t n, int flags)
    ssize_t sendto(int fd, const void *buf, size_t n, int flags, const void *addr,
                   socklen_t alen)
    int MSG_DONTWAIT
    int MSG_TRUNC
    int AF_INET
    int AF_INET6

cdef extern from "<netinet/in.h>" nogil:
    struct in_addr:
        uint32_t s_addr
    struct in6_addr:
        unsigned char s6_addr[16]
    struct sockaddr_in:
        sa_family_t sin_family
        uint16_t sin_port
        in_addr sin_addr
    struct sockaddr_in6:
        sa_family_t sin6_family
        uint16_t sin6_port
        uint32_t sin6_flowinfo
        in6_addr sin6_addr
        uint32_t sin6_scope_id
    uint16_t htons(uint16_t)
    uint16_t ntohs(uint16_t)

cdef extern from "<arpa/inet.h>" nogil:
    int inet_pton(int af, const char *src, void *dst)
    const char *inet_ntop(int af, const void *src, char *dst, socklen_t size)

cdef extern from *:
    """
    #include <netinet/in.h>
    /* Linux UDP offloads (<linux/udp.h>); the numbers are only used where probed. */
    #ifndef SOL_UDP
    #define SOL_UDP 17
    #endif
    #ifndef UDP_SEGMENT
    #define UDP_SEGMENT 103
    #endif
    #ifndef UDP_GRO
    #define UDP_GRO 104
    #endif
    """
    int SOL_UDP
    int UDP_SEGMENT
    int UDP_GRO

cdef extern from *:
    """
    static inline uint32_t vc_next_counter(uint32_t *c) {
        return __atomic_fetch_add(c, 1, __ATOMIC_RELAXED);
    }
    """
    uint32_t vc_next_counter(uint32_t *c) nogil

# Protocol constants (protocol/wire.py, protocol/replay.py).
DEF FROM_SERVER = 0x80
DEF KIND_DATA = 1
DEF KIND_KEEPALIVE = 2
DEF KIND_TIME_REQUEST = 3
DEF KIND_TIME_RESPONSE = 4
DEF CLOCK_WINDOW = 128
DEF STALE_AFTER = 5
DEF WINDOW = 8192
DEF WINDOW_WORDS = 128
DEF MAX_JUMP = 1048576
# Drop reasons (protocol/wire.py Drop).
DEF D_NONE = 0
DEF D_MALFORMED = 1
DEF D_BAD_TYPE = 2
DEF D_UNKNOWN_CLIENT = 3
DEF D_STALE = 4
DEF D_REPLAY = 5
DEF D_AUTH = 6
DEF D_RATE_LIMITED = 9
DEF D_SPOOFED_SOURCE = 10
DEF D_NO_ROUTE = 11
DEF D_BAD_PACKET = 12
DEF D_UNSYNCED = 13
DEF N_REASONS = 16

DEF BATCH = 32
DEF CTL_RATE = 50.0   # keepalives/time-sync packets per second and client handed to Python
DEF ROAM_RATE = 1000.0  # DATA per second and client opened when not from its endpoint
DEF SLOT = 65536
DEF HEADROOM = 16     # room in front of a packet for the TUN's frame prefix
# Offloads (Engine's `offload` flags), Linux only, each probed by the Python side.
DEF OFF_VNET = 1      # the TUN speaks virtio_net_hdr: TSO super-packets in, checksums to finish
DEF OFF_GSO = 2       # UDP_SEGMENT: one send carries many equal-size datagrams
DEF OFF_GRO = 4       # UDP_GRO: one receive returns many datagrams of one sender
DEF OFF_USO = 8       # the TUN hands over UDP super-packets (Linux >= 6.2)
DEF VNET_LEN = 10     # sizeof(struct virtio_net_hdr)
DEF VNET_F_NEEDS_CSUM = 1
DEF VNET_GSO_TCPV4 = 1
DEF VNET_GSO_TCPV6 = 4
DEF VNET_GSO_UDP_L4 = 5
DEF GSO_MAX_SEGS = 64     # the kernel's UDP_MAX_SEGMENTS
DEF GSO_MAX_BYTES = 65487 # largest UDP payload over IPv6 (65507 over IPv4)
DEF TX_BYTES = 131072     # a send batch flushes past this: bounds the buffer memory touched
                          # (two 64-KB GSO messages a sendmmsg is plenty at these rates)
DEF TX_CAP = TX_BYTES + SLOT + BATCH * 16   # + the message that crossed it, + alignment
DEF RX_ROUNDS = 16        # receive batches between two polls while batches come full
DEF YIELD_WRITES = 32     # TUN writes without a pause after which the core is offered
DEF RX_GRO_MSGS = 2       # receive slots per call when each may hold 64 KB of datagrams
DEF RX_KEEP = 16384       # a receive slot past RX_GRO_MSGS keeps up to this much resident
DEF GRO_QUIET = 64        # full receive batches without a coalesced message: GRO off
DEF GRO_RETRY = 1.0       # seconds until GRO is tried again
# Event kinds sent to the Python side.
DEF EV_PACKET = 1      # a non-DATA packet for the sans-IO core to decide
DEF EV_ENDPOINT = 2    # a client's endpoint changed (authenticated DATA from a new address)
DEF EV_DROP = 3        # a sample of a dropped packet (rate-limited), for logs and diagnosis
DEF EV_TOO_BIG = 4     # a TUN packet over the tunnel MTU: Python answers with ICMP (rate-limited)
DEF TOO_BIG_SAMPLE = 1232  # what ICMPv6 "packet too big" can quote within 1280 bytes
DEF EV_HEADER = 8
DEF ADDR_MAX = 28
ROAM_RATE_PER_SECOND = ROAM_RATE  # daemon/server.py's ROAM_RATE must agree (tests pin it)


# ---- replay window (exactly protocol/replay.py, with the bitmap as a ring) ------------------

cdef struct Window:
    int has_newest
    int64_t newest
    int64_t floor
    uint32_t top
    uint64_t bits[WINDOW_WORDS]   # bit for counter c at (c mod WINDOW)


cdef inline int window_seen(const Window *w, uint32_t c) noexcept nogil:
    cdef uint32_t i = c % WINDOW
    return <int>((w.bits[i >> 6] >> (i & 63)) & 1)


cdef inline void window_mark(Window *w, uint32_t c) noexcept nogil:
    cdef uint32_t i = c % WINDOW
    w.bits[i >> 6] |= (<uint64_t>1) << (i & 63)


cdef inline void window_clear(Window *w, uint32_t c) noexcept nogil:
    cdef uint32_t i = c % WINDOW
    w.bits[i >> 6] &= ~((<uint64_t>1) << (i & 63))


cdef int window_check(const Window *w, int64_t ts, uint32_t counter) noexcept nogil:
    cdef uint32_t ahead, behind
    if not w.has_newest:
        return D_NONE
    if ts < w.newest - STALE_AFTER or ts < w.floor:
        return D_STALE
    ahead = counter - w.top
    if 0 < ahead <= MAX_JUMP:
        return D_NONE
    behind = w.top - counter
    if behind < WINDOW:
        return D_REPLAY if window_seen(w, counter) else D_NONE
    return D_NONE if ts > w.newest else D_REPLAY


cdef int window_accept(Window *w, int64_t ts, uint32_t counter) noexcept nogil:
    """Record an authenticated packet that passed window_check; 1 if it restarted the window."""
    cdef uint32_t ahead = counter - w.top, behind = w.top - counter, c
    if not w.has_newest or not (0 < ahead <= MAX_JUMP or behind < WINDOW):
        restarted = w.has_newest
        memset(w.bits, 0, sizeof(w.bits))
        w.top = counter
        window_mark(w, counter)
        if restarted:
            w.floor = ts
        w.newest = ts
        w.has_newest = 1
        return restarted
    if 0 < ahead <= MAX_JUMP:
        if ahead >= WINDOW:
            memset(w.bits, 0, sizeof(w.bits))
        else:
            c = w.top + 1
            while c != counter:
                window_clear(w, c)
                c += 1
        window_clear(w, counter)
        window_mark(w, counter)
        w.top = counter
    else:
        window_mark(w, counter)
    if ts > w.newest:
        w.newest = ts
    return 0


cdef void window_restore(Window *w, int64_t floor) noexcept nogil:
    """Saved state after a receiver restart (protocol/replay.py ReplayWindow.restore)."""
    memset(w, 0, sizeof(Window))
    w.has_newest = 1
    w.newest = w.floor = floor


cdef class NativeWindow:
    """The C replay window, exposed for tests against protocol/replay.py."""

    cdef Window w

    def __cinit__(self):
        memset(&self.w, 0, sizeof(Window))

    def check(self, int64_t ts, uint32_t counter):
        return window_check(&self.w, ts, counter)

    def restore(self, int64_t floor):
        window_restore(&self.w, floor)

    def accept(self, int64_t ts, uint32_t counter):
        return bool(window_accept(&self.w, ts, counter))


# ---- allowed-IPs routing: longest prefix over a hash table per (version, prefix length) ----

cdef struct Route:
    int32_t owner   # peer index, -1 = empty slot
    uint8_t version
    uint8_t plen
    uint8_t addr[16]


cdef struct Routes:
    Route *slots
    uint32_t mask
    int nlens[2]
    uint8_t lens[2][129]   # prefix lengths in use, longest first


cdef inline void mask_addr(uint8_t *out, const uint8_t *addr, int nbytes, int plen) noexcept nogil:
    cdef int i, bits
    for i in range(nbytes):
        bits = plen - 8 * i
        if bits >= 8:
            out[i] = addr[i]
        elif bits <= 0:
            out[i] = 0
        else:
            out[i] = addr[i] & <uint8_t>(0xFF << (8 - bits))
    for i in range(nbytes, 16):
        out[i] = 0


cdef inline uint32_t route_hash(int version, int plen, const uint8_t *addr) noexcept nogil:
    cdef uint32_t h = 2166136261u
    cdef int i
    h = (h ^ <uint32_t>version) * 16777619u
    h = (h ^ <uint32_t>plen) * 16777619u
    for i in range(16):
        h = (h ^ addr[i]) * 16777619u
    return h


cdef int32_t routes_lookup(const Routes *r, int version, const uint8_t *addr) noexcept nogil:
    cdef int v = 0 if version == 4 else 1, nbytes = 4 if version == 4 else 16
    cdef int k, plen
    cdef uint8_t key[16]
    cdef uint32_t i
    cdef const Route *slot
    if r.slots == NULL:
        return -1
    for k in range(r.nlens[v]):
        plen = r.lens[v][k]
        mask_addr(key, addr, nbytes, plen)
        i = route_hash(version, plen, key) & r.mask
        while True:
            slot = &r.slots[i]
            if slot.owner < 0:
                break
            if slot.version == version and slot.plen == plen and memcmp(slot.addr, key, 16) == 0:
                return slot.owner
            i = (i + 1) & r.mask
    return -1


cdef void *realloc_or_raise(void *ptr, size_t size) except NULL:
    cdef void *p = realloc(ptr, size)
    if p == NULL:
        raise MemoryError()
    return p


# ---- peers ---------------------------------------------------------------------------------

cdef struct Peer:
    uint32_t id
    Siv *seal                       # borrowed from the SivContexts in Engine.keep
    Siv *open
    uint32_t counter
    Window window
    pthread_mutex_t lock            # guards endpoint
    sockaddr_storage endpoint
    socklen_t endpoint_len          # 0: not known yet
    uint64_t rx_packets
    uint64_t rx_bytes
    uint64_t tx_packets
    uint64_t tx_bytes
    uint64_t drops[N_REASONS]
    double last_rx                  # CLOCK_MONOTONIC seconds of the last authenticated DATA
    double first_unanswered         # first send since last_rx, 0 if none
    double ctl_tokens               # budget for this peer's control packets sent up to Python
    double ctl_refilled
    double roam_tokens              # budget for opening DATA from other addresses (server)
    double roam_refilled
    uint32_t foreign                # DATA and keepalives from other addresses (server), since
                                    # the last foreign_counts(): daemon/pinning.py


cdef inline double clock_now(int which) noexcept nogil:
    cdef timespec ts
    clock_gettime(which, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef inline int64_t full_timestamp(uint8_t low8, int64_t now) noexcept nogil:
    cdef int64_t base = now - CLOCK_WINDOW
    return base + ((<int64_t>low8 - base) & 0xFF)


cdef inline int inner_source(const uint8_t *p, Py_ssize_t n, uint8_t *addr) noexcept nogil:
    """IP version of the inner packet with its source address copied out, or 0 if malformed."""
    if n >= 20 and (p[0] >> 4) == 4:
        memcpy(addr, p + 12, 4)
        return 4
    if n >= 40 and (p[0] >> 4) == 6:
        memcpy(addr, p + 8, 16)
        return 6
    return 0


cdef inline int inner_destination(const uint8_t *p, Py_ssize_t n, uint8_t *addr) noexcept nogil:
    if n >= 20 and (p[0] >> 4) == 4:
        memcpy(addr, p + 16, 4)
        return 4
    if n >= 40 and (p[0] >> 4) == 6:
        memcpy(addr, p + 24, 16)
        return 6
    return 0


# ---- TCP segmentation offload helpers (TUN with IFF_VNET_HDR) --------------------------------

cdef struct VnetHdr:           # struct virtio_net_hdr, host byte order
    uint8_t flags
    uint8_t gso_type
    uint16_t hdr_len
    uint16_t gso_size
    uint16_t csum_start
    uint16_t csum_offset


cdef inline uint64_t csum_add(uint64_t sum, const uint8_t *p, Py_ssize_t n) noexcept nogil:
    """Add bytes to a one's complement sum kept in host order (RFC 1071: the order of the
    words does not matter, so the result stored back in host order is right)."""
    cdef uint32_t w
    cdef uint16_t h
    cdef uint8_t tail[2]
    while n >= 4:
        memcpy(&w, p, 4)
        sum += w
        p += 4
        n -= 4
    if n >= 2:
        memcpy(&h, p, 2)
        sum += h
        p += 2
        n -= 2
    if n:
        tail[0], tail[1] = p[0], 0
        memcpy(&h, tail, 2)
        sum += h
    return sum


cdef inline uint16_t csum_fold(uint64_t sum) noexcept nogil:
    while sum >> 16:
        sum = (sum & 0xFFFF) + (sum >> 16)
    return <uint16_t>sum


cdef inline void csum_store(uint8_t *field, uint64_t sum) noexcept nogil:
    cdef uint16_t r = <uint16_t>~csum_fold(sum)
    memcpy(field, &r, 2)


cdef inline uint64_t pseudo_sum(const uint8_t *p, int version, Py_ssize_t l4_len,
                                int proto) noexcept nogil:
    """One's complement sum of the TCP/UDP pseudo-header of IP packet p (RFC 793, 768,
    8200)."""
    cdef uint8_t pseudo[40]
    if version == 4:
        memcpy(pseudo, p + 12, 8)
        pseudo[8], pseudo[9] = 0, <uint8_t>proto
        put16(pseudo + 10, <uint32_t>l4_len)
        return csum_add(0, pseudo, 12)
    memcpy(pseudo, p + 8, 32)
    put32(pseudo + 32, <uint32_t>l4_len)
    pseudo[36] = pseudo[37] = pseudo[38] = 0
    pseudo[39] = <uint8_t>proto
    return csum_add(0, pseudo, 40)


cdef inline void udp_nonzero(uint8_t *field) noexcept nogil:
    """UDP's checksum 0 means "none" (and IPv6 receivers drop it): a sum of 0 goes out as
    0xFFFF, the kernel's rule."""
    if field[0] == 0 and field[1] == 0:
        field[0] = field[1] = 0xFF


cdef inline void ip4_csum(uint8_t *p, int l3) noexcept nogil:
    p[10] = p[11] = 0
    csum_store(p + 10, csum_add(0, p, l3))


cdef inline int finish_csum(uint8_t *pkt, Py_ssize_t n, const VnetHdr *vh) noexcept nogil:
    """Complete a partial checksum (the field holds the pseudo-header sum): 0 if out of range."""
    cdef uint8_t *field = pkt + vh.csum_start + vh.csum_offset
    if <Py_ssize_t>vh.csum_start + vh.csum_offset + 2 > n:
        return 0
    csum_store(field, csum_add(0, pkt + vh.csum_start, n - vh.csum_start))
    if vh.csum_offset == 6:   # UDP's checksum, 6 bytes into its header (TCP's is at 16)
        udp_nonzero(field)
    return 1


cdef inline void tcp_csum(uint8_t *seg, int version, int l3, Py_ssize_t n) noexcept nogil:
    """Full TCP checksum of a segment whose IP header is l3 bytes."""
    cdef uint8_t *tcp = seg + l3
    tcp[16] = tcp[17] = 0
    csum_store(tcp + 16, csum_add(pseudo_sum(seg, version, n - l3, 6), tcp, n - l3))


cdef inline void udp_csum(uint8_t *seg, int version, int l3, Py_ssize_t n) noexcept nogil:
    """Full UDP checksum of a datagram whose IP header is l3 bytes (0 goes out as 0xFFFF)."""
    cdef uint8_t *udp = seg + l3
    udp[6] = udp[7] = 0
    csum_store(udp + 6, csum_add(pseudo_sum(seg, version, n - l3, 17), udp, n - l3))
    udp_nonzero(udp + 6)


cdef inline int coalescable(const uint8_t *p, Py_ssize_t n, int *l3, int *hl) noexcept nogil:
    """A TCP data segment that may join a super-packet: plain ACK (PSH allowed), no IP
    fragment or IPv6 extension header, and a correct checksum, since the kernel will
    not check the checksum of what we coalesce."""
    cdef int version = p[0] >> 4
    cdef const uint8_t *tcp
    if version == 4 and n >= 40:
        l3[0] = (p[0] & 15) * 4
        if p[9] != 6 or l3[0] < 20 or (p[6] & 0x3F) or p[7] or (
                (p[2] << 8) | p[3]) != n:
            return 0
    elif version == 6 and n >= 60:
        l3[0] = 40
        if p[6] != 6 or ((p[4] << 8) | p[5]) + 40 != n:
            return 0
    else:
        return 0
    tcp = p + l3[0]
    if n < l3[0] + 20:
        return 0
    hl[0] = l3[0] + (tcp[12] >> 4) * 4
    if hl[0] < l3[0] + 20 or hl[0] >= n or (tcp[13] & ~0x08) != 0x10:   # ACK, maybe PSH
        return 0
    return csum_fold(csum_add(pseudo_sum(p, version, n - l3[0], 6), tcp, n - l3[0])) == 0xFFFF


cdef inline int same_flow(const Coal *co, const uint8_t *p, int l3, int hl) noexcept nogil:
    """p continues co's flow: same addresses and ports, for IPv4 the same TOS, TTL and
    DF; for TCP also the same ack, window and options, and its sequence number follows."""
    cdef const uint8_t *a = co.buf + HEADROOM
    cdef const uint8_t *t = p + l3
    cdef const uint8_t *u = a + l3
    if (p[0] >> 4) != co.version or l3 != co.l3 or hl != co.hl:
        return 0
    if co.version == 4:
        if p[1] != a[1] or p[8] != a[8] or (p[6] & 0x40) != (a[6] & 0x40) or \
                memcmp(p + 12, a + 12, 8) != 0:
            return 0
    elif memcmp(p, a, 4) != 0 or memcmp(p + 8, a + 8, 32) != 0:
        return 0
    return (memcmp(t, u, 4) == 0 and memcmp(t + 8, u + 8, 5) == 0
            and memcmp(t + 14, u + 14, 2) == 0 and memcmp(t + 20, u + 20, hl - l3 - 20) == 0
            and ((t[4] << 24) | (t[5] << 16) | (t[6] << 8) | t[7]) == co.next_seq)


def _checksum_selftest(bytes packet, int version, int l3):
    """Test hook: the packet with its TCP (and IPv4 header) checksums recomputed."""
    out = bytearray(packet)
    cdef uint8_t *seg = out
    if version == 4:
        ip4_csum(seg, l3)
    tcp_csum(seg, version, l3, len(out))
    return bytes(out)


def _address(raw):
    """(host, port) of a raw sockaddr (bytes), for the Python side."""
    cdef const uint8_t *p = raw
    cdef char text[64]
    cdef const sockaddr_in *a4
    cdef const sockaddr_in6 *a6
    if len(raw) >= sizeof(sockaddr_in6) and (<const sockaddr *>p).sa_family == AF_INET6:
        a6 = <const sockaddr_in6 *>p
        inet_ntop(AF_INET6, &a6.sin6_addr, text, sizeof(text))
        return (text.decode(), ntohs(a6.sin6_port))
    if len(raw) >= sizeof(sockaddr_in) and (<const sockaddr *>p).sa_family == AF_INET:
        a4 = <const sockaddr_in *>p
        inet_ntop(AF_INET, &a4.sin_addr, text, sizeof(text))
        return (text.decode(), ntohs(a4.sin_port))
    return None


# The UDP -> TUN loop's pending TCP super-packet (receive coalescing, like the kernel's
# GRO): consecutive segments of one flow from one receive batch, written as one packet
# with a virtio header that asks the kernel to treat it as their concatenation.
cdef struct Coal:
    uint8_t *buf                    # HEADROOM + 65535 bytes; the packet at buf + HEADROOM
    Py_ssize_t len                  # 0: nothing pending
    int version, l3, hl, nseg
    Py_ssize_t mss                  # payload bytes of the first segment
    uint32_t next_seq


# One send batch of the TUN -> UDP loop: a slot per message, each one datagram or, with
# UDP GSO, many equal-size datagrams to one peer.
cdef struct Tx:
    int count
    size_t used                     # bytes in the batch
    uint8_t *bufs                   # TX_CAP: the batch's messages back to back
    mmsghdr msgs[BATCH]
    iovec iovs[BATCH]
    sockaddr_storage dests[BATCH]
    Peer *owners[BATCH]
    uint16_t nseg[BATCH]            # datagrams in the message
    uint16_t segsize[BATCH]         # their size (the last may be shorter)
    uint64_t ctrl[BATCH * 4]        # a UDP_SEGMENT control message per slot


cdef class Engine:
    """The native data path for one daemon: both loops, the peer table and the routes.

    Python builds it (peers, routes, fds), starts the two loops in two threads that
    release the GIL for good, reads events from `event_fd`, and stops it. Peers and
    routes may change only while the loops are stopped.
    """

    cdef readonly bint server
    cdef int tun_fd, sock_fd, event_fd, stop_r, stop_w, frame_prefix
    cdef readonly int offload         # OFF_* flags in use (OFF_GSO drops out if sends fail)
    # Offload counters, each written by one loop thread: TCP super-packets read from the
    # TUN and the segments cut from them; UDP messages that held several datagrams (GRO)
    # and those datagrams; UDP sends that carried several datagrams (GSO).
    cdef readonly uint64_t tso_packets, tso_segments, gro_messages, gro_datagrams, gso_sends
    # ... and TUN writes that carried several coalesced segments, and those segments.
    cdef readonly uint64_t coalesced_packets, coalesced_segments
    cdef readonly uint64_t gro_pauses        # GRO turned off: the path does not coalesce
    cdef bint no_coalesce             # the TUN refused a coalesced write: stop trying
    cdef uint64_t tun_writes          # packets written to the TUN (the UDP -> TUN thread's)
    cdef int sock_family
    cdef uint32_t server_id
    cdef Peer **peers
    cdef int npeers, cap
    cdef int32_t *by_id
    cdef Routes routes
    cdef public double clock_offset   # seconds added to CLOCK_REALTIME (client time sync)
    cdef public bint hold_tx          # client: data waits for the first time sync
    cdef public int mtu               # tunnel MTU: bigger TUN packets get ICMP (0: no check)
    cdef uint64_t drops[N_REASONS]
    cdef uint64_t events_lost
    cdef double sample_tokens, sample_refilled
    cdef double big_tokens, big_refilled
    cdef list keep                    # the SivContexts whose keys the peers borrow
    cdef int stopping

    def __cinit__(self):
        # index + 1 per client id, 0 = none: calloc'd pages stay untouched (and out of
        # the resident set) until an id in them is configured
        self.by_id = <int32_t *>calloc(65536, sizeof(int32_t))
        if self.by_id == NULL:
            raise MemoryError()
        self.peers = NULL
        self.routes.slots = NULL

    def __init__(self, bint server, int tun_fd, int sock_fd, int sock_family, int event_fd,
                 int stop_r, int frame_prefix=0, uint32_t server_id=0, int offload=0):
        if frame_prefix < 0 or frame_prefix > HEADROOM or (
                offload & OFF_VNET and frame_prefix != VNET_LEN):
            raise ValueError("bad frame prefix")
        self.server = server
        self.offload = offload
        self.tun_fd, self.sock_fd, self.sock_family = tun_fd, sock_fd, sock_family
        self.event_fd, self.stop_r = event_fd, stop_r
        self.frame_prefix, self.server_id = frame_prefix, server_id
        self.keep = []
        self.sample_tokens = 0.0

    def __dealloc__(self):
        cdef int i
        if self.peers != NULL:
            for i in range(self.npeers):
                if self.peers[i] != NULL:
                    pthread_mutex_destroy(&self.peers[i].lock)
                    free(self.peers[i])
            free(self.peers)
        free(self.by_id)
        free(self.routes.slots)

    # -- set-up (loops stopped) ------------------------------------------------------------

    def add_peer(self, uint32_t client_id, SivContext seal_ctx, SivContext open_ctx,
                 uint32_t counter):
        """Add a peer (or replace the keys of one with the same id); returns its index.
        A replaced peer keeps its endpoint, counters and replay window only if
        `keep_state` style reuse is wanted: callers remove and re-add to reset it."""
        cdef Peer *p
        cdef int idx = self.by_id[client_id & 0xFFFF] - 1
        if idx >= 0:
            raise ValueError(f"client id {client_id} is already in the engine")
        if self.npeers == self.cap:
            self.cap = self.cap * 2 if self.cap else 8
            self.peers = <Peer **>realloc_or_raise(self.peers, self.cap * sizeof(Peer *))
        p = <Peer *>calloc(1, sizeof(Peer))
        if p == NULL:
            raise MemoryError()
        pthread_mutex_init(&p.lock, NULL)
        p.id = client_id
        p.seal = &seal_ctx.siv
        p.open = &open_ctx.siv
        p.counter = counter
        self.keep.append((seal_ctx, open_ctx))
        idx = self.npeers
        self.peers[idx] = p
        self.npeers += 1
        self.by_id[client_id & 0xFFFF] = idx + 1
        return idx

    def remove_peer(self, uint32_t client_id):
        """Forget a peer (its slot stays, emptied, so indices of the others do not move)."""
        cdef int idx = self.by_id[client_id & 0xFFFF] - 1
        if idx < 0:
            return
        self.by_id[client_id & 0xFFFF] = 0
        pthread_mutex_destroy(&self.peers[idx].lock)
        free(self.peers[idx])
        self.peers[idx] = NULL

    def index_of(self, uint32_t client_id):
        return self.by_id[client_id & 0xFFFF] - 1

    def set_routes(self, list routes):
        """routes: [(version, prefix length, address bytes (4 or 16), peer index)]."""
        cdef uint32_t size = 16, i
        cdef int v, k, j, plen
        cdef Route *slot
        cdef uint8_t key[16]
        cdef const uint8_t *a
        while size < 2 * len(routes) + 2:
            size *= 2
        free(self.routes.slots)
        self.routes.slots = <Route *>malloc(size * sizeof(Route))
        if self.routes.slots == NULL:
            raise MemoryError()
        for i in range(size):
            self.routes.slots[i].owner = -1
        self.routes.mask = size - 1
        self.routes.nlens[0] = self.routes.nlens[1] = 0
        seen = {4: set(), 6: set()}
        for version, plen, address, owner in routes:
            a = address
            mask_addr(key, a, 4 if version == 4 else 16, plen)
            i = route_hash(version, plen, key) & self.routes.mask
            while self.routes.slots[i].owner >= 0 and not (
                    self.routes.slots[i].version == version and self.routes.slots[i].plen == plen
                    and memcmp(self.routes.slots[i].addr, key, 16) == 0):
                i = (i + 1) & self.routes.mask
            slot = &self.routes.slots[i]
            slot.owner, slot.version, slot.plen = owner, version, plen
            memcpy(slot.addr, key, 16)
            seen[version].add(plen)
        for v, version in enumerate((4, 6)):
            for k, plen in enumerate(sorted(seen[version], reverse=True)):
                self.routes.lens[v][k] = plen
            self.routes.nlens[v] = len(seen[version])

    def lookup(self, int version, bytes address):
        """The owner of `address` (4 or 16 bytes), for tests."""
        return routes_lookup(&self.routes, version, <const uint8_t *>address)

    def set_endpoint(self, int idx, str host, int port):
        """Where to send this peer's packets (the client's server, or a roamed client)."""
        cdef Peer *p = self.peer(idx)
        cdef sockaddr_storage ss
        cdef socklen_t n = 0
        cdef sockaddr_in *a4 = <sockaddr_in *>&ss
        cdef sockaddr_in6 *a6 = <sockaddr_in6 *>&ss
        cdef bytes h
        memset(&ss, 0, sizeof(ss))
        if ":" in host or self.sock_family == AF_INET6:
            if ":" not in host:
                host = "::ffff:" + host   # an IPv4 peer on a dual-stack socket
            h = host.encode()
            if inet_pton(AF_INET6, h, &a6.sin6_addr) != 1:
                raise ValueError(f"bad address {host!r}")
            a6.sin6_family = AF_INET6
            a6.sin6_port = htons(port)
            n = sizeof(sockaddr_in6)
        else:
            h = host.encode()
            if inet_pton(AF_INET, h, &a4.sin_addr) != 1:
                raise ValueError(f"bad address {host!r}")
            a4.sin_family = AF_INET
            a4.sin_port = htons(port)
            n = sizeof(sockaddr_in)
        pthread_mutex_lock(&p.lock)
        memcpy(&p.endpoint, &ss, n)
        p.endpoint_len = n
        pthread_mutex_unlock(&p.lock)

    cdef Peer *peer(self, int idx) except NULL:
        if idx < 0 or idx >= self.npeers or self.peers[idx] == NULL:
            raise IndexError(f"no peer at index {idx}")
        return self.peers[idx]

    # -- used from Python while the loops run --------------------------------------------

    def seal(self, int idx, int ptype, uint64_t timestamp, bytes body):
        """Seal a control packet for peer `idx` with the shared counter (keepalive, time)."""
        cdef Peer *p = self.peer(idx)
        cdef Py_ssize_t n = len(body)
        if n < 1 or n > MAX_DATAGRAM - OVERHEAD:
            raise ValueError("bad body size")
        out = PyBytes_FromStringAndSize(NULL, OVERHEAD + n)
        cdef uint8_t *o = <uint8_t *>PyBytes_AS_STRING(out)
        if not seal_packet(p.seal, <uint8_t>ptype, p.id, self.server_id, timestamp,
                           vc_next_counter(&p.counter),
                           <const uint8_t *>PyBytes_AS_STRING(body), <int>n, o):
            raise RuntimeError("AES-SIV seal failed")
        return out

    def peer_stats(self, int idx):
        cdef Peer *p = self.peer(idx)
        return {
            "rx_packets": p.rx_packets, "rx_bytes": p.rx_bytes,
            "tx_packets": p.tx_packets, "tx_bytes": p.tx_bytes,
            "drops": {r: p.drops[r] for r in range(N_REASONS) if p.drops[r]},
            "last_rx": p.last_rx, "first_unanswered": p.first_unanswered,
        }

    def restore_window(self, int idx, int64_t floor):
        """protocol/replay.py ReplayWindow.restore for this peer's DATA window."""
        window_restore(&self.peer(idx).window, floor)

    def shift_window(self, int idx, int64_t delta):
        """protocol/replay.py ReplayWindow.shift for this peer's DATA window."""
        cdef Window *w = &self.peer(idx).window
        if w.has_newest:
            w.newest += delta
            w.floor += delta

    def window_newest(self, int idx):
        """The newest accepted DATA timestamp of this peer, or None."""
        cdef Window *w = &self.peer(idx).window
        return w.newest if w.has_newest else None

    def reset_window(self, int idx):
        """Forget the replay state of a peer (the client's clock moved back past it)."""
        memset(&self.peer(idx).window, 0, sizeof(Window))

    def foreign_counts(self):
        """{client id: DATA and keepalives from other addresses than its endpoint} since the
        last call, for clients that had any (server; daemon/pinning.py)."""
        cdef Peer *p
        cdef int i
        cdef uint32_t n
        out = {}
        for i in range(self.npeers):
            p = self.peers[i]
            if p != NULL and p.foreign:
                n = vc_take32(&p.foreign)   # atomically: the loop adds meanwhile
                if n:
                    out[p.id] = n
        return out

    def global_drops(self):
        return {r: self.drops[r] for r in range(N_REASONS) if self.drops[r]}

    def mark_sent(self, int idx):
        """Python sent a packet to this peer (first_unanswered bookkeeping)."""
        cdef Peer *p = self.peer(idx)
        if p.first_unanswered == 0:
            p.first_unanswered = clock_now(CLOCK_MONOTONIC)

    def mark_answered(self, int idx):
        """Python accepted a packet from this peer."""
        cdef Peer *p = self.peer(idx)
        p.first_unanswered = 0
        p.last_rx = clock_now(CLOCK_MONOTONIC)

    @staticmethod
    def decode_event(bytes raw):
        """(kind, reason, client id, (host, port) or None, packet bytes) of an event."""
        cdef const uint8_t *p = raw
        if len(raw) < EV_HEADER:
            return None
        alen = p[4]
        return (p[0], p[1], (p[2] << 8) | p[3], _address(raw[EV_HEADER:EV_HEADER + alen]),
                raw[EV_HEADER + alen:])

    def run_tun_to_udp(self):
        with nogil:
            self.tun_loop()

    def run_udp_to_tun(self):
        with nogil:
            self.udp_loop()

    # -- the loops -----------------------------------------------------------------------

    cdef void emit(self, int kind, int reason, uint32_t client_id, const void *addr,
                   socklen_t alen, const uint8_t *packet, Py_ssize_t n) noexcept nogil:
        cdef uint8_t buf[EV_HEADER + ADDR_MAX + 2048]
        cdef uint8_t *big = NULL
        cdef uint8_t *out = buf
        cdef Py_ssize_t total
        if alen > ADDR_MAX:
            alen = 0
        total = EV_HEADER + alen + n
        if total > <Py_ssize_t>sizeof(buf):
            big = <uint8_t *>malloc(total)
            if big == NULL:
                self.events_lost += 1
                return
            out = big
        out[0], out[1] = kind, reason
        put16(out + 2, client_id)
        out[4] = <uint8_t>alen
        out[5] = out[6] = out[7] = 0
        if alen:
            memcpy(out + EV_HEADER, addr, alen)
        if n:
            memcpy(out + EV_HEADER + alen, packet, n)
        if send(self.event_fd, out, total, MSG_DONTWAIT) < 0:
            self.events_lost += 1
        free(big)

    cdef int take(self, double *tokens, double *refilled, double rate, double now) noexcept nogil:
        if refilled[0] == 0:
            refilled[0] = now
            tokens[0] = rate
        tokens[0] += (now - refilled[0]) * rate
        if tokens[0] > rate:
            tokens[0] = rate
        refilled[0] = now
        if tokens[0] < 1:
            return 0
        tokens[0] -= 1
        return 1

    cdef void drop(self, Peer *p, int reason, const void *addr, socklen_t alen,
                   const uint8_t *packet, Py_ssize_t n, double mono) noexcept nogil:
        self.drops[reason] += 1
        if p != NULL:
            p.drops[reason] += 1
        # A sample goes up for the log (and, for AUTH/STALE, the clock-skew diagnosis).
        if self.take(&self.sample_tokens, &self.sample_refilled, 20.0, mono):
            if reason != D_AUTH and reason != D_STALE and reason != D_SPOOFED_SOURCE:
                n = 0
            self.emit(EV_DROP, reason, p.id if p != NULL else 0, addr, alen, packet, n)

    cdef int wait(self, int fd, short events) noexcept nogil:
        """Wait until fd is ready or the stop pipe is readable; 0 means stop."""
        cdef pollfd fds[2]
        fds[0].fd, fds[0].events, fds[0].revents = fd, events, 0
        fds[1].fd, fds[1].events, fds[1].revents = self.stop_r, POLLIN, 0
        while poll(fds, 2, -1) < 0:
            if errno != EINTR:
                return 0
        return 0 if fds[1].revents else 1

    # -- TUN -> UDP ----------------------------------------------------------------------

    cdef Peer *route(self, const uint8_t *pkt, Py_ssize_t r) noexcept nogil:
        """The peer a packet read from the TUN goes to, or NULL (counted as a drop)."""
        cdef uint8_t addr[16]
        cdef int version, idx
        cdef Peer *p
        if self.server:
            version = inner_destination(pkt, r, addr)
            idx = routes_lookup(&self.routes, version, addr) if version else -1
        else:
            idx = 0 if self.npeers else -1
        p = self.peers[idx] if idx >= 0 else NULL
        if p == NULL or p.endpoint_len == 0:
            self.drops[D_NO_ROUTE] += 1
            return NULL
        if self.hold_tx:
            self.drops[D_UNSYNCED] += 1
            p.drops[D_UNSYNCED] += 1
            return NULL
        return p

    cdef int seal_into(self, Peer *p, uint8_t *o, const uint8_t *body, Py_ssize_t n,
                       int64_t ts) noexcept nogil:
        """Header, tag and ciphertext of a DATA packet at o; body may be o + OVERHEAD."""
        return seal_packet(p.seal, KIND_DATA | (FROM_SERVER if self.server else 0), p.id,
                           self.server_id, <uint64_t>ts, vc_next_counter(&p.counter), body,
                           <int>n, o)

    cdef uint8_t *tx_open(self, Tx *tx, Peer *p) noexcept nogil:
        """The buffer of the next message of the batch, addressed to p (flushes if full)."""
        cdef int i
        cdef size_t at = 0
        if tx.count == BATCH or tx.used > TX_BYTES:
            self.tx_flush(tx)
        i = tx.count
        if i:   # right after the last message (which can no longer grow), 16-byte aligned
            at = <size_t>(<uint8_t *>tx.iovs[i - 1].iov_base - tx.bufs) + tx.iovs[i - 1].iov_len
            at = (at + 15) & ~(<size_t>15)
        pthread_mutex_lock(&p.lock)
        memcpy(&tx.dests[i], &p.endpoint, p.endpoint_len)
        tx.msgs[i].msg_hdr.msg_namelen = p.endpoint_len
        pthread_mutex_unlock(&p.lock)
        tx.msgs[i].msg_hdr.msg_name = &tx.dests[i]
        tx.msgs[i].msg_hdr.msg_iov = &tx.iovs[i]
        tx.msgs[i].msg_hdr.msg_iovlen = 1
        tx.msgs[i].msg_hdr.msg_control = NULL
        tx.msgs[i].msg_hdr.msg_controllen = 0
        tx.iovs[i].iov_base = tx.bufs + at
        tx.owners[i] = p
        return tx.bufs + at

    cdef void tx_close(self, Tx *tx, size_t length, int nseg, int segsize,
                       double mono) noexcept nogil:
        """Commit the message tx_open started: nseg datagrams of segsize bytes (last shorter)."""
        cdef int i = tx.count
        tx.iovs[i].iov_len = 0
        tx.nseg[i], tx.segsize[i] = 0, segsize
        tx.count += 1
        self.tx_grow(tx, length, nseg, mono)

    cdef void tx_grow(self, Tx *tx, size_t length, int nseg, double mono) noexcept nogil:
        """Add nseg datagrams (length bytes, already in place) to the batch's last message."""
        cdef int i = tx.count - 1
        cdef Peer *p = tx.owners[i]
        cdef cmsghdr *c
        cdef uint16_t gso = tx.segsize[i]
        if tx.nseg[i] <= 1 and tx.nseg[i] + nseg > 1:
            self.gso_sends += 1
            tx.msgs[i].msg_hdr.msg_control = &tx.ctrl[i * 4]
            tx.msgs[i].msg_hdr.msg_controllen = CMSG_SPACE(sizeof(uint16_t))
            c = CMSG_FIRSTHDR(&tx.msgs[i].msg_hdr)
            c.cmsg_level, c.cmsg_type = SOL_UDP, UDP_SEGMENT
            c.cmsg_len = CMSG_LEN(sizeof(uint16_t))
            memcpy(CMSG_DATA(c), &gso, sizeof(uint16_t))
        tx.iovs[i].iov_len += length
        tx.nseg[i] += nseg
        tx.used += length
        p.tx_packets += nseg
        p.tx_bytes += length
        if p.first_unanswered == 0 or p.first_unanswered < p.last_rx:
            p.first_unanswered = mono

    cdef uint8_t *tx_tail(self, Tx *tx, Peer *p, size_t n) noexcept nogil:
        """Where one more datagram of n bytes for p can join the batch's last message as a
        UDP GSO segment (small packets of one flow are all the same size), or NULL: the
        message must be p's, its datagrams all n bytes so far (a shorter one ends it),
        and stay within the kernel's GSO limits."""
        cdef int i = tx.count - 1
        if not self.offload & OFF_GSO or i < 0 or tx.owners[i] != p:
            return NULL
        if n > tx.segsize[i] or tx.iovs[i].iov_len != <size_t>tx.nseg[i] * tx.segsize[i]:
            return NULL
        if tx.nseg[i] >= GSO_MAX_SEGS or tx.iovs[i].iov_len + n > GSO_MAX_BYTES:
            return NULL
        return <uint8_t *>tx.iovs[i].iov_base + tx.iovs[i].iov_len

    cdef int send_one(self, const void *buf, size_t n, const msghdr *m) noexcept nogil:
        while sendto(self.sock_fd, buf, n, 0, m.msg_name, m.msg_namelen) < 0:
            if errno == EAGAIN:
                if not self.wait(self.sock_fd, POLLOUT):
                    return 0
            elif errno != EINTR:
                return 0
        return 1

    cdef void tx_flush(self, Tx *tx) noexcept nogil:
        cdef int k = 0, sent, j
        cdef size_t off, n
        cdef uint8_t *base
        while k < tx.count:
            sent = sendmmsg(self.sock_fd, &tx.msgs[k], tx.count - k, 0)
            if sent > 0:
                k += sent
            elif errno == EAGAIN:
                if not self.wait(self.sock_fd, POLLOUT):
                    break
            elif errno == EINTR:
                pass
            elif tx.nseg[k] > 1 and (errno == EIO or errno == EINVAL):
                # The kernel or the outgoing device refused UDP GSO (wireguard-go meets
                # EIO too): send these one by one and stop using it.
                self.offload &= ~OFF_GSO
                base = <uint8_t *>tx.iovs[k].iov_base
                off = 0
                for j in range(tx.nseg[k]):
                    n = min(<size_t>tx.segsize[k], tx.iovs[k].iov_len - off)
                    if not self.send_one(base + off, n, &tx.msgs[k].msg_hdr):
                        tx.owners[k].tx_packets -= 1
                        tx.owners[k].tx_bytes -= n
                    off += n
                k += 1
            else:
                tx.owners[k].tx_packets -= tx.nseg[k]   # not sent after all (unreachable...)
                tx.owners[k].tx_bytes -= tx.iovs[k].iov_len
                k += 1
        tx.count = 0
        tx.used = 0

    cdef void seal_tso(self, Tx *tx, Peer *p, const uint8_t *pkt, Py_ssize_t r,
                       const VnetHdr *vh, int64_t ts, double mono) noexcept nogil:
        """Cut a TCP super-packet from the TUN into MSS-size segments, or a UDP one (an
        application's UDP GSO send, with OFF_USO) into its datagrams, with headers and
        checksums as the kernel's own segmentation makes them; seal each in place, and
        queue them as few UDP GSO messages as the size limits allow."""
        cdef int version = pkt[0] >> 4, l3 = 0, hl = 0, per, k = 0, i, nseg, ok
        cdef int udp = (vh.gso_type & 0x7F) == VNET_GSO_UDP_L4 and self.offload & OFF_USO
        cdef Py_ssize_t mss = vh.gso_size, payload, chunk, n, full
        cdef size_t off = 0
        cdef uint32_t seq0
        cdef uint16_t id0
        cdef uint8_t *o = NULL
        cdef uint8_t *seg
        cdef uint8_t *tcp
        if version == 4 and r >= 20 and (udp or (vh.gso_type & 0x7F) == VNET_GSO_TCPV4):
            l3 = (pkt[0] & 15) * 4
            ok = pkt[9] == (17 if udp else 6)
        elif version == 6 and r >= 40 and (udp or (vh.gso_type & 0x7F) == VNET_GSO_TCPV6):
            l3 = 40
            ok = pkt[6] == (17 if udp else 6)   # no extension headers: none sent here
        else:
            ok = 0
        if ok:
            ok = l3 >= 20 and r >= l3 + (8 if udp else 20)
        if ok:
            hl = l3 + (8 if udp else (pkt[l3 + 12] >> 4) * 4)
            full = OVERHEAD + hl + mss
            ok = hl >= l3 + (8 if udp else 20) and hl <= r and mss >= 1 and full <= MAX_DATAGRAM
        if not ok:
            self.drops[D_BAD_PACKET] += 1
            p.drops[D_BAD_PACKET] += 1
            return
        payload = r - hl
        nseg = <int>((payload + mss - 1) // mss) if payload else 1
        per = 1
        if self.offload & OFF_GSO:
            per = <int>max(1, min(GSO_MAX_SEGS, GSO_MAX_BYTES // full))
        seq0 = (pkt[l3 + 4] << 24) | (pkt[l3 + 5] << 16) | (pkt[l3 + 6] << 8) | pkt[l3 + 7]
        id0 = (pkt[4] << 8) | pkt[5]
        for i in range(nseg):
            if o == NULL or k == per:
                if k:
                    self.tx_close(tx, off, k, full, mono)
                o = self.tx_open(tx, p)
                k = 0
                off = 0
            chunk = min(mss, payload - i * mss)
            n = hl + chunk
            seg = o + off + OVERHEAD
            memcpy(seg, pkt, hl)
            memcpy(seg + hl, pkt + hl + i * mss, chunk)
            if version == 4:
                put16(seg + 2, <uint32_t>n)
                put16(seg + 4, <uint16_t>(id0 + i))
                ip4_csum(seg, l3)
            else:
                put16(seg + 4, <uint32_t>(n - 40))
            tcp = seg + l3
            if udp:
                put16(tcp + 4, <uint32_t>(n - l3))
                udp_csum(seg, version, l3, n)
            else:
                put32(tcp + 4, seq0 + <uint32_t>(i * mss))
                if i < nseg - 1:
                    tcp[13] &= ~(0x01 | 0x08)   # FIN and PSH only on the last segment
                if i > 0:
                    tcp[13] &= ~0x80            # CWR only on the first
                tcp_csum(seg, version, l3, n)
            if not self.seal_into(p, o + off, seg, n, ts):
                break
            off += OVERHEAD + n
            k += 1
        if k:
            self.tx_close(tx, off, k, full, mono)
        self.tso_packets += 1
        self.tso_segments += nseg

    cdef void tun_loop(self) noexcept nogil:
        cdef uint8_t *inbuf = <uint8_t *>malloc(SLOT + HEADROOM)
        cdef Tx *tx = <Tx *>calloc(1, sizeof(Tx))
        cdef VnetHdr vh
        cdef Py_ssize_t r
        cdef int reads
        cdef Peer *p
        cdef uint8_t *o
        cdef int64_t ts
        cdef double mono
        cdef const uint8_t *pkt
        if tx != NULL:
            tx.bufs = <uint8_t *>malloc(TX_CAP)
        if inbuf == NULL or tx == NULL or tx.bufs == NULL:
            free(inbuf)
            if tx != NULL:
                free(tx.bufs)
            free(tx)
            return
        while self.wait(self.tun_fd, POLLIN):
            mono = clock_now(CLOCK_MONOTONIC)
            ts = <int64_t>(clock_now(CLOCK_REALTIME) + self.clock_offset)
            reads = 0
            while reads < BATCH:
                r = read(self.tun_fd, inbuf, SLOT + HEADROOM)
                if r < 0:
                    break
                reads += 1
                r -= self.frame_prefix
                pkt = inbuf + self.frame_prefix
                if r < 1:
                    continue
                if self.frame_prefix == 4 and get32(inbuf) != (2 if pkt[0] >> 4 == 4 else 28):
                    self.drops[D_BAD_PACKET] += 1   # FreeBSD: the address family must agree
                    continue
                p = self.route(pkt, r)
                if p == NULL:
                    continue
                if self.offload & OFF_VNET:
                    memcpy(&vh, inbuf, VNET_LEN)
                    if vh.gso_type != 0:
                        self.seal_tso(tx, p, pkt, r, &vh, ts, mono)
                        continue
                    if vh.flags & VNET_F_NEEDS_CSUM and not finish_csum(inbuf + VNET_LEN, r, &vh):
                        self.drops[D_BAD_PACKET] += 1
                        p.drops[D_BAD_PACKET] += 1
                        continue
                if self.mtu and r > self.mtu:
                    # As a router does: "fragmentation needed"/"packet too big" to the
                    # sender, not a silent black hole (the TUN's own MTU was raised).
                    if self.take(&self.big_tokens, &self.big_refilled, 100.0, mono):
                        self.emit(EV_TOO_BIG, 0, p.id, NULL, 0, pkt, min(r, TOO_BIG_SAMPLE))
                    continue
                if r > MAX_DATAGRAM - OVERHEAD:
                    continue
                o = self.tx_tail(tx, p, OVERHEAD + r)
                if o != NULL:
                    if self.seal_into(p, o, pkt, r, ts):
                        self.tx_grow(tx, OVERHEAD + r, 1, mono)
                    continue
                o = self.tx_open(tx, p)
                if self.seal_into(p, o, pkt, r, ts):
                    self.tx_close(tx, OVERHEAD + r, 1, OVERHEAD + r, mono)
            self.tx_flush(tx)
        free(inbuf)
        free(tx.bufs)
        free(tx)

    # -- UDP -> TUN ----------------------------------------------------------------------

    cdef void on_datagram(self, uint8_t *pkt, Py_ssize_t n, const sockaddr_storage *src,
                          socklen_t alen, uint8_t *out, Coal *co, int64_t now_s,
                          double mono) noexcept nogil:
        """One received datagram: drop it with a reason, hand it up, or deliver it to the
        TUN (through `co` when the TUN has a virtio header). `out` has HEADROOM bytes in
        front of where the plaintext goes."""
        cdef uint8_t addr[16]
        cdef int idx, version, reason, moved
        cdef Py_ssize_t body
        cdef uint8_t ptype
        cdef uint32_t cid, counter
        cdef int64_t ts
        cdef Peer *p
        cdef uint8_t *plain = out + HEADROOM
        if n < OVERHEAD + 1 or n > MAX_DATAGRAM:
            self.drop(NULL, D_MALFORMED, src, alen, pkt, 0, mono)
            return
        ptype = pkt[0]
        cid = (pkt[1] << 8) | pkt[2]
        if self.server:
            idx = self.by_id[cid] - 1
        else:
            idx = 0 if self.npeers and self.peers[0] != NULL and self.peers[0].id == cid else -1
        p = self.peers[idx] if idx >= 0 else NULL
        if ((ptype & FROM_SERVER) != (0 if self.server else FROM_SERVER)
                or (ptype & 0x7F) < KIND_DATA or (ptype & 0x7F) > KIND_TIME_RESPONSE):
            self.drop(p, D_BAD_TYPE, src, alen, pkt, 0, mono)
            return
        if p == NULL:
            self.drop(NULL, D_UNKNOWN_CLIENT, src, alen, pkt, 0, mono)
            return
        # Not from the client's endpoint (or it has none: endpoint_len 0 never equals alen).
        moved = self.server and (alen != p.endpoint_len
                                 or memcmp(src, &p.endpoint, alen) != 0)
        if moved and (ptype == KIND_DATA or ptype == KIND_KEEPALIVE):   # pinning.PINNED_KINDS
            vc_add32(&p.foreign, 1)
        if (ptype & 0x7F) != KIND_DATA:
            # Keepalives and time sync: the sans-IO core decides (budgeted). Per client,
            # so forgeries naming one client cannot starve the others; what is over
            # budget is counted like any drop.
            if self.take(&p.ctl_tokens, &p.ctl_refilled, CTL_RATE, mono):
                self.emit(EV_PACKET, 0, cid, src, alen, pkt, n)
            else:
                self.drop(p, D_RATE_LIMITED, src, alen, pkt, 0, mono)
            return
        ts = full_timestamp(pkt[3], now_s)
        if ts < 0:
            self.drop(p, D_AUTH, src, alen, pkt, n, mono)
            return
        counter = (pkt[4] << 24) | (pkt[5] << 16) | (pkt[6] << 8) | pkt[7]
        reason = window_check(&p.window, ts, counter)
        if reason != D_NONE:
            self.drop(p, reason, src, alen, pkt, n, mono)
            return
        if moved and not self.take(&p.roam_tokens, &p.roam_refilled, ROAM_RATE, mono):
            # Opening is what a forgery costs us (a whole AES-SIV pass): from anywhere but
            # the client's current address (or while it has none) only ROAM_RATE a second
            # are tried, so a flood naming a client cannot eat the CPU the real traffic
            # needs. A roaming or (re)connecting client gets through with its first
            # packets; then its address is the endpoint.
            self.drop(p, D_RATE_LIMITED, src, alen, pkt, 0, mono)
            return
        body = n - OVERHEAD
        if not open_packet(p.open, self.server_id, <uint64_t>ts, pkt, <int>body, plain):
            self.drop(p, D_AUTH, src, alen, pkt, n, mono)
            return
        if self.server:
            version = inner_source(plain, body, addr)
            if version == 0:
                window_accept(&p.window, ts, counter)
                self.drop(p, D_BAD_PACKET, src, alen, pkt, 0, mono)
                return
            if routes_lookup(&self.routes, version, addr) != idx:
                window_accept(&p.window, ts, counter)
                self.drop(p, D_SPOOFED_SOURCE, src, alen, plain, min(body, 40), mono)
                return
        window_accept(&p.window, ts, counter)
        p.rx_packets += 1
        p.rx_bytes += n
        p.last_rx = mono
        p.first_unanswered = 0
        if moved:
            pthread_mutex_lock(&p.lock)
            memcpy(&p.endpoint, src, alen)
            p.endpoint_len = alen
            pthread_mutex_unlock(&p.lock)
            self.emit(EV_ENDPOINT, 0, cid, src, alen, NULL, 0)
        if co != NULL:
            self.deliver(co, plain, body)
            return
        if self.frame_prefix:
            put32(plain - 4, 2 if (plain[0] >> 4) == 4 else 28)   # FreeBSD: AF_INET / AF_INET6
        self.write_tun(plain - self.frame_prefix, body + self.frame_prefix)

    cdef int write_tun(self, const uint8_t *frame, Py_ssize_t n) noexcept nogil:
        while write(self.tun_fd, frame, n) < 0:
            if errno == EAGAIN:
                if not self.wait(self.tun_fd, POLLOUT):
                    return 0
            elif errno != EINTR:
                return 0
        self.tun_writes += 1
        return 1

    cdef void deliver(self, Coal *co, uint8_t *plain, Py_ssize_t body) noexcept nogil:
        """With a virtio header: add the packet to the pending super-packet, or flush that
        and start a new one, or write the packet as it is."""
        cdef int l3 = 0, hl = 0
        cdef Py_ssize_t payload
        cdef uint8_t *tcp
        cdef int ok = not self.no_coalesce and coalescable(plain, body, &l3, &hl)
        if ok:
            payload = body - hl
            tcp = plain + l3
            if co.len and same_flow(co, plain, l3, hl) and \
                    payload <= co.mss and co.len + payload <= 65535:
                memcpy(co.buf + HEADROOM + co.len, plain + hl, payload)
                co.len += payload
                co.nseg += 1
                co.next_seq += <uint32_t>payload
                if tcp[13] & 0x08 or payload < co.mss:   # PSH, or a short last segment
                    co.buf[HEADROOM + co.l3 + 13] |= tcp[13] & 0x08
                    self.flush_coal(co)
                return
            self.flush_coal(co)
            if not tcp[13] & 0x08:
                memcpy(co.buf + HEADROOM, plain, body)
                co.len, co.version, co.l3, co.hl, co.nseg = body, plain[0] >> 4, l3, hl, 1
                co.mss = payload
                co.next_seq = ((tcp[4] << 24) | (tcp[5] << 16) | (tcp[6] << 8) | tcp[7]) + \
                              <uint32_t>payload
                return
        else:
            self.flush_coal(co)
        memset(plain - VNET_LEN, 0, VNET_LEN)   # no GSO, checksums complete
        self.write_tun(plain - VNET_LEN, body + VNET_LEN)

    cdef void flush_coal(self, Coal *co) noexcept nogil:
        cdef uint8_t *p = co.buf + HEADROOM
        cdef VnetHdr vh
        cdef uint16_t folded
        if co.len == 0:
            return
        memset(&vh, 0, sizeof(VnetHdr))
        if co.nseg > 1:
            # Lengths for the whole; the TCP checksum field holds the pseudo-header sum
            # (not inverted), as for any packet whose checksum is left to the device.
            if co.version == 4:
                put16(p + 2, <uint32_t>co.len)
                ip4_csum(p, co.l3)
            else:
                put16(p + 4, <uint32_t>(co.len - 40))
            folded = csum_fold(pseudo_sum(p, co.version, co.len - co.l3, 6))
            memcpy(p + co.l3 + 16, &folded, 2)
            vh.flags = VNET_F_NEEDS_CSUM
            vh.hdr_len = <uint16_t>co.hl
            vh.gso_size = <uint16_t>co.mss
            vh.csum_start = <uint16_t>co.l3
            vh.gso_type = VNET_GSO_TCPV4 if co.version == 4 else VNET_GSO_TCPV6
            vh.csum_offset = 16
            self.coalesced_packets += 1
            self.coalesced_segments += co.nseg
        memcpy(p - VNET_LEN, &vh, VNET_LEN)
        if not self.write_tun(p - VNET_LEN, co.len + VNET_LEN) and co.nseg > 1 \
                and errno == EINVAL:
            self.no_coalesce = True   # this kernel will not take them (TCP resends)
        co.len = 0

    cdef void udp_loop(self) noexcept nogil:
        # With UDP GRO a slot may fill up to 64 KB: a call takes only RX_GRO_MSGS
        # messages (each still dozens of datagrams), so the memory touched stays small.
        # But an underlay that does not coalesce hands over one datagram per message,
        # two per call (-45% TCP through a tunnel over a path that segments on the wire).
        # So after GRO_QUIET full batches without one coalesced message, GRO is turned
        # off on the socket (nothing 64 KB can arrive then) and calls take BATCH
        # datagrams; a second later GRO is tried again, in case the path changed.
        cdef int nmsg = RX_GRO_MSGS if self.offload & OFF_GRO else BATCH
        cdef int saw_gro, quiet = 0, gro_on = 1, gro_off = 0
        cdef double wide_since = 0
        cdef uint8_t *inbufs = <uint8_t *>mmap(NULL, <size_t>BATCH * SLOT,
                                               PROT_READ | PROT_WRITE,
                                               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        cdef uint8_t *out = <uint8_t *>malloc(SLOT + HEADROOM)
        cdef Coal coal
        cdef Coal *co = NULL
        cdef mmsghdr msgs[BATCH]
        cdef iovec iovs[BATCH]
        cdef sockaddr_storage srcs[BATCH]
        cdef uint64_t ctrl[BATCH * 4]
        cdef int got, i, gso, rounds, full
        cdef uint64_t written
        cdef Py_ssize_t n, off, seg
        cdef uint8_t *base
        cdef int64_t now_s
        cdef double mono
        cdef cmsghdr *c
        memset(&coal, 0, sizeof(Coal))
        if self.offload & OFF_VNET:
            coal.buf = <uint8_t *>malloc(HEADROOM + 65535)
            co = &coal
        if inbufs == MAP_FAILED:
            inbufs = NULL
        if inbufs == NULL or out == NULL or (co != NULL and coal.buf == NULL):
            if inbufs != NULL:
                munmap(inbufs, <size_t>BATCH * SLOT)
            free(out)
            free(coal.buf)
            return
        while self.wait(self.sock_fd, POLLIN):
            written = self.tun_writes   # others had the core while we waited
            # While full batches keep coming, read again without polling first: under
            # load (a flood) poll() per batch was a fifth of the loop's time. The stop
            # pipe is still looked at every RX_ROUNDS batches.
            for rounds in range(RX_ROUNDS):
                for i in range(nmsg):
                    iovs[i].iov_base = inbufs + <size_t>i * SLOT
                    iovs[i].iov_len = SLOT
                    memset(&msgs[i].msg_hdr, 0, sizeof(msghdr))
                    msgs[i].msg_hdr.msg_name = &srcs[i]
                    msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_storage)
                    msgs[i].msg_hdr.msg_iov = &iovs[i]
                    msgs[i].msg_hdr.msg_iovlen = 1
                    if self.offload & OFF_GRO:
                        msgs[i].msg_hdr.msg_control = &ctrl[i * 4]
                        msgs[i].msg_hdr.msg_controllen = 4 * sizeof(uint64_t)
                got = recvmmsg(self.sock_fd, msgs, nmsg, MSG_DONTWAIT, NULL)
                if got <= 0:
                    break
                mono = clock_now(CLOCK_MONOTONIC)
                now_s = <int64_t>(clock_now(CLOCK_REALTIME) + self.clock_offset)
                saw_gro = 0
                for i in range(got):
                    base = inbufs + <size_t>i * SLOT
                    n = msgs[i].msg_len
                    if msgs[i].msg_hdr.msg_flags & MSG_TRUNC:
                        self.drop(NULL, D_MALFORMED, &srcs[i], msgs[i].msg_hdr.msg_namelen,
                                  base, 0, mono)
                        continue
                    # A GRO message: datagrams of `gso` bytes from one sender, the last shorter.
                    seg = n
                    if self.offload & OFF_GRO and msgs[i].msg_hdr.msg_controllen:
                        c = CMSG_FIRSTHDR(&msgs[i].msg_hdr)
                        while c != NULL:
                            if c.cmsg_level == SOL_UDP and c.cmsg_type == UDP_GRO:
                                memcpy(&gso, CMSG_DATA(c), sizeof(int))
                                if gso > 0:
                                    seg = gso
                            c = CMSG_NXTHDR(&msgs[i].msg_hdr, c)
                    if seg < n:
                        saw_gro = 1
                        self.gro_messages += 1
                        self.gro_datagrams += (n + seg - 1) // seg
                    off = 0
                    while True:
                        self.on_datagram(base + off, min(seg, n - off), &srcs[i],
                                         msgs[i].msg_hdr.msg_namelen, out, co, now_s, mono)
                        off += seg
                        if off >= n:
                            break
                if co != NULL:
                    self.flush_coal(co)   # nothing waits past its receive batch
                for i in range(RX_GRO_MSGS, got):
                    # Only if GRO was on a moment ago (or with a jumbo datagram): give
                    # the pages back, the memory touched stays what it was.
                    if msgs[i].msg_len > RX_KEEP:
                        madvise(inbufs + <size_t>i * SLOT, SLOT, MADV_DONTNEED)
                full = got == nmsg
                if self.offload & OFF_GRO:
                    if nmsg == BATCH:
                        if mono - wide_since > GRO_RETRY:
                            setsockopt(self.sock_fd, SOL_UDP, UDP_GRO, &gro_on, sizeof(int))
                            nmsg, quiet = RX_GRO_MSGS, 0
                    elif saw_gro:
                        quiet = 0
                    elif full:
                        quiet += 1
                        if quiet >= GRO_QUIET and setsockopt(
                                self.sock_fd, SOL_UDP, UDP_GRO, &gro_off, sizeof(int)) == 0:
                            nmsg, wide_since = BATCH, mono
                            self.gro_pauses += 1
                if not full:
                    break
                # More is waiting, but once we have put YIELD_WRITES packets into the TUN
                # without a pause, let a local reader of them (sharing this core) drain
                # its socket: the TUN write delivers into it synchronously, and left to
                # run we fill its receive buffer faster than it empties (iperf3, 64-byte
                # UDP: a fifth of the packets were dropped there). Counted in packets
                # written, not read: a flood, dropped here, gets no core handed over.
                if self.tun_writes - written >= YIELD_WRITES:
                    sched_yield()
                    written = self.tun_writes
        munmap(inbufs, <size_t>BATCH * SLOT)
        free(out)
        free(coal.buf)


# ---- benchmark entry point -------------------------------------------------------------------

def bench_siv(SivContext ctx, str op, bytes data, uint64_t timestamp, long count,
              int ptype=KIND_DATA):
    """Time `count` seals or opens the way the Engine's loops run them: (elapsed ns, last output).

    This is the per-packet cost the daemon's data path pays, without a Python call per
    packet (bench/crypto_bench.py, row "native (engine loop)"). "seal": `data` is the body;
    each packet's header is written as Engine.seal_into writes it (counter from
    vc_next_counter, starting at 0) and its AD built from that header, then siv_seal into
    a preallocated buffer; returns the last packet (counter count - 1). "open": `data` is
    a packet; each time its AD is rebuilt from the header as Engine.on_datagram does, then
    siv_open into a preallocated buffer; returns the plaintext. The loop runs with the GIL
    released; a failed seal or open raises (return codes are checked as in the Engine).
    """
    cdef bint seal
    if op == "seal":
        seal = True
    elif op == "open":
        seal = False
    else:
        raise ValueError("op must be 'seal' or 'open'")
    if count < 1 or ptype < 0 or ptype > 255:
        raise ValueError("count must be >= 1 and ptype fit one byte")
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t body = n if seal else n - OVERHEAD
    if body < 1 or body > MAX_DATAGRAM - OVERHEAD:
        raise ValueError("bad body or packet size")
    if not seal and PyBytes_AS_STRING(data)[3] != <char>(timestamp & 0xFF):
        raise ValueError("the packet's timestamp byte does not match `timestamp`")
    cdef const uint8_t *src = <const uint8_t *>PyBytes_AS_STRING(data)
    cdef Py_ssize_t outlen = OVERHEAD + body if seal else body
    cdef uint8_t *o = <uint8_t *>malloc(outlen)
    if o == NULL:
        raise MemoryError()
    cdef uint32_t counter = 0
    cdef uint32_t client_id = ctx.client_id, server_id = ctx.server_id
    cdef Siv *s = &ctx.siv
    cdef long i
    cdef int ok = 1
    cdef timespec t0, t1
    try:
        with nogil:
            clock_gettime(CLOCK_MONOTONIC, &t0)
            if seal:
                for i in range(count):
                    # what Engine.seal_into does, counter included
                    if not seal_packet(s, <uint8_t>ptype, client_id, server_id, timestamp,
                                       vc_next_counter(&counter), src, <int>body, o):
                        ok = 0
                        break
            else:
                for i in range(count):
                    # what Engine.on_datagram does
                    if not open_packet(s, server_id, timestamp, src, <int>body, o):
                        ok = 0
                        break
            clock_gettime(CLOCK_MONOTONIC, &t1)
        if not ok:
            raise RuntimeError("AES-SIV %s failed" % op)
        elapsed = (t1.tv_sec - t0.tv_sec) * 1000000000 + (t1.tv_nsec - t0.tv_nsec)
        return elapsed, PyBytes_FromStringAndSize(<char *>o, outlen)
    finally:
        free(o)
