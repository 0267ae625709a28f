# _fast_bench.pxi: The benchmark entry point (bench/crypto_bench.py): sealing or opening
# in a loop without Python in between.
# Included by _fast.pyx, which stays the one extension module (routers pay per .so).

# ---- benchmark entry point -------------------------------------------------------------------

def bench_siv(SivContext ctx, str op, bytes data, uint64_t timestamp, long count,
              int ptype=KIND_DATA):
    """Time `count` seals or opens the way the Engine's loops run them: (elapsed ns, last output).

    This is the per-packet cost the daemon's data path pays, without a Python call per
    packet (bench/crypto_bench.py, row "native (engine loop)"). "seal": `data` is the body;
    each packet's header is written as Engine.seal_into writes it (counter from
    vc_next_counter, starting at 0) and its AD built from that header, then siv_seal into
    a preallocated buffer; returns the last packet (counter count - 1). "open": `data` is
    a packet; each time its AD is rebuilt from the header as Engine.on_datagram does, then
    siv_open into a preallocated buffer; returns the plaintext. The loop runs with the GIL
    released; a failed seal or open raises (return codes are checked as in the Engine).
    """
    cdef bint seal
    if op == "seal":
        seal = True
    elif op == "open":
        seal = False
    else:
        raise ValueError("op must be 'seal' or 'open'")
    if count < 1 or ptype < 0 or ptype > 255:
        raise ValueError("count must be >= 1 and ptype fit one byte")
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t body = n if seal else n - OVERHEAD
    if body < 1 or body > MAX_DATAGRAM - OVERHEAD:
        raise ValueError("bad body or packet size")
    if not seal and PyBytes_AS_STRING(data)[3] != <char>(timestamp & 0xFF):
        raise ValueError("the packet's timestamp byte does not match `timestamp`")
    cdef const uint8_t *src = <const uint8_t *>PyBytes_AS_STRING(data)
    cdef Py_ssize_t outlen = OVERHEAD + body if seal else body
    cdef uint8_t *o = <uint8_t *>malloc(outlen)
    if o == NULL:
        raise MemoryError()
    cdef uint32_t counter = 0
    cdef uint32_t client_id = ctx.client_id, server_id = ctx.server_id
    cdef Siv *s = &ctx.siv
    cdef long i
    cdef int ok = 1
    cdef timespec t0, t1
    try:
        with nogil:
            clock_gettime(CLOCK_MONOTONIC, &t0)
            if seal:
                for i in range(count):
                    # what Engine.seal_into does, counter included
                    if not seal_packet(s, <uint8_t>ptype, client_id, server_id, timestamp,
                                       vc_next_counter(&counter), src, <int>body, o):
                        ok = 0
                        break
            else:
                for i in range(count):
                    # what Engine.on_datagram does
                    if not open_packet(s, server_id, timestamp, src, <int>body, o):
                        ok = 0
                        break
            clock_gettime(CLOCK_MONOTONIC, &t1)
        if not ok:
            raise RuntimeError("AES-SIV %s failed" % op)
        elapsed = (t1.tv_sec - t0.tv_sec) * 1000000000 + (t1.tv_nsec - t0.tv_nsec)
        return elapsed, PyBytes_FromStringAndSize(<char *>o, outlen)
    finally:
        free(o)
