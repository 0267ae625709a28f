"""The receive side of the daemon's UDP socket in the kernel: a classic BPF socket
filter that pre-screens datagrams, and a receive buffer of the size the daemon asks for.

This module owns the filter program, attaching it (SO_ATTACH_FILTER), and forcing the
receive buffer size (SO_RCVBUFFORCE); Linux only, elsewhere `setup` does nothing.
runtime.Runtime.make_socket calls `setup(sock, role, size)` once per socket it makes.
VPNCRYPT_SOCKFILTER=off in the daemon's environment leaves the filter off (to compare,
or to see every datagram counted by the daemon; documented in vpncryptd(8)).

Receive buffer: SO_RCVBUF is capped by net.core.rmem_max (212992 bytes on a stock
Debian, so a 4 MiB request silently became 416 KiB); SO_RCVBUFFORCE, which needs
CAP_NET_ADMIN (root at start-up; the daemon keeps that capability after dropping
privileges), is not. Under a garbage flood a small buffer overflows and the kernel drops
legit datagrams with the garbage (bench/flood.py, medians on a shared 2-vCPU VM: with
the stock-capped buffer the legit transfer kept 25% of its unflooded throughput without
the filter and 33% with it; with the full 8 MiB, 48% and 44%, the difference within the
noise).

The filter drops, in the kernel and before the datagram is queued on the socket (so it
takes no room in the receive buffer and costs the daemon no system call):

  - datagrams shorter than wire.MIN_PACKET (8-byte header + 16-byte tag + 1 byte),
  - datagrams whose first byte, the packet type, is not one the receiving role accepts
    (wire.CLIENT_TYPES at the server, wire.SERVER_TYPES at a client), and
  - at a server that gives its client ids, datagrams naming an id outside them: the ids
    as at most MAX_RANGES ranges (with more, the nearest ranges are merged: a superset,
    so a configured id is never dropped; an unconfigured one inside a merged gap is left
    to the daemon).

That is exactly what the daemon would have dropped as "malformed" (the too-short half of
it), "bad-type" and "unknown-client": everything else (timestamps, replays, tags, the
upper length limit) is still decided by the daemon, which checks every packet as before
(pins, below, aside). The filter is a pre-screen, never the only check.

Accounting: what the filter drops never reaches the daemon, so its drop counters
(`vpncrypt show`, the SIGUSR1 dump, the drop log lines) do not include it. The kernel
counts it: the socket's "drops" column in /proc/net/udp and /proc/net/udp6 (together
with receive-buffer overflows), and the namespace's Udp InErrors in /proc/net/snmp
(InErrors less RcvbufErrors and InCsumErrors is what socket filters dropped).

Pinned clients (server only; when, and the sample, are daemon/pinning.py's policy): a
client that many datagrams name from addresses other than its endpoint (a forgery or
replay flood) may be pinned to its endpoint. For a pinned client, DATA and keepalives
(time requests never: a client with a wrong clock asks from wherever it is) from any
other source address or port are kept with probability 1/sample (the kernel's random
number; sample a power of two) and dropped otherwise, in the kernel; from the endpoint
they all pass. A pinned client without an endpoint has every such datagram sampled.
What is kept still meets the daemon's checks and its roaming budget. The program grows
by at most 20 instructions per pin (IPv6).

UDP GRO (a socket option the daemon may set so that the kernel hands it several
datagrams of one flow coalesced into one buffer): the filter then runs once on the
coalesced buffer, whose first bytes are the first datagram's header and whose length is
the sum of all. The type test is right for the first datagram and the length test can
only let more through, never drop a good one; the daemon still checks every segment
after splitting them. The id test and a pin judge the whole buffer by its first
datagram's id and their common source: GRO only coalesces one sender's datagrams, and a
client names no id but its own. The filter stays correct with GRO.
"""

import ipaddress
import os
import socket
import struct
import sys

from ..protocol import wire
from ..protocol.aead import native_module
from .logs import log
from .pinning import PINNED_KINDS

SO_ATTACH_FILTER = 26  # <asm-generic/socket.h>; not in Python's socket module
SO_RCVBUFFORCE = 33

