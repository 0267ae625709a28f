# cython: language_level=3
"""Native core: AES-256-SIV packet sealing and opening through OpenSSL's EVP API, and the
native packet loop (Engine, below).

One extension module, built from this file and the `_fast_*.pxi` files it includes,
each owning one concern: _fast_siv (AES-SIV, SivContext), _fast_syscalls (C
declarations, capabilities, socket filter), _fast_rules (the protocol
rules' numbers, generated from protocol/ and daemon/budgets.py), _fast_constants (the
loop's own sizes and flags), _fast_window (replay window), _fast_routes (allowed-IPs lookup),
_fast_peers (per-client state, inner addresses), _fast_offload (checksums, TCP
coalescing), _fast_batch (batch buffers), _fast_send (the TUN -> UDP direction:
route, seal, batch, send), _fast_receive (the UDP -> TUN direction: receive, open,
check, coalesce, write), _fast_bench (benchmark entry point). Engine, here, holds the
state, the Python-facing API and what both directions share (events, budgets, drops).

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
include "_fast_rules.pxi"
include "_fast_constants.pxi"
include "_fast_window.pxi"
include "_fast_routes.pxi"
include "_fast_peers.pxi"
include "_fast_offload.pxi"
include "_fast_stream.pxi"
include "_fast_batch.pxi"


cdef class Engine:
    """The native data path for one daemon: both loops, the peer table and the routes.

    Python builds it (peers, routes, fds), starts the two loops in two threads that
    release the GIL for good, reads events from `event_fd`, and stops it. Peers and
    routes may change only while the loops are stopped. The loops themselves are
    tun_loop (_fast_send.pxi) and udp_loop (_fast_receive.pxi), and, for TCP
    connections, stream_loop (_fast_stream_read.pxi) in a third.
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
    cdef int npeers, cap, nfree       # slots in use or emptied; capacity; emptied ones
    cdef int32_t *by_id
    cdef Routes routes
    cdef public double clock_offset   # the protocol clock minus the steady one (VC_STEADY)
    cdef public bint hold_tx          # client: data waits for the first time sync
    cdef public int mtu               # tunnel MTU: bigger TUN packets get ICMP (0: no check)
    cdef uint64_t drops[N_REASONS]
    cdef uint64_t events_lost
    cdef double sample_tokens, sample_refilled
    cdef double big_tokens, big_refilled
    cdef list keep                    # per slot, the SivContexts whose keys its peer borrows
    cdef Stream **streams             # by descriptor: the TCP connections (_fast_stream.pxi)
    cdef int nstreams
    cdef pthread_mutex_t rx_lock      # one receive path at a time: datagrams or frames
    cdef pthread_mutex_t live_lock    # the reader's poll set (stream_loop): live[:nlive]
    cdef int *live
    cdef int nlive, live_cap, live_gen
    cdef int wake_r, wake_w           # wakes the reader when its poll set changes
    cdef int stopping

    def __cinit__(self):
        # index + 1 per client id, 0 = none: calloc'd pages stay untouched (and out of
        # the resident set) until an id in them is configured
        self.by_id = <int32_t *>calloc(65536, sizeof(int32_t))
        if self.by_id == NULL:
            raise MemoryError()
        self.peers = NULL
        self.routes.slots = NULL
        cdef rlimit lim
        self.nstreams = 1024
        if getrlimit(RLIMIT_NOFILE, &lim) == 0 and lim.rlim_cur > 1024:
            self.nstreams = <int>min(lim.rlim_cur, <unsigned long>(1 << 20))
        # calloc'd: pages of descriptors never used stay untouched
        self.streams = <Stream **>calloc(self.nstreams, sizeof(Stream *))
        if self.streams == NULL:
            raise MemoryError()
        pthread_mutex_init(&self.rx_lock, NULL)
        pthread_mutex_init(&self.live_lock, NULL)
        self.live, self.nlive, self.live_cap, self.live_gen = NULL, 0, 0, 0
        cdef int ends[2]
        cdef int k
        if pipe(ends) != 0:
            PyErr_SetFromErrno(OSError)
        self.wake_r, self.wake_w = ends[0], ends[1]
        for k in range(2):
            fcntl(ends[k], F_SETFL, fcntl(ends[k], F_GETFL) | O_NONBLOCK)

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
        # The wall clock until the daemon sets the protocol clock's base.
        self.clock_offset = clock_now(CLOCK_REALTIME) - clock_now(VC_STEADY)

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
        if self.streams != NULL:
            for i in range(self.nstreams):
                if self.streams[i] != NULL:
                    pthread_mutex_destroy(&self.streams[i].lock)
                    pthread_mutex_destroy(&self.streams[i].rlock)
                    free(self.streams[i].rest)
                    free(self.streams[i].partial)
                    free(self.streams[i])
            free(self.streams)
        pthread_mutex_destroy(&self.rx_lock)
        pthread_mutex_destroy(&self.live_lock)
        free(self.live)
        close_fd(self.wake_r)
        close_fd(self.wake_w)

    # -- set-up (loops stopped) ------------------------------------------------------------

    def add_peer(self, uint32_t client_id, SivContext seal_ctx, SivContext open_ctx,
                 uint32_t counter):
        """Add a peer with fresh state (counters, window, no endpoint); returns its index,
        a slot a removed peer left if there is one. To re-key a peer, remove it and add
        it again (its state starts over with the new keys)."""
        cdef Peer *p
        cdef int idx = self.by_id[client_id & 0xFFFF] - 1
        if idx >= 0:
            raise ValueError(f"client id {client_id} is already in the engine")
        p = <Peer *>calloc(1, sizeof(Peer))
        if p == NULL:
            raise MemoryError()
        if self.nfree:
            idx = 0
            while self.peers[idx] != NULL:
                idx += 1
            self.nfree -= 1
        else:
            if self.npeers == self.cap:
                self.cap = self.cap * 2 if self.cap else 8
                self.peers = <Peer **>realloc_or_raise(self.peers, self.cap * sizeof(Peer *))
            idx = self.npeers
            self.npeers += 1
            self.keep.append(None)
        pthread_mutex_init(&p.lock, NULL)
        p.id = client_id
        p.seal = &seal_ctx.siv
        p.open = &open_ctx.siv
        p.counter = counter
        self.keep[idx] = (seal_ctx, open_ctx)
        self.peers[idx] = p
        self.by_id[client_id & 0xFFFF] = idx + 1
        return idx

    def set_epoch_keys(self, int idx, int64_t boundary, SivContext seal0, SivContext open0,
                       SivContext seal1, SivContext open1):
        """A ratcheting client's timed keys (protocol/ratchet.py EpochContexts.engine_keys):
        packets timestamped before `boundary` under seal0/open0, from it on under
        seal1/open1. Safe while the loops run: the set before is kept alive too, for a
        thread that may still be using it (sets change once an epoch, minutes apart)."""
        cdef Peer *p = self.peer(idx)
        held = self.keep[idx]
        self.keep[idx] = (held[0], held[1], (seal0, open0, seal1, open1),
                          held[2] if len(held) > 2 else None)
        p.seal_t[1], p.open_t[1] = &seal1.siv, &open1.siv
        p.seal_t[0], p.open_t[0] = &seal0.siv, &open0.siv
        p.boundary = boundary

    def remove_peer(self, uint32_t client_id):
        """Forget a peer: its slot is emptied for the next add_peer (the indices of the
        others do not move) and its SIV contexts are let go; its packets are refused
        from now on (unknown client)."""
        cdef int idx = self.by_id[client_id & 0xFFFF] - 1
        if idx < 0:
            return
        self.by_id[client_id & 0xFFFF] = 0
        pthread_mutex_destroy(&self.peers[idx].lock)
        free(self.peers[idx])
        self.peers[idx] = NULL
        self.keep[idx] = None
        self.nfree += 1

    @property
    def slots(self):
        """(peer slots allocated, of which empty): what the peer table holds."""
        return self.npeers, self.nfree

    def index_of(self, uint32_t client_id):
        return self.by_id[client_id & 0xFFFF] - 1

    def set_routes(self, list routes):
        """routes: [(version, prefix length, address bytes (4 or 16), peer index)]."""
        routes_build(&self.routes, routes)

    def lookup(self, int version, bytes address):
        """The owner of `address` (4 or 16 bytes), for tests."""
        return routes_lookup(&self.routes, version, <const uint8_t *>address)

    # -- TCP connections (_fast_stream.pxi; the Python side owns them) ----------------------

    def stream_open(self, int fd, bytes partial=b""):
        """A connection the engine may seal into and reads (its stream_loop thread);
        `partial`: the start of a frame read before (from another engine)."""
        cdef Stream *s
        cdef Py_ssize_t n = len(partial)
        if fd < 0 or fd >= self.nstreams:
            raise ValueError(f"descriptor {fd} is beyond the engine's table ({self.nstreams})")
        if n > FRAME_PREFIX + MAX_DATAGRAM:
            raise ValueError("a partial frame longer than a frame")
        s = self.streams[fd]
        if s == NULL:
            s = <Stream *>calloc(1, sizeof(Stream))
            if s == NULL:
                raise MemoryError()
            pthread_mutex_init(&s.lock, NULL)
            pthread_mutex_init(&s.rlock, NULL)
            self.streams[fd] = s   # never freed while the engine lives: no thread can
                                   # hold a pointer to freed memory
        with nogil:
            pthread_mutex_lock(&s.rlock)
        if <size_t>n > s.partial_cap:
            free(s.partial)
            s.partial = <uint8_t *>malloc(n)
            s.partial_cap = n if s.partial != NULL else 0
        if n and s.partial != NULL:
            memcpy(s.partial, <const uint8_t *>partial, n)
        s.partial_len = n if s.partial != NULL else 0
        s.last_rx = <uint32_t>clock_now(CLOCK_MONOTONIC)
        s.reading = 1
        pthread_mutex_lock(&s.lock)
        s.open, s.rest_len = 1, 0
        pthread_mutex_unlock(&s.lock)
        pthread_mutex_unlock(&s.rlock)
        live_set(self, fd, 1)

    def stream_partial(self, int fd):
        """The start of a frame the last read cut (for the engine that takes over)."""
        cdef Stream *s
        if fd < 0 or fd >= self.nstreams or self.streams[fd] == NULL:
            return b""
        s = self.streams[fd]
        with nogil:
            pthread_mutex_lock(&s.rlock)
        out = PyBytes_FromStringAndSize(<char *>s.partial, s.partial_len) if s.partial_len \
            else b""
        pthread_mutex_unlock(&s.rlock)
        return out

    def stream_last_rx(self, int fd):
        """CLOCK_MONOTONIC seconds (time.monotonic()) of the connection's last read."""
        if fd < 0 or fd >= self.nstreams or self.streams[fd] == NULL:
            return 0
        return self.streams[fd].last_rx

    def stream_close(self, int fd):
        """Before the descriptor is closed: nothing reads or writes it any more (a read
        under way ends first), and no peer has it as its endpoint (so a reused
        descriptor number never receives their packets)."""
        cdef Stream *s
        cdef Peer *p
        cdef int i
        if fd < 0 or fd >= self.nstreams or self.streams[fd] == NULL:
            return
        s = self.streams[fd]
        with nogil:
            pthread_mutex_lock(&s.rlock)
            s.reading, s.partial_len = 0, 0
            pthread_mutex_lock(&s.lock)
            s.open, s.rest_len = 0, 0
            pthread_mutex_unlock(&s.lock)
            pthread_mutex_unlock(&s.rlock)
            live_set(self, fd, 0)
        for i in range(self.npeers):
            p = self.peers[i]
            if p == NULL:
                continue
            pthread_mutex_lock(&p.lock)
            if stream_fd_of(&p.endpoint, p.endpoint_len) == fd:
                p.endpoint_len = 0
            pthread_mutex_unlock(&p.lock)

    def stream_send(self, int fd, bytes packet):
        """One sealed packet of the Python side as a frame on connection fd (False when
        its send buffer is full: dropped, as the native loop drops)."""
        cdef const uint8_t *data = packet
        cdef size_t n = len(packet)
        cdef int ok
        with nogil:
            ok = stream_write(self.streams, self.nstreams, fd, data, n, 1, n)
        return bool(ok)

    def stream_flush(self, int fd):
        """Send what a short write left (the tick: when no further frame comes for it)."""
        cdef Stream *s
        if fd < 0 or fd >= self.nstreams or self.streams[fd] == NULL:
            return
        s = self.streams[fd]
        with nogil:
            pthread_mutex_lock(&s.lock)
            if s.open:
                stream_flush_locked(s, fd)
            pthread_mutex_unlock(&s.lock)

    def set_stream_endpoint(self, int idx, int fd):
        """Send this peer's packets as frames on connection fd (a TCP client's server)."""
        cdef Peer *p = self.peer(idx)
        cdef sockaddr_storage ss
        cdef socklen_t n = stream_addr(fd, &ss)
        pthread_mutex_lock(&p.lock)
        memcpy(&p.endpoint, &ss, n)
        p.endpoint_len = n
        pthread_mutex_unlock(&p.lock)

    def set_endpoint(self, int idx, str host, int port):
        """Where to send this peer's packets (the client's server, or a roamed client)."""
        cdef Peer *p = self.peer(idx)
        cdef sockaddr_storage ss
        cdef socklen_t n = sockaddr_of(host, port, self.sock_family, &ss)
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
        if not seal_packet(p.seal if timestamp == 0 else timed_seal(p, <int64_t>timestamp),
                           <uint8_t>ptype, p.id, self.server_id, timestamp,
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

    def window_newest(self, int idx):
        """The newest accepted DATA timestamp of this peer, or None."""
        cdef Window *w = &self.peer(idx).window
        return w.newest if w.has_newest else None

    def window_state(self, int idx):
        """This peer's replay window as bytes, for carrying it into a rebuilt engine."""
        return PyBytes_FromStringAndSize(<char *>&self.peer(idx).window, sizeof(Window))

    def load_window_state(self, int idx, bytes state):
        """A replay window that window_state gave (same build: same layout)."""
        if len(state) != sizeof(Window):
            raise ValueError("not a replay window of this build")
        memcpy(&self.peer(idx).window, <const char *>state, sizeof(Window))

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
            tun_loop(self)

    def run_udp_to_tun(self):
        with nogil:
            udp_loop(self)

    def run_streams(self):
        with nogil:
            stream_loop(self)

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

    cdef void drop(self, Peer *p, int reason, const void *addr, socklen_t alen,
                   const uint8_t *packet, Py_ssize_t n, double mono) noexcept nogil:
        self.drops[reason] += 1
        if p != NULL:
            p.drops[reason] += 1
        # A sample goes up for the log (and, for AUTH/STALE, the clock-skew diagnosis).
        if bucket_take(&self.sample_tokens, &self.sample_refilled, 20.0, mono):
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


include "_fast_send.pxi"
include "_fast_receive.pxi"
include "_fast_stream_read.pxi"


include "_fast_bench.pxi"
