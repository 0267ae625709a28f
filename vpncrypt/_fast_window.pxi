# _fast_window.pxi: The replay window (the rules of protocol/replay.py, with the bitmap
# as a ring) and its test wrapper NativeWindow.
# Included by _fast.pyx, which stays the one extension module (routers pay per .so).

# ---- replay window (exactly protocol/replay.py, with the bitmap as a ring) ------------------

cdef struct Window:
    int has_newest
    int64_t newest
    int64_t floor
    uint32_t top
    uint64_t bits[WINDOW_WORDS]   # bit for counter c at (c mod WINDOW)


cdef inline int window_seen(const Window *w, uint32_t c) noexcept nogil:
    cdef uint32_t i = c % WINDOW
    return <int>((w.bits[i >> 6] >> (i & 63)) & 1)


cdef inline void window_mark(Window *w, uint32_t c) noexcept nogil:
    cdef uint32_t i = c % WINDOW
    w.bits[i >> 6] |= (<uint64_t>1) << (i & 63)


cdef inline void window_clear(Window *w, uint32_t c) noexcept nogil:
    cdef uint32_t i = c % WINDOW
    w.bits[i >> 6] &= ~((<uint64_t>1) << (i & 63))


cdef int window_check(const Window *w, int64_t ts, uint32_t counter) noexcept nogil:
    cdef uint32_t ahead, behind
    if not w.has_newest:
        return D_NONE
    if ts < w.newest - STALE_AFTER or ts < w.floor:
        return D_STALE
    ahead = counter - w.top
    if 0 < ahead <= MAX_JUMP:
        return D_NONE
    behind = w.top - counter
    if behind < WINDOW:
        return D_REPLAY if window_seen(w, counter) else D_NONE
    return D_NONE if ts > w.newest else D_REPLAY


cdef inline void window_advance(Window *w, uint32_t counter, uint32_t ahead) noexcept nogil:
    """Move the top `ahead` counters on to `counter`, marking it."""
    cdef uint32_t c
    if ahead >= WINDOW:
        memset(w.bits, 0, sizeof(w.bits))
    else:
        c = w.top + 1
        while c != counter:
            window_clear(w, c)
            c += 1
    window_clear(w, counter)
    window_mark(w, counter)
    w.top = counter


cdef int window_mark_untimed(Window *w, uint32_t counter) noexcept nogil:
    """protocol/replay.py ReplayWindow.mark_untimed: -1 seen (a replay), 1 continues the
    window (now marked), 0 from no run this window knows."""
    cdef uint32_t ahead = counter - w.top, behind = w.top - counter
    if not w.has_newest:
        return 0
    if 0 < ahead < WINDOW:
        window_advance(w, counter, ahead)
        return 1
    if behind < WINDOW:
        if window_seen(w, counter):
            return -1
        window_mark(w, counter)
        return 1
    return 0


cdef int window_accept(Window *w, int64_t ts, uint32_t counter) noexcept nogil:
    """Record an authenticated packet that passed window_check; 1 if it restarted the window."""
    cdef uint32_t ahead = counter - w.top, behind = w.top - counter
    if not w.has_newest or not (0 < ahead <= MAX_JUMP or behind < WINDOW):
        restarted = w.has_newest
        memset(w.bits, 0, sizeof(w.bits))
        w.top = counter
        window_mark(w, counter)
        if restarted:
            w.floor = ts
        w.newest = ts
        w.has_newest = 1
        return restarted
    if 0 < ahead <= MAX_JUMP:
        window_advance(w, counter, ahead)
    else:
        window_mark(w, counter)
    if ts > w.newest:
        w.newest = ts
    return 0


cdef void window_restore(Window *w, int64_t floor) noexcept nogil:
    """Saved state after a receiver restart (protocol/replay.py ReplayWindow.restore)."""
    memset(w, 0, sizeof(Window))
    w.has_newest = 1
    w.newest = w.floor = floor


cdef class NativeWindow:
    """The C replay window, exposed for tests against protocol/replay.py."""

    cdef Window w

    def __cinit__(self):
        memset(&self.w, 0, sizeof(Window))

    def check(self, int64_t ts, uint32_t counter):
        return window_check(&self.w, ts, counter)

    def restore(self, int64_t floor):
        window_restore(&self.w, floor)

    def accept(self, int64_t ts, uint32_t counter):
        return bool(window_accept(&self.w, ts, counter))

    def mark_untimed(self, uint32_t counter):
        return window_mark_untimed(&self.w, counter)
