"""Native engines on loopback for tests: LoopbackEngines (real UDP sockets, a datagram
socketpair standing in for each TUN), the extension itself (native()), and minimal
inner IPv4/IPv6 packets."""

from cryptopaths import context_class


def native():
    context_class("native")  # fails in CI / skips locally when the extension is missing
    from vpncrypt import _fast

    return _fast


def _ipv4(src: bytes, dst: bytes, payload: bytes) -> bytes:
    import struct

    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0x4000, 64, 17, 0,
                         src, dst)
    return header + payload


def _ipv6(src: bytes, dst: bytes, payload: bytes) -> bytes:
    import struct

    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), 17, 64, src, dst) + payload


class LoopbackEngines:
    """Native engines on loopback UDP with a datagram socketpair standing in for each
    engine's TUN device (one packet per read and write, as a TUN gives), one event socket
    and one stop pipe; a context manager that starts every loop (the TCP reader too) and
    stops and closes it all at exit."""

    def __init__(self, frame_prefix: int = 0):
        import os
        import socket

        self.fast = native()
        self.frame_prefix = frame_prefix
        self.engines, self.socks, self.tuns, self.threads = {}, {}, {}, []
        self.events = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.events[0].setblocking(False)
        self.stop_r, self.stop_w = os.pipe()

    def add(self, name: str, server: bool, rcvbuf: int = 0):
        """An engine called `name`; its UDP socket is socks[name], and tuns[name][1] is
        the test's end of its TUN."""
        import socket

        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if rcvbuf:  # room for a whole burst: what the kernel drops, the engine never sees
            try:
                sock.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)  # SO_RCVBUFFORCE (root)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        tun = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        tun[0].setblocking(False)
        self.socks[name], self.tuns[name] = sock, tun
        self.engines[name] = self.fast.Engine(server, tun[0].fileno(), sock.fileno(),
                                              socket.AF_INET, self.events[0].fileno(),
                                              self.stop_r, self.frame_prefix, 7, 0)
        return self.engines[name]

    def port(self, name: str) -> int:
        return self.socks[name].getsockname()[1]

    def __enter__(self):
        import threading

        self.threads = [threading.Thread(target=run) for e in self.engines.values()
                        for run in (e.run_tun_to_udp, e.run_udp_to_tun, e.run_streams)]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        import os

        os.write(self.stop_w, b"x")
        for t in self.threads:
            t.join(10)
        for sock in [*self.socks.values(), *self.events,
                     *(s for pair in self.tuns.values() for s in pair)]:
            sock.close()
        os.close(self.stop_r)
        os.close(self.stop_w)
