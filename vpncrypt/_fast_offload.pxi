# _fast_offload.pxi: Checksums and TCP coalescing for the TUN offloads (virtio_net_hdr):
# segmenting super-packets, finishing checksums, merging segments of one flow.
# Included by _fast.pyx, which stays the one extension module (routers pay per .so).

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
