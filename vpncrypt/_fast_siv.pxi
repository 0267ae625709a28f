# _fast_siv.pxi: AES-256-SIV (RFC 5297) composed from CMAC and CTR over EVP, packet
# sealing and opening, and the Python-facing SivContext.
# Included by _fast.pyx, which stays the one extension module (routers pay per .so).

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
