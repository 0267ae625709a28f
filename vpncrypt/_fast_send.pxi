# _fast_send.pxi: the TUN -> UDP direction of the native loop, top to bottom: route a
# packet read from the TUN to its peer, seal it (cutting TSO super-packets into MTU-size
# packets), batch the datagrams (UDP GSO where granted) and send them; tun_loop is the
# thread. Functions of an Engine, not methods: Cython cannot split a class over files.
# Included by _fast.pyx, which stays the one extension module (routers pay per .so).

cdef Peer *route(Engine self, const uint8_t *pkt, Py_ssize_t r) noexcept nogil:
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

cdef int seal_into(Engine self, Peer *p, uint8_t *o, const uint8_t *body, Py_ssize_t n,
                   int64_t ts) noexcept nogil:
    """Header, tag and ciphertext of a DATA packet at o; body may be o + OVERHEAD."""
    return seal_packet(timed_seal(p, ts), KIND_DATA | (FROM_SERVER if self.server else 0), p.id,
                       self.server_id, <uint64_t>ts, vc_next_counter(&p.counter), body,
                       <int>n, o)

cdef uint8_t *tx_open(Engine self, Tx *tx, Peer *p) noexcept nogil:
    """The buffer of the next message of the batch, addressed to p (flushes if full)."""
    cdef int i
    cdef size_t at = 0
    if tx.count == BATCH or tx.used > TX_BYTES:
        tx_flush(self, tx)
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

cdef void tx_close(Engine self, Tx *tx, size_t length, int nseg, int segsize,
                   double mono) noexcept nogil:
    """Commit the message tx_open started: nseg datagrams of segsize bytes (last shorter)."""
    cdef int i = tx.count
    tx.iovs[i].iov_len = 0
    tx.nseg[i], tx.segsize[i] = 0, segsize
    tx.count += 1
    tx_grow(self, tx, length, nseg, mono)

cdef void tx_grow(Engine self, Tx *tx, size_t length, int nseg, double mono) noexcept nogil:
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

cdef uint8_t *tx_tail(Engine self, Tx *tx, Peer *p, size_t n) noexcept nogil:
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

cdef int send_one(Engine self, const void *buf, size_t n, const msghdr *m) noexcept nogil:
    while sendto(self.sock_fd, buf, n, 0, m.msg_name, m.msg_namelen) < 0:
        if errno == EAGAIN:
            if not self.wait(self.sock_fd, POLLOUT):
                return 0
        elif errno != EINTR:
            return 0
    return 1

cdef void tx_flush(Engine self, Tx *tx) noexcept nogil:
    """Send the batch: runs of datagrams with sendmmsg, messages to TCP connections as
    frames (_fast_stream.pxi)."""
    cdef int k = 0, end, fd
    while k < tx.count:
        fd = stream_fd_of(&tx.dests[k], tx.msgs[k].msg_hdr.msg_namelen)
        if fd >= 0:
            if not stream_write(self.streams, self.nstreams, fd,
                                <uint8_t *>tx.iovs[k].iov_base, tx.iovs[k].iov_len,
                                max(1, tx.nseg[k]), tx.segsize[k]):
                tx.owners[k].tx_packets -= tx.nseg[k]
                tx.owners[k].tx_bytes -= tx.iovs[k].iov_len
                tx.owners[k].drops[D_QUEUE_FULL] += tx.nseg[k]
                self.drops[D_QUEUE_FULL] += tx.nseg[k]
            k += 1
            continue
        end = k + 1
        while end < tx.count and stream_fd_of(&tx.dests[end],
                                              tx.msgs[end].msg_hdr.msg_namelen) < 0:
            end += 1
        send_datagrams(self, tx, k, end)
        k = end
    tx.count = 0
    tx.used = 0

cdef void send_datagrams(Engine self, Tx *tx, int k, int end) noexcept nogil:
    """Messages k to end - 1 of the batch, all datagrams."""
    cdef int sent, j
    cdef size_t off, n
    cdef uint8_t *base
    while k < end:
        sent = sendmmsg(self.sock_fd, &tx.msgs[k], end - k, 0)
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
                if not send_one(self, base + off, n, &tx.msgs[k].msg_hdr):
                    tx.owners[k].tx_packets -= 1
                    tx.owners[k].tx_bytes -= n
                off += n
            k += 1
        else:
            tx.owners[k].tx_packets -= tx.nseg[k]   # not sent after all (unreachable...)
            tx.owners[k].tx_bytes -= tx.iovs[k].iov_len
            k += 1

cdef void seal_tso(Engine self, Tx *tx, Peer *p, const uint8_t *pkt, Py_ssize_t r,
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
                tx_close(self, tx, off, k, full, mono)
            o = tx_open(self, tx, p)
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
        if not seal_into(self, p, o + off, seg, n, ts):
            break
        off += OVERHEAD + n
        k += 1
    if k:
        tx_close(self, tx, off, k, full, mono)
    self.tso_packets += 1
    self.tso_segments += nseg

cdef void tun_loop(Engine self) noexcept nogil:
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
        ts = <int64_t>(clock_now(VC_STEADY) + self.clock_offset)
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
            p = route(self, pkt, r)
            if p == NULL:
                continue
            if self.offload & OFF_VNET:
                memcpy(&vh, inbuf, VNET_LEN)
                if vh.gso_type != 0:
                    seal_tso(self, tx, p, pkt, r, &vh, ts, mono)
                    continue
                if vh.flags & VNET_F_NEEDS_CSUM and not finish_csum(inbuf + VNET_LEN, r, &vh):
                    self.drops[D_BAD_PACKET] += 1
                    p.drops[D_BAD_PACKET] += 1
                    continue
            if self.mtu and r > self.mtu:
                # As a router does: "fragmentation needed"/"packet too big" to the
                # sender, not a silent black hole (the TUN's own MTU was raised).
                if bucket_take(&self.big_tokens, &self.big_refilled, 100.0, mono):
                    self.emit(EV_TOO_BIG, 0, p.id, NULL, 0, pkt, min(r, TOO_BIG_SAMPLE))
                continue
            if r > MAX_DATAGRAM - OVERHEAD:
                continue
            o = tx_tail(self, tx, p, OVERHEAD + r)
            if o != NULL:
                if seal_into(self, p, o, pkt, r, ts):
                    tx_grow(self, tx, OVERHEAD + r, 1, mono)
                continue
            o = tx_open(self, tx, p)
            if seal_into(self, p, o, pkt, r, ts):
                tx_close(self, tx, OVERHEAD + r, 1, OVERHEAD + r, mono)
        tx_flush(self, tx)
    free(inbuf)
    free(tx.bufs)
    free(tx)

# -- UDP -> TUN ----------------------------------------------------------------------
