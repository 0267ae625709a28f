# _fast_batch.pxi: The loops' batch buffers (a send batch, the pending coalesced packet)
# and sockaddr to (host, port) for the Python side.
# Included by _fast.pyx, which stays the one extension module (routers pay per .so).

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
    if stream_fd_of(p, len(raw)) >= 0:
        return ("stream", stream_fd_of(p, len(raw)))   # a TCP connection (_fast_stream.pxi)
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
