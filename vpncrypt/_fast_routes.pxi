# _fast_routes.pxi: Allowed-IPs routing: longest-prefix match over one hash table per
# (version, prefix length).
# Included by _fast.pyx, which stays the one extension module (routers pay per .so).

# ---- allowed-IPs routing: longest prefix over a hash table per (version, prefix length) ----

cdef struct Route:
    int32_t owner   # peer index, -1 = empty slot
    uint8_t version
    uint8_t plen
    uint8_t addr[16]


cdef struct Routes:
    Route *slots
    uint32_t mask
    int nlens[2]
    uint8_t lens[2][129]   # prefix lengths in use, longest first


cdef inline void mask_addr(uint8_t *out, const uint8_t *addr, int nbytes, int plen) noexcept nogil:
    cdef int i, bits
    for i in range(nbytes):
        bits = plen - 8 * i
        if bits >= 8:
            out[i] = addr[i]
        elif bits <= 0:
            out[i] = 0
        else:
            out[i] = addr[i] & <uint8_t>(0xFF << (8 - bits))
    for i in range(nbytes, 16):
        out[i] = 0


cdef inline uint32_t route_hash(int version, int plen, const uint8_t *addr) noexcept nogil:
    cdef uint32_t h = 2166136261u
    cdef int i
    h = (h ^ <uint32_t>version) * 16777619u
    h = (h ^ <uint32_t>plen) * 16777619u
    for i in range(16):
        h = (h ^ addr[i]) * 16777619u
    return h


cdef int32_t routes_lookup(const Routes *r, int version, const uint8_t *addr) noexcept nogil:
    cdef int v = 0 if version == 4 else 1, nbytes = 4 if version == 4 else 16
    cdef int k, plen
    cdef uint8_t key[16]
    cdef uint32_t i
    cdef const Route *slot
    if r.slots == NULL:
        return -1
    for k in range(r.nlens[v]):
        plen = r.lens[v][k]
        mask_addr(key, addr, nbytes, plen)
        i = route_hash(version, plen, key) & r.mask
        while True:
            slot = &r.slots[i]
            if slot.owner < 0:
                break
            if slot.version == version and slot.plen == plen and memcmp(slot.addr, key, 16) == 0:
                return slot.owner
            i = (i + 1) & r.mask
    return -1


cdef void *realloc_or_raise(void *ptr, size_t size) except NULL:
    cdef void *p = realloc(ptr, size)
    if p == NULL:
        raise MemoryError()
    return p


cdef int routes_build(Routes *r, list routes) except -1:
    """Replace the table with `routes` (Engine.set_routes: its loops are stopped)."""
    cdef uint32_t size = 16, i
    cdef int v, k, j, plen
    cdef Route *slot
    cdef uint8_t key[16]
    cdef const uint8_t *a
    while size < 2 * len(routes) + 2:
        size *= 2
    free(r.slots)
    r.slots = <Route *>malloc(size * sizeof(Route))
    if r.slots == NULL:
        raise MemoryError()
    for i in range(size):
        r.slots[i].owner = -1
    r.mask = size - 1
    r.nlens[0] = r.nlens[1] = 0
    seen = {4: set(), 6: set()}
    for version, plen, address, owner in routes:
        a = address
        mask_addr(key, a, 4 if version == 4 else 16, plen)
        i = route_hash(version, plen, key) & r.mask
        while r.slots[i].owner >= 0 and not (
                r.slots[i].version == version and r.slots[i].plen == plen
                and memcmp(r.slots[i].addr, key, 16) == 0):
            i = (i + 1) & r.mask
        slot = &r.slots[i]
        slot.owner, slot.version, slot.plen = owner, version, plen
        memcpy(slot.addr, key, 16)
        seen[version].add(plen)
    for v, version in enumerate((4, 6)):
        for k, plen in enumerate(sorted(seen[version], reverse=True)):
            r.lens[v][k] = plen
        r.nlens[v] = len(seen[version])
    return 0
