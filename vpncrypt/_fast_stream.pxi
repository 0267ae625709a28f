# _fast_stream.pxi: TCP connections as endpoints (transport = tcp, listen_tcp). A frame is
# a 2-byte big-endian length and one sealed packet (docs/PROTOCOL.md §4.1). The Python
# side owns the connections (accept, connect, the bounds on unauthenticated ones,
# close); the engine reads them (stream_loop, a third thread: frames open through
# on_datagram like any datagram) and seals into them (the send path's batches, and
# stream_send for Python's own packets). A connection is an endpoint like a UDP
# address: a pseudo socket address of family VC_AF_STREAM holding its descriptor, so
# roaming between connections (and between transports) is the endpoint rule of the
# datagram path. A connection's end (closed, broken, not frames) goes up as EV_STREAM.
# Included by _fast.pyx, which stays the one extension module (routers pay per .so).

from libc.string cimport memmove
from posix.fcntl cimport fcntl, F_GETFL, F_SETFL, O_NONBLOCK
from posix.unistd cimport pipe, close as close_fd

DEF VC_AF_STREAM = 240      # no real address family: a connection's descriptor
DEF STREAM_ADDR_LEN = 8     # the family, then the descriptor at offset 4
DEF FRAME_PREFIX = 2
DEF STREAM_REST = 131072    # the unsent end of frames a short write left (always < this)
DEF STREAM_READ = 262144    # bytes one read takes from a connection
# EV_STREAM reasons (daemon/streams.py): how a connection ended, as the reader saw it.
DEF SE_CLOSED = 1           # the peer closed it
DEF SE_ERROR = 2            # a read failed (the errno rides in the event's id field)
DEF SE_GARBAGE = 3          # a length no packet can have: not a stream of frames

cdef extern from "<sys/resource.h>" nogil:
    struct rlimit:
        unsigned long rlim_cur
    int getrlimit(int resource, rlimit *r)
    int RLIMIT_NOFILE

cdef struct Stream:
    pthread_mutex_t lock            # one writer at a time: frames must follow whole
    pthread_mutex_t rlock           # the reader, against stream_open/stream_close
    int open
    int reading                     # in the reader's poll set (0 once it saw the end)
    uint8_t *rest                   # bytes of frames a short write could not send yet
    size_t rest_len
    uint8_t *partial                # the start of a frame the last read cut (< one frame)
    size_t partial_len, partial_cap
    uint32_t last_rx                # CLOCK_MONOTONIC seconds of the last read (one word:
                                    # Python reads it without a lock, on 32-bit CPUs too)


cdef inline socklen_t stream_addr(int fd, sockaddr_storage *ss) noexcept nogil:
    memset(ss, 0, STREAM_ADDR_LEN)
    (<sockaddr *>ss).sa_family = VC_AF_STREAM
    memcpy(<uint8_t *>ss + 4, &fd, 4)
    return STREAM_ADDR_LEN


cdef inline int stream_fd_of(const void *ss, socklen_t alen) noexcept nogil:
    """The descriptor of a connection endpoint, or -1 for a datagram address."""
    cdef int fd
    if alen != STREAM_ADDR_LEN or (<const sockaddr *>ss).sa_family != VC_AF_STREAM:
        return -1
    memcpy(&fd, <const uint8_t *>ss + 4, 4)
    return fd


cdef int stream_flush_locked(Stream *s, int fd) noexcept nogil:
    """Send what a short write left; 1 once nothing is left."""
    cdef ssize_t n
    while s.rest_len:
        n = send(fd, s.rest, s.rest_len, MSG_DONTWAIT | MSG_NOSIGNAL)
        if n < 0:
            if errno == EINTR:
                continue
            return 0   # full (later) or broken (Python sees the connection end)
        memmove(s.rest, s.rest + n, s.rest_len - <size_t>n)
        s.rest_len -= <size_t>n
    return 1


cdef int stream_write(Stream **streams, int nstreams, int fd, const uint8_t *data,
                      size_t length, int nseg, size_t segsize) noexcept nogil:
    """nseg sealed packets, back to back at data (segsize bytes each, the last shorter),
    as frames on connection fd: all of them, or none (0) when the connection's send
    buffer is full. No queue of our own beyond the end of one short write: TCP inside
    TCP must drop, not buffer (docs/PROTOCOL.md §4.1)."""
    cdef iovec iov[2 * GSO_MAX_SEGS]
    cdef uint8_t prefix[2 * GSO_MAX_SEGS]
    cdef size_t off = 0, total = 0, n, skip
    cdef ssize_t sent
    cdef int i, k = 0
    cdef msghdr m
    cdef Stream *s
    if fd < 0 or fd >= nstreams or nseg < 1 or nseg > GSO_MAX_SEGS:
        return 0
    s = streams[fd]
    if s == NULL:
        return 0
    for i in range(nseg):
        n = min(segsize, length - off)
        prefix[2 * i], prefix[2 * i + 1] = <uint8_t>(n >> 8), <uint8_t>(n & 0xFF)
        iov[k].iov_base, iov[k].iov_len = &prefix[2 * i], FRAME_PREFIX
        iov[k + 1].iov_base, iov[k + 1].iov_len = <void *>(data + off), n
        k += 2
        off += n
        total += n + FRAME_PREFIX
    pthread_mutex_lock(&s.lock)
    if not s.open or not stream_flush_locked(s, fd):
        pthread_mutex_unlock(&s.lock)
        return 0
    memset(&m, 0, sizeof(msghdr))
    m.msg_iov, m.msg_iovlen = iov, k
    sent = sendmsg(fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL)
    while sent < 0 and errno == EINTR:
        sent = sendmsg(fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL)
    if sent <= 0:
        pthread_mutex_unlock(&s.lock)
        return 0
    if <size_t>sent < total:
        # The rest of frames already begun must follow before anything else.
        if s.rest == NULL:
            s.rest = <uint8_t *>malloc(STREAM_REST)
        if s.rest == NULL:
            s.open = 0   # cannot keep the stream whole: no more writes (Python closes it)
            pthread_mutex_unlock(&s.lock)
            return 1
        skip = <size_t>sent
        for i in range(k):
            if skip >= iov[i].iov_len:
                skip -= iov[i].iov_len
                continue
            memcpy(s.rest + s.rest_len, <uint8_t *>iov[i].iov_base + skip, iov[i].iov_len - skip)
            s.rest_len += iov[i].iov_len - skip
            skip = 0
    pthread_mutex_unlock(&s.lock)
    return 1
