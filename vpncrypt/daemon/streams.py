"""TCP connections for networks that drop UDP: the server's `listen_tcp` and a client's
`transport = tcp` (docs/PROTOCOL.md §4.1, docs/OPERATING.md "TCP transport").

A connection is only a pipe for frames (protocol/framing.py): every frame authenticates
on its own, exactly as a datagram, and a connection is an endpoint like a UDP address,
written ("stream", fd) in both loops. This module owns the sockets and every bound an
unauthenticated peer meets, since the kernel's socket filter has nothing to say about
TCP: the kernel's SYN cookies and TCP_DEFER_ACCEPT (a connection that sends nothing is
never handed to us), an accept rate and a cap on connections not yet authenticated, a
few seconds for them to authenticate, a read buffer of one read plus one frame. What
the tunnel sends goes out as it comes or not at all: the send buffer is short and a
full one drops whole frames, because TCP inside TCP must not queue (the inner flows
retransmit; a queue only adds delay).
"""

import os
import selectors
import socket
import time

from ..protocol import framing
from ..protocol.bucket import Bucket
from .fastpath import SE_CLOSED, SE_GARBAGE
from .logs import kv, log

ACCEPT_RATE = 50.0  # new connections a second (burst as many)
MAX_UNAUTHENTICATED = 128  # open connections that have not authenticated yet
UNAUTH_IDLE = 5.0  # seconds a connection may take to authenticate
IDLE_CLOSE = 180.0  # an authenticated connection silent this long is closed
READ_SIZE = 1 << 18
SNDBUF = 1 << 18  # bytes the kernel may queue towards a peer
DEFER_ACCEPT = 5  # seconds (TCP_DEFER_ACCEPT, Linux)
_NAMES = {}  # fd -> "tcp:host:port", for the logs


def is_stream(addr) -> bool:
    return addr is not None and addr[0] == "stream"


def name_of(addr) -> str:
    return _NAMES.get(addr[1], f"tcp:fd{addr[1]}")


class Conn:
    __slots__ = ("sock", "fd", "addr", "partial", "opened", "last_rx", "authenticated", "rest")

    def __init__(self, sock, peer):
        self.sock, self.fd = sock, sock.fileno()
        self.addr = ("stream", self.fd)
        self.partial = b""  # the start of a frame the last read cut (under one frame)
        self.opened = self.last_rx = time.monotonic()
        self.authenticated = False
        self.rest = b""  # the Python loop's unsent end of a short write
        host, port = peer[0], peer[1]
        _NAMES[self.fd] = f"tcp:[{host}]:{port}" if ":" in host else f"tcp:{host}:{port}"


