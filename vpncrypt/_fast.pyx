# cython: language_level=3
"""Native core: AES-256-SIV packet sealing and opening through OpenSSL's EVP API.

Produces byte-identical packets to the reference path in protocol/aead.py (pinned
by tests/vectors/). The crypto runs with the GIL released. OpenSSL 3.0 facts this
code respects: associated data is fed before the plaintext, the plaintext goes in
exactly one update call, an empty plaintext cannot be sealed, and a context cannot
be re-initialised without its key, so each packet works on a copy of a keyed
template context.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport (PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize,
                            PyBytes_GET_SIZE)
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

cdef extern from "openssl/evp.h" nogil:
    ctypedef struct EVP_CIPHER_CTX:
        pass
    ctypedef struct EVP_CIPHER:
        pass
    ctypedef struct ENGINE:
        pass
    EVP_CIPHER_CTX *EVP_CIPHER_CTX_new()
    void EVP_CIPHER_CTX_free(EVP_CIPHER_CTX *ctx)
    int EVP_CIPHER_CTX_copy(EVP_CIPHER_CTX *out, const EVP_CIPHER_CTX *inp)
    int EVP_CIPHER_CTX_ctrl(EVP_CIPHER_CTX *ctx, int type, int arg, void *ptr)
    ctypedef struct OSSL_LIB_CTX:
        pass
    void EVP_CIPHER_free(EVP_CIPHER *cipher)
    EVP_CIPHER *EVP_CIPHER_fetch(OSSL_LIB_CTX *ctx, const char *algorithm,
                                 const char *properties)
    int EVP_EncryptInit_ex(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *t, ENGINE *impl,
                           const unsigned char *key, const unsigned char *iv)
    int EVP_DecryptInit_ex(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *t, ENGINE *impl,
                           const unsigned char *key, const unsigned char *iv)
    int EVP_EncryptUpdate(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl,
                          const unsigned char *inp, int inl)
    int EVP_DecryptUpdate(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl,
                          const unsigned char *inp, int inl)
    int EVP_EncryptFinal_ex(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl)
    int EVP_DecryptFinal_ex(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl)
    int EVP_CTRL_AEAD_GET_TAG
    int EVP_CTRL_AEAD_SET_TAG

cdef extern from "openssl/crypto.h" nogil:
    const char *OpenSSL_version(int t)
    int OPENSSL_VERSION

DEF HEADER_LEN = 8
DEF TAG_LEN = 16
DEF OVERHEAD = 24
DEF AD_LEN = 20
DEF VERSION = 1
DEF MAX_DATAGRAM = 65507

PATH = "native"

# AES-SIV exists in OpenSSL 3 only as a provider algorithm (no AES_256_SIV).
cdef const EVP_CIPHER *AES_256_SIV = EVP_CIPHER_fetch(NULL, b"AES-256-SIV", NULL)
if AES_256_SIV == NULL:
    raise ImportError("OpenSSL libcrypto has no AES-256-SIV (need OpenSSL >= 3.0)")


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


cdef int siv_seal(EVP_CIPHER_CTX *work, const EVP_CIPHER_CTX *tmpl, const uint8_t **ads,
                  const int *adl, int nad, const uint8_t *body, int n, uint8_t *tag_out,
                  uint8_t *ct_out) noexcept nogil:
    cdef int outl = 0, i
    if EVP_CIPHER_CTX_copy(work, tmpl) != 1:
        return 0
    for i in range(nad):  # each call is one S2V component; all before the plaintext
        if EVP_EncryptUpdate(work, NULL, &outl, ads[i], adl[i]) != 1:
            return 0
    if EVP_EncryptUpdate(work, ct_out, &outl, body, n) != 1 or outl != n:
        return 0
    if EVP_EncryptFinal_ex(work, ct_out + n, &outl) != 1:
        return 0
    if EVP_CIPHER_CTX_ctrl(work, EVP_CTRL_AEAD_GET_TAG, TAG_LEN, tag_out) != 1:
        return 0
    return 1


cdef int siv_open(EVP_CIPHER_CTX *work, const EVP_CIPHER_CTX *tmpl, const uint8_t **ads,
                  const int *adl, int nad, const uint8_t *tag, const uint8_t *ct, int n,
                  uint8_t *out) noexcept nogil:
    cdef int outl = 0, i
    if EVP_CIPHER_CTX_copy(work, tmpl) != 1:
        return 0
    if EVP_CIPHER_CTX_ctrl(work, EVP_CTRL_AEAD_SET_TAG, TAG_LEN, <void *>tag) != 1:
        return 0
    for i in range(nad):
        if EVP_DecryptUpdate(work, NULL, &outl, ads[i], adl[i]) != 1:
            return 0
    # OpenSSL compares the tag (constant time) inside this call and fails on mismatch.
    if EVP_DecryptUpdate(work, out, &outl, ct, n) != 1 or outl != n:
        return 0
    if EVP_DecryptFinal_ex(work, out + n, &outl) != 1:
        return 0
    return 1


def rfc5297(bint encrypt, bytes key, list ads, bytes data):
    """Raw AES-SIV (any key size) over the same EVP calls, for RFC 5297's test vectors.

    encrypt: returns V || C. decrypt: `data` is V || C; returns the plaintext or None.
    """
    names = {32: b"AES-128-SIV", 48: b"AES-192-SIV", 64: b"AES-256-SIV"}
    if len(key) not in names or len(ads) > 8:
        raise ValueError("bad key size or too many AD components")
    cdef EVP_CIPHER *cipher = EVP_CIPHER_fetch(NULL, names[len(key)], NULL)
    cdef EVP_CIPHER_CTX *tmpl = EVP_CIPHER_CTX_new()
    cdef EVP_CIPHER_CTX *work = EVP_CIPHER_CTX_new()
    cdef const uint8_t *adp[8]
    cdef int adl[8]
    cdef int i, ok = 0, n
    cdef const unsigned char *k = key
    cdef const uint8_t *d = data
    try:
        if cipher == NULL or tmpl == NULL or work == NULL:
            raise RuntimeError("OpenSSL AES-SIV unavailable")
        for i in range(len(ads)):
            adp[i] = <const uint8_t *>PyBytes_AS_STRING(ads[i])
            adl[i] = len(ads[i])
        if encrypt:
            if EVP_EncryptInit_ex(tmpl, cipher, NULL, k, NULL) != 1:
                raise RuntimeError("EVP_EncryptInit_ex failed")
            out = PyBytes_FromStringAndSize(NULL, TAG_LEN + len(data))
            ok = siv_seal(work, tmpl, adp, adl, len(ads), d, len(data),
                          <uint8_t *>PyBytes_AS_STRING(out),
                          <uint8_t *>PyBytes_AS_STRING(out) + TAG_LEN)
        else:
            if EVP_DecryptInit_ex(tmpl, cipher, NULL, k, NULL) != 1:
                raise RuntimeError("EVP_DecryptInit_ex failed")
            n = len(data) - TAG_LEN
            if n < 1:
                return None
            out = PyBytes_FromStringAndSize(NULL, n)
            ok = siv_open(work, tmpl, adp, adl, len(ads), d, d + TAG_LEN, n,
                          <uint8_t *>PyBytes_AS_STRING(out))
        return out if ok else None
    finally:
        EVP_CIPHER_CTX_free(tmpl)
        EVP_CIPHER_CTX_free(work)
        EVP_CIPHER_free(cipher)


cdef class SivContext:
    """AES-256-SIV for one (key, client id, server id): seal and open whole packets."""

    cdef EVP_CIPHER_CTX *enc_tmpl
    cdef EVP_CIPHER_CTX *dec_tmpl
    cdef EVP_CIPHER_CTX *work
    cdef readonly uint32_t client_id
    cdef readonly uint32_t server_id

    def __cinit__(self, bytes key, uint32_t client_id, uint32_t server_id):
        self.enc_tmpl = EVP_CIPHER_CTX_new()
        self.dec_tmpl = EVP_CIPHER_CTX_new()
        self.work = EVP_CIPHER_CTX_new()
        if self.enc_tmpl == NULL or self.dec_tmpl == NULL or self.work == NULL:
            raise MemoryError("EVP_CIPHER_CTX_new failed")

    def __init__(self, bytes key, uint32_t client_id, uint32_t server_id):
        if len(key) != 64:
            raise ValueError("AES-256-SIV key must be 64 bytes")
        if client_id > 0xFFFF:
            raise ValueError("client id must fit 16 bits")
        self.client_id = client_id
        self.server_id = server_id
        cdef const unsigned char *k = key
        if EVP_EncryptInit_ex(self.enc_tmpl, AES_256_SIV, NULL, k, NULL) != 1:
            raise RuntimeError("EVP_EncryptInit_ex(aes-256-siv) failed")
        if EVP_DecryptInit_ex(self.dec_tmpl, AES_256_SIV, NULL, k, NULL) != 1:
            raise RuntimeError("EVP_DecryptInit_ex(aes-256-siv) failed")

    def __dealloc__(self):
        EVP_CIPHER_CTX_free(self.enc_tmpl)
        EVP_CIPHER_CTX_free(self.dec_tmpl)
        EVP_CIPHER_CTX_free(self.work)

    def seal(self, int ptype, uint64_t timestamp, uint32_t counter, object body):
        """Return header | tag | ciphertext for `body` (1..65483 bytes, any buffer)."""
        cdef Py_buffer view
        cdef const uint8_t *src
        cdef Py_ssize_t n
        cdef uint8_t ad[AD_LEN]
        cdef const uint8_t *adp = ad
        cdef int adl = AD_LEN
        cdef int ok
        cdef uint8_t *p
        if ptype < 0 or ptype > 255:
            raise ValueError("packet type must fit one byte")
        # Plain bytes skip the buffer protocol: a typed memoryview argument costs more
        # per call than the crypto's own fixed overhead (see bench/crypto_bench.py).
        borrowed = PyBytes_CheckExact(body)
        if borrowed:
            src = <const uint8_t *>PyBytes_AS_STRING(body)
            n = PyBytes_GET_SIZE(body)
        else:
            PyObject_GetBuffer(body, &view, PyBUF_SIMPLE)
            src = <const uint8_t *>view.buf
            n = view.len
        try:
            if n < 1 or n > MAX_DATAGRAM - OVERHEAD:
                raise ValueError("body must be 1..%d bytes" % (MAX_DATAGRAM - OVERHEAD))
            out = PyBytes_FromStringAndSize(NULL, OVERHEAD + n)
            p = <uint8_t *>PyBytes_AS_STRING(out)
            p[0] = <uint8_t>ptype
            put16(p + 1, self.client_id)
            p[3] = <uint8_t>(timestamp & 0xFF)
            put32(p + 4, counter)
            with nogil:
                build_ad(ad, p, self.server_id, timestamp)
                ok = siv_seal(self.work, self.enc_tmpl, &adp, &adl, 1, src, <int>n,
                              p + HEADER_LEN, p + OVERHEAD)
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
        cdef uint8_t ad[AD_LEN]
        cdef const uint8_t *adp = ad
        cdef int adl = AD_LEN
        cdef int ok = 0
        cdef uint8_t *dst
        out = None
        borrowed = PyBytes_CheckExact(packet)
        if borrowed:
            src = <const uint8_t *>PyBytes_AS_STRING(packet)
            size = PyBytes_GET_SIZE(packet)
        else:
            PyObject_GetBuffer(packet, &view, PyBUF_SIMPLE)
            src = <const uint8_t *>view.buf
            size = view.len
        try:
            # The header's timestamp byte must match the rebuilt timestamp: the AD holds
            # the full value, so the whole 8-byte header is authenticated.
            if size < OVERHEAD + 1 or size > MAX_DATAGRAM or src[3] != (timestamp & 0xFF):
                return None
            out = PyBytes_FromStringAndSize(NULL, size - OVERHEAD)
            dst = <uint8_t *>PyBytes_AS_STRING(out)
            with nogil:
                build_ad(ad, src, self.server_id, timestamp)
                ok = siv_open(self.work, self.dec_tmpl, &adp, &adl, 1, src + HEADER_LEN,
                              src + OVERHEAD, <int>(size - OVERHEAD), dst)
        finally:
            if not borrowed:
                PyBuffer_Release(&view)
        return out if ok else None