# Classic BPF (<linux/filter.h>): instruction = code (u16), jt (u8), jf (u8), k (u32).
_INSN = struct.Struct("=HBBI")
_LD_LEN = 0x80  # BPF_LD | BPF_W | BPF_LEN: A = length of the packet
_LDB_ABS = 0x30  # BPF_LD | BPF_B | BPF_ABS: A = byte at offset k
_JGE = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_JEQ = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGT = 0x25  # BPF_JMP | BPF_JGT | BPF_K
_RET = 0x06  # BPF_RET | BPF_K: keep k bytes (0: drop)
_LDH_ABS = 0x28  # BPF_LD | BPF_H | BPF_ABS: A = 16-bit big-endian value at offset k
_LDW_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS: A = 32-bit big-endian value at offset k
_AND = 0x54  # BPF_ALU | BPF_AND | BPF_K
_KEEP_ALL = 0xFFFFFFFF
_NET = -0x100000  # SKF_NET_OFF: offsets from the IP header
_RANDOM = -0x1000 + 56  # SKF_AD_OFF + SKF_AD_RANDOM: A = a random 32-bit number
MAX_INSNS = 4096  # BPF_MAXINSNS
MAX_RANGES = 64  # client id ranges in the filter: 128 instructions

# A UDP socket's filter sees the datagram from its UDP header on (the kernel runs it
# before it strips the header): offsets and lengths below count those 8 bytes.
UDP_HEADER = 8


def accepted_types(role: str) -> frozenset:
    """The type bytes the `role` ("server" or "client") receives."""
    if role == "server":
        return wire.CLIENT_TYPES
    if role == "client":
        return wire.SERVER_TYPES
    raise ValueError(f"unknown role {role!r}")


def id_ranges(ids, limit: int = MAX_RANGES) -> list[tuple[int, int]]:
    """`ids` as at most `limit` sorted (first, last) ranges covering every one of them:
    runs of consecutive ids, then the smallest gaps closed until few enough are left."""
    runs: list[list[int]] = []
    for cid in sorted(set(ids)):
        if runs and cid == runs[-1][1] + 1:
            runs[-1][1] = cid
        else:
            runs.append([cid, cid])
    if len(runs) > limit:
        gaps = sorted(range(len(runs) - 1), key=lambda i: runs[i + 1][0] - runs[i][1])
        closed = set(gaps[:len(runs) - limit])
        merged = [runs[0]]
        for i in range(len(runs) - 1):
            if i in closed:
                merged[-1] = [merged[-1][0], runs[i + 1][1]]
            else:
                merged.append(runs[i + 1])
        runs = merged
    return [(first, last) for first, last in runs]


def program(role: str, pins: dict | None = None, ids=None) -> list[tuple[int, int, int, int]]:
    """The filter for `role`, as (code, jt, jf, k) instructions. With UDP GRO it sees a
    coalesced buffer: the first datagram's type byte and the total length (see above).
    `pins` (server): {client id: (endpoint (host, port, ...) or None, sample)}; `ids`
    (server): the configured client ids (None: not screened)."""
    types = sorted(int(t) for t in accepted_types(role))
    n = len(types)
    insns = [
        (_LD_LEN, 0, 0, 0),
        # Shorter than the shortest packet: to "drop", past the load and the n tests.
        (_JGE, 0, n + 1, UDP_HEADER + wire.MIN_PACKET),
        (_LDB_ABS, 0, 0, UDP_HEADER),
    ]
    for i, t in enumerate(types):
        # Equal: jump over the remaining tests and the drop, to what follows.
        insns.append((_JEQ, n - i, 0, t))
    insns.append((_RET, 0, 0, 0))
    if (pins or ids is not None) and role != "server":
        raise ValueError("only a server screens client ids and pins clients")
    if ids is not None:
        ranges = id_ranges(ids)
        insns.append((_LDH_ABS, 0, 0, UDP_HEADER + 1))  # the client id
        for i, (first, last) in enumerate(ranges):
            # From the pair's first test, the drop below is `far` ahead; from its second,
            # the instruction past the drop is. Below this range (and above the one
            # before): a gap, drop. Above it: the next pair (or, after the last, the
            # drop). Inside: on, past the drop.
            far = 2 * (len(ranges) - i) - 1
            insns += [(_JGE, 0, far, first), (_JGT, 0, far, last)]
        insns.append((_RET, 0, 0, 0))
    if pins:
        kinds = sorted(int(k) for k in PINNED_KINDS)
        insns.append((_LDB_ABS, 0, 0, UDP_HEADER))  # the type byte again
        for i, t in enumerate(kinds):
            insns.append((_JEQ, len(kinds) - i, 0, t))  # a pinned kind: past the keep
        insns += [(_RET, 0, 0, _KEEP_ALL),  # (time requests)
                  (_LDH_ABS, 0, 0, UDP_HEADER + 1)]  # the client id
        for cid, (endpoint, sample) in sorted(pins.items()):
            block = _pin_block(endpoint, sample)
            insns.append((_JEQ, 0, len(block), cid))
            insns += block
    insns.append((_RET, 0, 0, _KEEP_ALL))
    return insns


