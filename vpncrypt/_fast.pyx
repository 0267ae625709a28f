# cython: language_level=3
"""Native core: AES-256-SIV packet sealing and opening through OpenSSL's EVP API, and the
native packet loop (Engine, below).

One extension module, built from this file and the `_fast_*.pxi` files it includes,
each owning one concern: _fast_siv (AES-SIV, SivContext), _fast_syscalls (C
declarations, capabilities, socket filter), _fast_constants (protocol and loop
constants), _fast_window (replay window), _fast_routes (allowed-IPs lookup),
_fast_peers (per-client state, inner addresses), _fast_offload (checksums, TCP
coalescing), _fast_batch (batch buffers), _fast_bench (benchmark entry point).

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


include "_fast_siv.pxi"


# =============================================================================================
# The native packet loop: TUN <-> UDP with the GIL released, one thread per direction.
#
# It handles DATA packets only. Everything else (keepalives, time sync), and samples of
# what it drops, go to the Python side over an event socket, where the sans-IO core in
# vpncrypt/protocol decides as for the Python loop. The rules it applies to DATA packets
# mirror protocol/wire.py and protocol/replay.py; tests/test_engine.py pins them against
# those modules.
# =============================================================================================

include "_fast_syscalls.pxi"
include "_fast_constants.pxi"
include "_fast_window.pxi"
include "_fast_routes.pxi"
include "_fast_peers.pxi"
include "_fast_offload.pxi"
include "_fast_batch.pxi"


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


include "_fast_bench.pxi"
