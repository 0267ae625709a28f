# _fast_peers.pxi: The per-client state the loops share (Peer), clocks, timestamps, and
# the inner packet's source and destination.
# Included by _fast.pyx, which stays the one extension module (routers pay per .so).

# ---- peers ---------------------------------------------------------------------------------

cdef struct Peer:
    uint32_t id
    Siv *seal                       # borrowed from the SivContexts in Engine.keep
    Siv *open                       # (a ratcheting client's: untimed packets only)
    Siv *seal_t[2]                  # a ratcheting client's timed keys (protocol/ratchet.py):
    Siv *open_t[2]                  # [0] before `boundary`, [1] from it on; NULL: seal/open
    int64_t boundary
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


cdef inline Siv *timed_seal(const Peer *p, int64_t ts) noexcept nogil:
    """The key of a timed packet at `ts` (its epoch's, for a ratcheting client)."""
    if p.seal_t[0] == NULL:
        return p.seal
    return p.seal_t[1] if ts >= p.boundary else p.seal_t[0]


cdef inline Siv *timed_open(const Peer *p, int64_t ts) noexcept nogil:
    if p.open_t[0] == NULL:
        return p.open
    return p.open_t[1] if ts >= p.boundary else p.open_t[0]


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


cdef socklen_t sockaddr_of(str host, int port, int sock_family,
                           sockaddr_storage *ss) except 0:
    """The socket address of `host` (a numeric IPv4 or IPv6 address) and `port`, in the
    form the socket of `sock_family` sends to: an IPv4 peer on a dual-stack (IPv6)
    socket is a v4-mapped address."""
    cdef sockaddr_in *a4 = <sockaddr_in *>ss
    cdef sockaddr_in6 *a6 = <sockaddr_in6 *>ss
    cdef bytes h
    memset(ss, 0, sizeof(sockaddr_storage))
    if ":" in host or sock_family == AF_INET6:
        if ":" not in host:
            host = "::ffff:" + host
        h = host.encode()
        if inet_pton(AF_INET6, h, &a6.sin6_addr) != 1:
            raise ValueError(f"bad address {host!r}")
        a6.sin6_family = AF_INET6
        a6.sin6_port = htons(port)
        return sizeof(sockaddr_in6)
    h = host.encode()
    if inet_pton(AF_INET, h, &a4.sin_addr) != 1:
        raise ValueError(f"bad address {host!r}")
    a4.sin_family = AF_INET
    a4.sin_port = htons(port)
    return sizeof(sockaddr_in)


cdef int bucket_take(double *tokens, double *refilled, double rate, double now) noexcept nogil:
    """A token bucket of `rate` a second holding at most `rate`, full on first use: 1 if
    a token was taken (the per-client budgets, the drop-sample rate)."""
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