class Streams:
    """The daemon's connections. `owner` is the Runtime: its selector, native path,
    handle_datagram (the Python loop) and stream_closed hook."""

    def __init__(self, owner) -> None:
        self.owner = owner
        self.conns: dict[int, Conn] = {}
        self.listener = None
        self.accept_budget = Bucket(ACCEPT_RATE)
        self.accepted = self.closed = self.refused = self.garbage = 0
        # One read buffer for every connection: a connection keeps only a cut frame.
        self.buf = bytearray(READ_SIZE + framing.MAX_FRAME)

    # -- server: the listener ----------------------------------------------------------------

    def listen(self, host: str, port: int):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if hasattr(socket, "TCP_DEFER_ACCEPT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, DEFER_ACCEPT)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
        self.listener = sock
        return sock

    def start(self) -> None:
        if self.listener is not None:
            self.owner.selector.register(self.listener, selectors.EVENT_READ, self.on_accept)

    def on_accept(self) -> None:
        for _ in range(64):
            try:
                sock, peer = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE and the like: the backlog keeps them
                if self.owner.limiter.allow(("accept", e.errno), time.monotonic()) is not None:
                    log.warning(kv("tcp-accept-failed", error=e.strerror))
                return
            waiting = sum(not c.authenticated for c in self.conns.values())
            if waiting >= MAX_UNAUTHENTICATED or not self.accept_budget.take(time.monotonic()):
                self.refused += 1
                sock.close()
                continue
            self.accepted += 1
            self.add(sock, peer)

    # -- both ----------------------------------------------------------------------------------

    def add(self, sock, peer) -> Conn:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
        conn = Conn(sock, peer)
        self.conns[conn.fd] = conn
        if self.owner.native is not None:
            self.owner.native.engine.stream_open(conn.fd)  # its reader thread reads it
        else:
            self.owner.selector.register(sock, selectors.EVENT_READ, lambda: self.on_readable(conn))
        return conn

    def attach_native(self) -> None:
        """A (re)built engine learns the connections already open, and reads them from
        now on (with the start of a frame a read before it cut)."""
        for conn in self.conns.values():
            try:
                self.owner.selector.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
            self.owner.native.engine.stream_open(conn.fd, conn.partial)
            conn.partial = b""

    def detach_native(self) -> None:
        """Before an engine goes: what its reader holds of a frame stays with us."""
        for conn in self.conns.values():
            conn.partial = self.owner.native.engine.stream_partial(conn.fd)

    def ended(self, addr, why: int, err: int) -> None:
        """The engine's reader saw connection `addr` end (EV_STREAM)."""
        conn = self.conns.get(addr[1]) if is_stream(addr) else None
        if conn is None:
            return
        if why == SE_GARBAGE:
            self.garbage += 1
            self.close(conn, "not a stream of frames (impossible length)")
        elif why == SE_CLOSED:
            self.close(conn, "closed by the peer")
        else:
            self.close(conn, os.strerror(err) if err else "error")

    def on_readable(self, conn: Conn) -> None:
        """The Python loop's read (the native loop reads in its own thread)."""
        buf, kept = self.buf, len(conn.partial)
        buf[:kept] = conn.partial
        try:
            n = conn.sock.recv_into(memoryview(buf)[kept:], READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self.close(conn, e.strerror or "error")
            return
        if not n:
            self.close(conn, "closed by the peer")
            return
        have = kept + n
        conn.last_rx = time.monotonic()
        try:
            packets, used = framing.split(memoryview(buf)[:have])
        except framing.FrameError:
            used = -1
        else:
            for packet in packets:
                self.owner.handle_datagram(packet, conn.addr)
                if conn.fd not in self.conns:  # closed meanwhile (a newer connection)
                    return
        if used < 0:
            self.garbage += 1
            self.close(conn, "not a stream of frames (impossible length)")
            return
        conn.partial = bytes(buf[used:have])

    def authenticated(self, addr) -> None:
        conn = self.conns.get(addr[1]) if is_stream(addr) else None
        if conn is not None:
            conn.authenticated = True

    def send(self, addr, packet) -> bool:
        """A sealed packet as a frame on the connection `addr`: sent whole, or not at all
        when the connection's send buffer is full."""
        conn = self.conns.get(addr[1])
        if conn is None:
            return False
        native = self.owner.native
        if native is not None:
            return native.engine.stream_send(conn.fd, bytes(packet))
        if conn.rest and not self._flush(conn):
            return False
        data = framing.frame(bytes(packet))
        try:
            sent = conn.sock.send(data)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return False
        conn.rest = data[sent:]
        return True

    def _flush(self, conn: Conn) -> bool:
        try:
            sent = conn.sock.send(conn.rest)
        except (BlockingIOError, InterruptedError, OSError):
            return False
        conn.rest = conn.rest[sent:]
        return not conn.rest

    def tick(self, mono: float) -> None:
        native = self.owner.native
        for conn in list(self.conns.values()):
            if native is not None:
                conn.last_rx = max(conn.last_rx, native.engine.stream_last_rx(conn.fd))
            if not conn.authenticated and mono - conn.opened > UNAUTH_IDLE:
                self.close(conn, f"not authenticated within {UNAUTH_IDLE:g} s")
            elif mono - conn.last_rx > IDLE_CLOSE:
                self.close(conn, f"silent for {IDLE_CLOSE:g} s")
            elif native is not None:
                native.engine.stream_flush(conn.fd)
            elif conn.rest:
                self._flush(conn)

    def close(self, conn: Conn, why: str) -> None:
        if self.conns.pop(conn.fd, None) is None:
            return
        self.closed += 1
        if self.owner.native is not None:
            self.owner.native.engine.stream_close(conn.fd)  # before the fd can be reused
        try:
            self.owner.selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        log.debug("%s closed: %s", _NAMES.get(conn.fd, conn.fd), why)
        self.owner.stream_closed(conn.addr, conn.authenticated, why)
        _NAMES.pop(conn.fd, None)
        conn.sock.close()

    def close_all(self) -> None:
        for conn in list(self.conns.values()):
            self.close(conn, "stopping")
        if self.listener is not None:
            try:
                self.owner.selector.unregister(self.listener)
            except (KeyError, ValueError):
                pass
            self.listener.close()
            self.listener = None

    def status(self) -> dict:
        return {"open": len(self.conns),
                "authenticated": sum(c.authenticated for c in self.conns.values()),
                "accepted": self.accepted, "closed": self.closed, "refused": self.refused,
                "garbage": self.garbage}


def connect(family, sockaddr, timeout: float = 5.0):
    """A blocking connect (the client runs it in a thread); the socket or an OSError."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(sockaddr)
        return sock
    except OSError:
        sock.close()
        raise

