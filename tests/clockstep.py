"""Step a process's wall clock at run time, leaving its monotonic clock alone (for tests).

A tiny LD_PRELOAD library, built on first use with the system C compiler, that adds an
offset to CLOCK_REALTIME (clock_gettime, gettimeofday, time) and reads that offset
from a file (a number of seconds, e.g. `+600` or `-600`) at most every 50 ms, so a
test can make a running daemon's clock jump:

    env = clockstep.env(path)        # LD_PRELOAD + CLOCKSTEP_FILE, offset 0
    ... start the process with env ...
    clockstep.set_offset(path, 600)  # its wall clock is now 10 minutes ahead

This is what an NTP step or an operator's `date -s` does to a real host: the wall
clock jumps, CLOCK_MONOTONIC does not.

Why not libfaketime: libfaketime 0.9.10 (Debian 12) re-reads FAKETIME_TIMESTAMP_FILE,
but with FAKETIME_DONT_FAKE_MONOTONIC=1 its clock_nanosleep(TIMER_ABSTIME) fails with
EINVAL, so Python's time.sleep() raises and so does subprocess.run(timeout=...), which
the daemon uses to configure its interface. Without that variable the monotonic clock
jumps along with the wall clock, which no real clock does (a jump back by 600 s stalls
the daemon's timer loop for 600 s, a test artefact rather than a finding).
"""

import hashlib
import os
import subprocess
import tempfile

SOURCE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

typedef int (*cg_t)(clockid_t, struct timespec *);
static cg_t real_cg;
static volatile long long offset_ns;      /* added to CLOCK_REALTIME */
static volatile long long next_read_ns;   /* CLOCK_MONOTONIC_RAW ns of the next file read */

static cg_t real(void) {
    if (!real_cg)
        real_cg = (cg_t)dlsym(RTLD_NEXT, "clock_gettime");
    return real_cg;
}

static void refresh(void) {
    struct timespec m;
    real()(CLOCK_MONOTONIC_RAW, &m);
    long long now = (long long)m.tv_sec * 1000000000LL + m.tv_nsec;
    if (now < next_read_ns)
        return;
    next_read_ns = now + 50000000LL;
    const char *path = getenv("CLOCKSTEP_FILE");
    if (!path)
        return;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    char buf[64];
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return;
    buf[n] = 0;
    offset_ns = (long long)(strtod(buf, NULL) * 1e9);
}

static void shift(struct timespec *ts) {
    long long t = (long long)ts->tv_sec * 1000000000LL + ts->tv_nsec + offset_ns;
    ts->tv_sec = t / 1000000000LL;
    ts->tv_nsec = t % 1000000000LL;
    if (ts->tv_nsec < 0) {
        ts->tv_nsec += 1000000000LL;
        ts->tv_sec -= 1;
    }
}

int clock_gettime(clockid_t clk, struct timespec *ts) {
    int r = real()(clk, ts);
    if (r == 0 && (clk == CLOCK_REALTIME || clk == CLOCK_REALTIME_COARSE)) {
        refresh();
        shift(ts);
    }
    return r;
}

int gettimeofday(struct timeval *restrict tv, void *restrict tz) {
    struct timespec ts;
    (void)tz;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return -1;
    if (tv) {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    return 0;
}

time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out)
        *out = ts.tv_sec;
    return ts.tv_sec;
}
"""


def library() -> str:
    """Path of the built shim (cached by source hash under the system temp directory)."""
    digest = hashlib.sha256(SOURCE.encode()).hexdigest()[:16]
    out_dir = os.path.join(tempfile.gettempdir(), "vpncrypt-clockstep")
    os.makedirs(out_dir, exist_ok=True)
    lib = os.path.join(out_dir, f"clockstep-{digest}.so")
    if not os.path.exists(lib):
        # Private names until the final rename: parallel test runs may build it at once.
        src = f"{lib[:-3]}.{os.getpid()}.c"
        with open(src, "w") as f:
            f.write(SOURCE)
        tmp = f"{lib}.{os.getpid()}.tmp"
        try:
            subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", tmp, src, "-ldl"],
                           check=True, capture_output=True, text=True, timeout=60)
            os.replace(tmp, lib)
        finally:
            os.unlink(src)
    # The daemon drops to `nobody` after set-up; the library is only loaded at exec.
    os.chmod(lib, 0o755)
    return lib


def set_offset(path: str, seconds: float) -> None:
    """Make every process started with env(path) see its wall clock `seconds` off."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{seconds:+.3f}\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def env(path: str, seconds: float = 0.0) -> dict:
    """Environment additions that run a process under the shim, starting at `seconds`."""
    set_offset(path, seconds)
    return {"LD_PRELOAD": library(), "CLOCKSTEP_FILE": path}
