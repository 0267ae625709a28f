# _fast_receive.pxi: the UDP -> TUN direction of the native loop, top to bottom: take a
# batch of datagrams (UDP GRO where granted), open and check each one (on_datagram: the
# drop reasons), coalesce TCP segments of one flow and write them to the TUN; udp_loop
# is the thread. Functions of an Engine, not methods: Cython cannot split a class over
# files. Included by _fast.pyx, which stays the one extension module.

cdef void on_datagram(Engine self, uint8_t *pkt, Py_ssize_t n, const sockaddr_storage *src,
                      socklen_t alen, uint8_t *out, Coal *co, int64_t now_s,
                      double mono) noexcept nogil:
    """One received datagram: drop it with a reason, hand it up, or deliver it to the
    TUN (through `co` when the TUN has a virtio header). `out` has HEADROOM bytes in
    front of where the plaintext goes. The Python loop's twin is daemon/server.py
    handle_datagram: tests/test_receive_rules.py feeds both one table of decisions."""
    cdef uint8_t addr[16]
    cdef int idx, version, reason, moved, control, known
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
    # protocol/wire.py CLIENT_TYPES / SERVER_TYPES: each side's time-sync half only.
    if ((ptype & FROM_SERVER) != (0 if self.server else FROM_SERVER)
            or (ptype & 0x7F) < KIND_DATA or (ptype & 0x7F) > KIND_TIME_RESPONSE
            or (ptype & 0x7F) == (KIND_TIME_RESPONSE if self.server else KIND_TIME_REQUEST)):
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
    body = n - OVERHEAD
    control = (ptype & 0x7F) != KIND_DATA
    if control:
        # Keepalives and time sync: budgeted per client (forgeries naming one client
        # cannot starve the others), opened here, and handed up authenticated for the
        # Python side to answer: one replay window per sender, this one.
        if not bucket_take(&p.ctl_tokens, &p.ctl_refilled, CTL_RATE, mono):
            self.drop(p, D_RATE_LIMITED, src, alen, pkt, 0, mono)
            return
    counter = (pkt[4] << 24) | (pkt[5] << 16) | (pkt[6] << 8) | pkt[7]
    if control:
        if (ptype & 0x7F) != KIND_KEEPALIVE:
            # Time sync is untimed (timestamp 0): the nonce it carries is its freshness.
            if not open_packet(p.open, self.server_id, 0, pkt, <int>body, plain):
                self.drop(p, D_AUTH, src, alen, pkt, n, mono)
                return
            known = 1
            if ptype == KIND_TIME_REQUEST:   # protocol/session.py ServerCore.open
                known = window_mark_untimed(&p.window, counter)
                if known < 0:
                    self.drop(p, D_REPLAY, src, alen, pkt, n, mono)
                    return
            self.emit(EV_CONTROL, (ptype & 0x7F) | (0 if known else UNTRUSTED), cid, src,
                      alen, plain, body)
            return
    ts = full_timestamp(pkt[3], now_s)
    if ts < 0:
        self.drop(p, D_AUTH, src, alen, pkt, n, mono)
        return
    reason = window_check(&p.window, ts, counter)
    if reason != D_NONE:
        self.drop(p, reason, src, alen, pkt, n, mono)
        return
    if moved and not control and not bucket_take(&p.roam_tokens, &p.roam_refilled, ROAM_RATE,
                                                 mono):
        # Opening is what a forgery costs us (a whole AES-SIV pass): from anywhere but
        # the client's current address (or while it has none) only ROAM_RATE a second
        # are tried, so a flood naming a client cannot eat the CPU the real traffic
        # needs. A roaming or (re)connecting client gets through with its first
        # packets; then its address is the endpoint.
        self.drop(p, D_RATE_LIMITED, src, alen, pkt, 0, mono)
        return
    if not open_packet(timed_open(p, ts), self.server_id, <uint64_t>ts, pkt, <int>body, plain):
        self.drop(p, D_AUTH, src, alen, pkt, n, mono)
        return
    if control:   # a keepalive: the Python side counts and answers it
        window_accept(&p.window, ts, counter)
        self.emit(EV_CONTROL, KIND_KEEPALIVE, cid, src, alen, plain, body)
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
        deliver(self, co, plain, body)
        return
    if self.frame_prefix:
        put32(plain - 4, 2 if (plain[0] >> 4) == 4 else 28)   # FreeBSD: AF_INET / AF_INET6
    write_tun(self, plain - self.frame_prefix, body + self.frame_prefix)

cdef int write_tun(Engine self, const uint8_t *frame, Py_ssize_t n) noexcept nogil:
    while write(self.tun_fd, frame, n) < 0:
        if errno == EAGAIN:
            if not self.wait(self.tun_fd, POLLOUT):
                return 0
        elif errno != EINTR:
            return 0
    self.tun_writes += 1
    return 1

cdef void deliver(Engine self, Coal *co, uint8_t *plain, Py_ssize_t body) noexcept nogil:
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
                flush_coal(self, co)
            return
        flush_coal(self, co)
        if not tcp[13] & 0x08:
            memcpy(co.buf + HEADROOM, plain, body)
            co.len, co.version, co.l3, co.hl, co.nseg = body, plain[0] >> 4, l3, hl, 1
            co.mss = payload
            co.next_seq = ((tcp[4] << 24) | (tcp[5] << 16) | (tcp[6] << 8) | tcp[7]) + \
                          <uint32_t>payload
            return
    else:
        flush_coal(self, co)
    memset(plain - VNET_LEN, 0, VNET_LEN)   # no GSO, checksums complete
    write_tun(self, plain - VNET_LEN, body + VNET_LEN)

cdef void flush_coal(Engine self, Coal *co) noexcept nogil:
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
    if not write_tun(self, p - VNET_LEN, co.len + VNET_LEN) and co.nseg > 1 \
            and errno == EINVAL:
        self.no_coalesce = True   # this kernel will not take them (TCP resends)
    co.len = 0

cdef void udp_loop(Engine self) noexcept nogil:
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
            pthread_mutex_lock(&self.rx_lock)   # stream_loop opens frames of TCP connections
            mono = clock_now(CLOCK_MONOTONIC)
            now_s = <int64_t>(clock_now(VC_STEADY) + self.clock_offset)
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
                    on_datagram(self, base + off, min(seg, n - off), &srcs[i],
                                     msgs[i].msg_hdr.msg_namelen, out, co, now_s, mono)
                    off += seg
                    if off >= n:
                        break
            if co != NULL:
                flush_coal(self, co)   # nothing waits past its receive batch
            pthread_mutex_unlock(&self.rx_lock)
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
