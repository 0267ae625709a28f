"""The native data path (vpncrypt._fast.Engine) from the daemon's side: threads, events, senders.

With the extension built, DATA packets never pass through Python: two native loops
(TUN -> UDP and UDP -> TUN), and a third that reads TCP connections where there are
any (listen_tcp, transport = tcp), run in threads that release the GIL for good. The
daemon's main loop keeps the rest: timers, the control socket, and the packets the
engine hands up (keepalives, time sync, endpoint changes, samples of drops), which the
sans-IO core decides exactly as in the Python loop. VPNCRYPT_LOOP=python keeps the
Python loop even when the extension is there.
"""

import _thread
import os
import socket
import sys

from ..protocol import wire

EV_CONTROL, EV_ENDPOINT, EV_DROP, EV_TOO_BIG, EV_STREAM = 1, 2, 3, 4, 5
# EV_STREAM's reasons: how the engine's reader saw a TCP connection end (_fast_stream.pxi).
SE_CLOSED, SE_ERROR, SE_GARBAGE = 1, 2, 3
UNTRUSTED = 0x80  # in an EV_CONTROL's kind: a time request from no run the window knows
# The Engine's offload flags (_fast.pyx OFF_*) and the Linux UDP socket options behind two.
OFF_VNET, OFF_GSO, OFF_GRO, OFF_USO = 1, 2, 4, 8
SOL_UDP, UDP_SEGMENT, UDP_GRO = 17, 103, 104


def wanted(crypto_path: str) -> bool:
    return crypto_path == "native" and os.environ.get("VPNCRYPT_LOOP", "native") != "python"


class EngineSender:
    """A protocol Sender whose counter is the engine's, shared with the native loop."""

    __slots__ = ("engine", "index", "direction", "epochs")

    def __init__(self, engine, index: int, from_server: bool, epochs=None):
        self.engine, self.index = engine, index
        self.direction = wire.FROM_SERVER if from_server else 0
        self.epochs = epochs  # a ratcheting client's (the engine holds their keys)

    def seal(self, kind, body, now: float) -> bytes:
        ptype = kind | self.direction
        timestamp = 0 if ptype in wire.UNTIMED else int(now)
        return self.engine.seal(self.index, ptype, timestamp, bytes(body))


def socket_offloads(sock, tun_offloads) -> int:
    """The Engine's offload flags: none without a virtio-header TUN; else OFF_VNET, OFF_USO
    if the TUN took UDP super-packets, and the UDP offloads this kernel has for `sock`
    (GRO is switched on)."""
    if not tun_offloads:
        return 0
    flags = OFF_VNET | (OFF_USO if "uso4" in tun_offloads else 0)
    try:
        sock.getsockopt(SOL_UDP, UDP_SEGMENT)  # Linux >= 4.18
        flags |= OFF_GSO
    except OSError:
        pass
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)  # Linux >= 5.0
        flags |= OFF_GRO
    except OSError:
        pass
    return flags


class NativePath:
    """Owns the Engine, its threads, the event socket and the stop pipe. `streams`: the
    daemon has TCP connections (the reader thread runs)."""

    def __init__(self, tun, sock, server: bool, server_id: int, streams: bool = False):
        from .. import _fast

        self.decode = _fast.Engine.decode_event
        self.events, events_w = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        events_w.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        self.events.setblocking(False)
        self._events_w = events_w
        self._stop_r, self._stop_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.engine = _fast.Engine(server, tun.fd, sock.fileno(), sock.family,
                                   events_w.fileno(), self._stop_r, tun.frame_prefix, server_id,
                                   socket_offloads(sock, tun.offloads))
        self.threads = []
        self.tun_offloads = tun.offloads
        self.streams = streams

    def offloads_in_use(self) -> list:
        flags = self.engine.offload
        return [name for name in self.tun_offloads if name != "vnet-hdr"] + [
            name for bit, name in ((OFF_GSO, "udp-gso"), (OFF_GRO, "udp-gro")) if flags & bit]

    def describe(self) -> str:
        """"native loop" and the offloads in use, for the start-up line."""
        none = "none" if sys.byteorder == "little" else "none on a big-endian CPU"
        return f"native loop (offloads: {', '.join(self.offloads_in_use()) or none})"

    def offload_status(self) -> dict:
        """What `show` reports: the offloads in use and how much they carried."""
        e = self.engine
        return {"in_use": self.offloads_in_use(),
                "tso_packets": e.tso_packets, "tso_segments": e.tso_segments,
                "gso_sends": e.gso_sends,
                "gro_messages": e.gro_messages, "gro_datagrams": e.gro_datagrams,
                "gro_pauses": e.gro_pauses,
                "coalesced_packets": e.coalesced_packets,
                "coalesced_segments": e.coalesced_segments}

    def start(self) -> None:
        # _thread, not threading: the daemon needs no more than start and join, and
        # threading costs ~0.2 MB of resident memory. Each loop releases its lock at exit.
        self.threads = [_start(self.engine.run_tun_to_udp), _start(self.engine.run_udp_to_tun)]
        if self.streams:
            self.threads.append(_start(self.engine.run_streams))

    def stop(self) -> None:
        if not self.threads:
            return
        os.write(self._stop_w, b"x")
        for done in self.threads:
            done.acquire()
        self.threads = []
        try:
            while os.read(self._stop_r, 64):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        self.stop()
        self.events.close()
        self._events_w.close()
        os.close(self._stop_r)
        os.close(self._stop_w)

    def drain(self, limit: int = 256):
        """Decoded events waiting on the event socket: (kind, reason, client id, addr, packet)."""
        out = []
        for _ in range(limit):
            try:
                raw = self.events.recv(1 << 17)
            except (BlockingIOError, InterruptedError):
                break
            event = self.decode(raw)
            if event is not None:
                out.append(event)
        return out

    def merged_counters(self, counters, index: int) -> dict:
        """A Counters' JSON form plus what the engine counted for peer `index`."""
        from ..protocol.wire import Drop

        doc = counters.as_json()
        stats = self.engine.peer_stats(index)
        for key in ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes"):
            doc[key] += stats[key]
        drops = dict(doc["drops"])
        for reason, n in stats["drops"].items():
            label = Drop(reason).label
            drops[label] = drops.get(label, 0) + n
        doc["drops"] = dict(sorted(drops.items()))
        return doc


def _start(loop):
    """Run loop() in a new thread; returns a lock that is released when it returns."""
    done = _thread.allocate_lock()
    done.acquire()

    def run():
        try:
            loop()
        finally:
            done.release()

    _thread.start_new_thread(run, ())
    return done
