# _fast_stream_read.pxi: the reader of TCP connections (_fast_stream.pxi), a third loop
# beside tun_loop and udp_loop: one thread polls every connection the engine has open,
# reads each that is ready (STREAM_READ bytes), and opens its whole frames as udp_loop
# opens datagrams, under the same rx_lock; the cut end of the last frame waits in the
# connection for the next read. A connection's end goes up as EV_STREAM for Python to
# close it (daemon/streams.py). Included by _fast.pyx after the Engine class.

cdef void live_set(Engine self, int fd, int on) noexcept nogil:
    """Add fd to (or take it from) the reader's poll set; wakes the reader."""
    cdef int i
    cdef uint8_t c = 1
    cdef int *grown
    pthread_mutex_lock(&self.live_lock)
    for i in range(self.nlive):
        if self.live[i] == fd:
            if not on:
                self.nlive -= 1
                self.live[i] = self.live[self.nlive]
            on = 0
            break
    if on:
        if self.nlive == self.live_cap:
            grown = <int *>realloc(self.live, <size_t>(self.live_cap * 2 + 16) * sizeof(int))
            if grown != NULL:
                self.live, self.live_cap = grown, self.live_cap * 2 + 16
        if self.nlive < self.live_cap:
            self.live[self.nlive] = fd
            self.nlive += 1
    self.live_gen += 1
    pthread_mutex_unlock(&self.live_lock)
    write(self.wake_w, &c, 1)   # full pipe: a wake is pending anyway


cdef Py_ssize_t open_frames(Engine self, uint8_t *base, Py_ssize_t n,
                            sockaddr_storage *ss, socklen_t alen, uint8_t *out, Coal *co,
                            int64_t now_s, double mono) noexcept nogil:
    """Open the whole frames at base (under rx_lock); the bytes they took, or -1 at a
    length no packet can have."""
    cdef Py_ssize_t off = 0, length
    cdef uint64_t written = self.tun_writes
    while n - off >= FRAME_PREFIX:
        length = (base[off] << 8) | base[off + 1]
        if length < OVERHEAD + 1 or length > MAX_DATAGRAM:
            return -1
        if n - off - FRAME_PREFIX < length:
            break
        on_datagram(self, base + off + FRAME_PREFIX, length, ss, alen, out, co, now_s, mono)
        off += FRAME_PREFIX + length
        # One read holds thousands of small frames: as udp_loop does, offer the core to
        # a local reader of the TUN's packets before its receive buffer overflows.
        if self.tun_writes - written >= YIELD_WRITES:
            sched_yield()
            written = self.tun_writes
    return off


cdef void stream_read(Engine self, int fd, uint8_t *buf, uint8_t *out, Coal *co) noexcept nogil:
    """One read from connection fd, its frames opened, the cut end kept for the next."""
    cdef Stream *s
    cdef ssize_t got
    cdef size_t kept, left
    cdef Py_ssize_t used = 0
    cdef int why = 0, err = 0
    cdef sockaddr_storage ss
    cdef socklen_t alen = stream_addr(fd, &ss)
    cdef double mono
    cdef int64_t now_s
    cdef uint8_t *grown
    if fd < 0 or fd >= self.nstreams or self.streams[fd] == NULL:
        return
    s = self.streams[fd]
    pthread_mutex_lock(&s.rlock)
    if not s.reading:   # ended, or closed by Python since the poll
        pthread_mutex_unlock(&s.rlock)
        return
    kept = s.partial_len
    if kept:
        memcpy(buf, s.partial, kept)
    got = recv(fd, buf + kept, STREAM_READ, MSG_DONTWAIT)
    if got < 0:
        if errno == EAGAIN or errno == EINTR:
            pthread_mutex_unlock(&s.rlock)
            return
        why, err = SE_ERROR, errno
    elif got == 0:
        why = SE_CLOSED
    else:
        pthread_mutex_lock(&self.rx_lock)   # one receive path at a time (udp_loop too)
        mono = clock_now(CLOCK_MONOTONIC)
        now_s = <int64_t>(clock_now(VC_STEADY) + self.clock_offset)
        used = open_frames(self, buf, <Py_ssize_t>(kept + <size_t>got), &ss, alen, out, co,
                           now_s, mono)
        if co != NULL:
            flush_coal(self, co)
        pthread_mutex_unlock(&self.rx_lock)
        s.last_rx = <uint32_t>mono
        if used < 0:
            why = SE_GARBAGE
        else:
            left = kept + <size_t>got - <size_t>used
            if left > s.partial_cap:
                grown = <uint8_t *>realloc(s.partial, left)
                if grown == NULL:
                    why, err = SE_ERROR, ENOMEM
                    left = 0
                else:
                    s.partial, s.partial_cap = grown, left
            if left:
                memcpy(s.partial, buf + used, left)
            s.partial_len = left
    if why:
        s.reading, s.partial_len = 0, 0
        live_set(self, fd, 0)
        self.emit(EV_STREAM, why, <uint32_t>err, &ss, alen, NULL, 0)
    pthread_mutex_unlock(&s.rlock)


cdef void stream_loop(Engine self) noexcept nogil:
    """Wait on every connection in the poll set; read each that is ready, once a round
    (fair between connections), until the stop pipe is readable."""
    cdef uint8_t *buf = <uint8_t *>malloc(STREAM_READ + FRAME_PREFIX + MAX_DATAGRAM)
    cdef uint8_t *out = <uint8_t *>malloc(SLOT + HEADROOM)
    cdef pollfd *fds = NULL
    cdef pollfd *grown
    cdef int nfds = 0, cap = 0, seen = -1, i
    cdef uint8_t sink[64]
    cdef Coal coal
    cdef Coal *co = NULL
    memset(&coal, 0, sizeof(Coal))
    if self.offload & OFF_VNET:
        coal.buf = <uint8_t *>malloc(HEADROOM + 65535)
        co = &coal
    if buf == NULL or out == NULL or (co != NULL and coal.buf == NULL):
        free(buf)
        free(out)
        free(coal.buf)
        return
    while True:
        pthread_mutex_lock(&self.live_lock)
        if seen != self.live_gen:
            if self.nlive + 2 > cap:
                grown = <pollfd *>realloc(fds, <size_t>(self.nlive + 18) * sizeof(pollfd))
                if grown != NULL:
                    fds, cap = grown, self.nlive + 18
            if fds != NULL:
                seen = self.live_gen
                fds[0].fd, fds[1].fd = self.stop_r, self.wake_r
                nfds = 2
                for i in range(min(self.nlive, cap - 2)):
                    fds[nfds].fd = self.live[i]
                    nfds += 1
        pthread_mutex_unlock(&self.live_lock)
        if fds == NULL:
            break
        for i in range(nfds):
            fds[i].events, fds[i].revents = POLLIN, 0
        if poll(fds, nfds, -1) < 0:
            if errno == EINTR:
                continue
            break
        if fds[0].revents:
            break
        if fds[1].revents:
            while read(self.wake_r, sink, sizeof(sink)) > 0:
                pass
        for i in range(2, nfds):
            if fds[i].revents:
                stream_read(self, fds[i].fd, buf, out, co)
    free(fds)
    free(buf)
    free(out)
    free(coal.buf)
