# _fast_peers.pxi: The per-client state the loops share (Peer), clocks, timestamps, and
# the inner packet's source and destination.
# Included by _fast.pyx, which stays the one extension module (routers pay per .so).

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