def _k(offset: int) -> int:
    return offset & 0xFFFFFFFF  # negative offsets (the IP header, ancillary data) as u32


def _pin_block(endpoint, one_in: int) -> list[tuple[int, int, int, int]]:
    """A pinned client's datagram: kept if from `endpoint`, else 1 in `one_in`."""
    if one_in < 1 or one_in & (one_in - 1):
        raise ValueError(f"sample {one_in} is not a power of two")
    sample = [(_LDW_ABS, 0, 0, _k(_RANDOM)), (_AND, 0, 0, one_in - 1),
              (_JEQ, 0, 1, 0), (_RET, 0, 0, _KEEP_ALL), (_RET, 0, 0, 0)]
    if endpoint is None:
        return sample
    addr = ipaddress.ip_address(endpoint[0].split("%")[0])
    if addr.version == 6 and addr.ipv4_mapped:  # a dual-stack socket's IPv4 client
        addr = addr.ipv4_mapped
    if addr.version == 4:
        words, version, first = [int(addr)], 0x40, 12   # source address at byte 12
    else:
        packed = addr.packed
        words = [int.from_bytes(packed[i:i + 4], "big") for i in range(0, 16, 4)]
        version, first = 0x60, 8
    # Each test is (load, compare); a mismatch jumps to `sample`, past what is left.
    tests = [((_LDB_ABS, 0, 0, _k(_NET)), (_AND, 0, 0, 0xF0), version)]
    tests += [((_LDW_ABS, 0, 0, _k(_NET + first + 4 * i)), None, w) for i, w in enumerate(words)]
    tests.append(((_LDH_ABS, 0, 0, 0), None, endpoint[1]))  # the UDP source port
    body = []
    for load, alu, value in tests:
        body.append(load)
        if alu:
            body.append(alu)
        body.append([_JEQ, 0, None, value])
    body.append((_RET, 0, 0, _KEEP_ALL))
    for i, insn in enumerate(body):
        if isinstance(insn, list):
            insn[2] = len(body) - i - 1  # to the first instruction of `sample`
            body[i] = tuple(insn)
    return body + sample


def attach(sock: socket.socket, role: str, pins: dict | None = None, ids=None) -> bool:
    """Attach `role`'s filter to `sock` (replacing the one it has: the kernel swaps them
    atomically), with `pins` and `ids` (see program). True if attached; on a system without socket
    filters, False; if the kernel refuses it, a warning and False (the daemon checks
    every packet anyway, so it runs on without)."""
    if (not sys.platform.startswith("linux") or role not in ("server", "client")
            or os.environ.get("VPNCRYPT_SOCKFILTER") == "off"):
        return False
    code = b"".join(_INSN.pack(*insn) for insn in program(role, pins, ids))
    try:
        _setsockopt_filter(sock, code)
    except OSError as e:
        log.warning("cannot attach the socket filter (%s): short and wrong-type datagrams "
                    "reach the daemon and are dropped there", e.strerror)
        return False
    return True


def _native_attach():
    """The extension's attach_filter(fd, code), or None without the extension."""
    fast = native_module()
    return None if fast is None else fast.attach_filter


def _setsockopt_filter(sock: socket.socket, code: bytes) -> None:
    """SO_ATTACH_FILTER takes a pointer to the program: the native extension passes it
    (ctypes would cost ~0.5 MB of resident memory for good); ctypes without it."""
    native = _native_attach()
    if native is not None:
        native(sock.fileno(), code)
        return
    import ctypes

    buf = ctypes.create_string_buffer(code, len(code))
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; } (native layout)
    fprog = struct.pack("@HP", len(code) // _INSN.size, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def force_receive_buffer(sock: socket.socket, size: int) -> int:
    """Set the receive buffer to `size` bytes (the kernel doubles it for its bookkeeping)
    whatever net.core.rmem_max says, when we may (CAP_NET_ADMIN). Returns what the socket
    got (SO_RCVBUF, as the kernel reports it: doubled)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)  # capped by rmem_max
    got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    if got < 2 * size:
        log.warning("UDP receive buffer is %d KiB, not the %d KiB asked for (no CAP_NET_ADMIN, "
                    "and net.core.rmem_max is lower): under a flood, legit packets are lost "
                    "sooner", got // 1024, 2 * size // 1024)
    return got


def setup(sock: socket.socket, role: str, receive_buffer: int) -> bool:
    """What make_socket does to every socket: force the receive buffer, attach the filter.
    True if the filter is attached."""
    if not sys.platform.startswith("linux"):
        return False
    force_receive_buffer(sock, receive_buffer)
    return attach(sock, role)
