"""What the server and client daemons share: TUN and socket set-up, the event loop,
signals, counters and drop logging. The role-specific packet handling lives in
server.py and client.py; the protocol decisions in vpncrypt.protocol.
"""

import _thread
import collections
import gc
import ipaddress
import errno
import os
import selectors
import signal
import socket
import time

from .. import config as configmod
from .. import control, tun
from ..protocol import aead, wire
from ..protocol.wire import Drop
from . import fastpath
from .logs import RateLimiter, kv, log
from . import sockfilter
from . import streams
from .keystate import Ratchets
from .replaystate import ReplayStateError, ReplayStateFiles

BATCH = 64  # packets drained per readiness event, so neither side starves the other
TICK = 0.5  # seconds between timer checks (and replay-state saves)
REPLAY_MARGIN = 2  # seconds added to the saved newest timestamp on restore
SOCKET_BUFFER = 4 << 20
STEP_LOGGED = 1.0  # seconds: a wall clock jump at least this large is logged
# The protocol clock's steady part: never stepped, and on Linux it counts suspended
# time too (the native loop reads the same clock: _fast_syscalls.pxi VC_STEADY).
STEADY = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


def steady() -> float:
    return time.clock_gettime(STEADY)


class FatalError(Exception):
    """Start-up failure with a one-line message; the CLI prints it and exits non-zero."""


def check_state_dir(path: str) -> None:
    """The replay state and control socket must not be writable by anyone but us: not by
    the unprivileged user we switch to either, which other services may share. A
    directory an older vpncryptd handed to that user is taken back (as root)."""
    st = os.stat(path)
    euid = os.geteuid()
    if st.st_uid != euid and euid == 0:
        try:
            for name in os.listdir(path):
                os.chown(os.path.join(path, name), 0, 0, follow_symlinks=False)
            os.chown(path, 0, 0)
            os.chmod(path, 0o700)
        except OSError as e:
            raise FatalError(f"state directory {path} belongs to uid {st.st_uid} and cannot "
                             f"be taken back: {e.strerror} (chown it to root)") from None
        log.warning("state directory %s belonged to uid %d (an older vpncryptd handed it "
                    "over): taken back by root", path, st.st_uid)
        st = os.stat(path)
    if st.st_uid != euid or st.st_mode & 0o022:
        raise FatalError(f"state directory {path} belongs to uid {st.st_uid} with mode "
                         f"{st.st_mode & 0o7777:04o}: it must be uid {euid}'s, "
                         "writable by it alone (chown it, or remove it to have it made)")


class Counters:
    __slots__ = ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "drops")

    def __init__(self):
        self.rx_packets = self.rx_bytes = self.tx_packets = self.tx_bytes = 0
        self.drops = collections.Counter()

    def as_json(self) -> dict:
        return {"rx_packets": self.rx_packets, "rx_bytes": self.rx_bytes,
                "tx_packets": self.tx_packets, "tx_bytes": self.tx_bytes,
                "drops": {Drop(r).label: n for r, n in sorted(self.drops.items())}}


def flatten(doc: dict) -> dict:
    """A counters document as key=value fields for a log line (drops as drop_<reason>)."""
    out = {k: v for k, v in doc.items() if k != "drops"}
    out.update({f"drop_{reason}": n for reason, n in doc["drops"].items()})
    return out


def add_drops(doc: dict, drops: dict) -> dict:
    """Add {reason code: count} to a counters document's drops."""
    merged = dict(doc["drops"])
    for reason, n in drops.items():
        label = Drop(reason).label
        merged[label] = merged.get(label, 0) + n
    doc["drops"] = dict(sorted(merged.items()))
    return doc


def trim_heap() -> None:
    """Give the C heap's free pages back after start-up or a reload (~0.4 MB with glibc,
    which keeps them otherwise); nothing without the extension."""
    fast = aead.native_module()
    if fast is not None:
        fast.trim_heap()


def overhead(family: int) -> int:
    """Bytes the tunnel adds on the underlay: IP + UDP + vpncrypt."""
    return (40 if family == socket.AF_INET6 else 20) + 8 + wire.OVERHEAD


def format_addr(addr) -> str:
    if streams.is_stream(addr):
        return streams.name_of(addr)
    host, port = addr[0], addr[1]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Runtime:
    """Event loop over a TUN device and a UDP socket. Subclasses implement the handlers."""

    role = "?"

    def __init__(self, config, crypto: str | None = None):
        self.config = config
        self.context_class, self.crypto_path = aead.select(crypto)
        self.selector = selectors.DefaultSelector()
        self.counters = Counters()
        self.limiter = RateLimiter()
        self.stopping = False
        self.reload_requested = False
        self.dump_requested = False
        self.tun = None
        self.sock = None
        self.filtering = False  # the socket filter is attached (daemon/sockfilter.py)
        self.control = None
        self.native = None  # fastpath.NativePath when DATA packets take the native loop
        self._saved_replay = {}
        self.replay_files = None  # ReplayStateFiles, opened before the privilege drop
        self.ratchets = Ratchets(self)  # ratcheting clients' key files and epoch keys
        self.streams = streams.Streams(self)  # TCP connections (listen_tcp, transport = tcp)
        self._wall_offset = None  # wall clock minus steady clock, to notice steps
        # The protocol clock is steady() + clock_base; only the clock rules move the base
        # (the server: protocol/clock.py; the client: time sync).
        self.clock_base = time.time() - steady()
        self.mtu = None
        self.started = time.monotonic()

    # -- set-up -------------------------------------------------------------------------------

    def crypto_description(self) -> str:
        if self.crypto_path == "native":
            from .. import _fast

            return f"native ({_fast.openssl_version()})"
        return "reference (pure Python via cryptography; build the extension for speed)"

    def open_tun(self, mtu: int, routes=()) -> None:
        cfg = self.config
        try:
            self.tun = tun.open_tun(cfg.interface, cfg.offload and fastpath.wanted(self.crypto_path))
            if cfg.configure_interface:
                tun.configure_interface(self.tun.name, list(cfg.addresses), mtu, list(routes))
            else:  # netifd (or ifupdown, or the operator) adds addresses and routes
                tun.set_mtu(self.tun.name, mtu)
        except tun.TunError as e:
            raise FatalError(str(e)) from None
        self.mtu = mtu
        self.our_v4 = next((a.ip.packed for a in cfg.addresses if a.version == 4), None)
        self.our_v6 = next((a.ip.packed for a in cfg.addresses if a.version == 6), None)

    def default_mtu(self, family: int, dest: str | None) -> int:
        try:
            underlay = tun.underlay_mtu(dest)
        except tun.TunError as e:
            log.warning("cannot read the underlay MTU (%s); assuming 1500", e)
            underlay = 1500
        return max(1280, underlay - overhead(family))

    def make_socket(self, family: int, bind) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # dual stack
        # forced rcvbuf, kernel pre-screen
        self.filtering = sockfilter.setup(sock, self.role, SOCKET_BUFFER)
        try:
            sock.bind(bind)
        except OSError as e:
            sock.close()
            raise FatalError(f"cannot bind UDP {format_addr(bind)}: {e.strerror}") from None
        sock.setblocking(False)
        return sock

    def open_control(self) -> None:
        """The control socket (vpncrypt/control.py): root-only, one per interface."""
        path = control.socket_path(self.config.state_dir, self.tun.name)
        try:
            os.makedirs(self.config.state_dir, mode=0o700, exist_ok=True)
            check_state_dir(self.config.state_dir)
            if os.path.exists(path):
                try:
                    control.request(path, {"command": "show"}, timeout=1.0)
                except control.ControlError:
                    os.unlink(path)  # left behind by a daemon that was killed
                else:
                    raise FatalError(f"another vpncryptd already serves {self.tun.name} ({path})")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            umask = os.umask(0o177)  # created 0600: the socket shows keys' owners' data only
            try:
                sock.bind(path)
            finally:
                os.umask(umask)
            sock.listen(8)
            sock.setblocking(False)
        except OSError as e:
            raise FatalError(f"control socket {path}: {e.strerror or e}") from None
        self.control, self.control_path = sock, path
        self.selector.register(sock, selectors.EVENT_READ, self.on_control)

    def on_control(self) -> None:
        import json  # loaded at the first control request, not at start-up (~0.2 MB)

        try:
            conn, _ = self.control.accept()
        except (BlockingIOError, InterruptedError):
            return
        with conn:
            # A slow or silent client may hold the loop for at most this long.
            conn.settimeout(1.0)
            try:
                data = b""
                while not data.endswith(b"\n") and len(data) < control.MAX_REQUEST:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                request = json.loads(data)
                reply = self.handle_control(request if isinstance(request, dict) else {})
            except (ValueError, UnicodeDecodeError):
                reply = {"ok": False, "error": "the request is not a JSON object"}
            except OSError:
                return
            try:
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except OSError:
                pass

    def handle_control(self, request: dict) -> dict:
        command = request.get("command")
        if command == "show":
            return self.status()
        if command == "reload":
            error = self.reload()
            return {"ok": error is None, "error": error} if error else {"ok": True}
        return {"ok": False, "error": f"unknown command {command!r} (show, reload)"}

    def status(self) -> dict:
        """The `show` document: common fields; subclasses add their own."""
        return {
            "version": control.SCHEMA_VERSION,
            "role": self.role,
            "interface": self.tun.name,
            "pid": os.getpid(),
            "crypto": self.crypto_path,
            "loop": "native" if self.native else "python",
            "offloads": self.native.offload_status() if self.native else None,
            "uptime": round(time.monotonic() - self.started, 3),
            "mtu": self.mtu,
            "addresses": [str(a) for a in self.config.addresses],
            "totals": self.totals(),
        }

    def totals(self) -> dict:
        doc = self.counters.as_json()
        if self.native is not None:
            add_drops(doc, self.native.engine.global_drops())
        return doc

    def install_signals(self) -> None:
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, self._on_wake)

        def stop(signum, frame):
            self.stopping = True

        def hup(signum, frame):
            self.reload_requested = True

        def usr1(signum, frame):
            self.dump_requested = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hup)
        signal.signal(signal.SIGUSR1, usr1)

    def _on_wake(self) -> None:
        try:
            while self._wake_r.recv(64):
                pass
        except BlockingIOError:
            pass

    def in_background(self, work, store) -> None:
        """Run `work()` in a thread, hand its result (or the OSError it raised) to
        `store`, then wake the loop, whose `_on_wake` picks it up: a blocking call (a slow
        resolver, a SYN into a black hole) must not stall the tunnel."""
        def run():
            try:
                result = work()
            except OSError as e:
                result = e
            store(result)
            try:
                os.write(self._wake_w.fileno(), b"w")
            except OSError:
                pass

        _thread.start_new_thread(run, ())

    # -- loop ---------------------------------------------------------------------------------

    def main(self, ready=None) -> None:
        """Set up (raising FatalError with a one-line reason), call `ready()`, then serve
        until stopped."""
        # Handlers first: a SIGTERM during set-up must still lead to a clean exit.
        self.install_signals()
        try:
            self.start()
            try:
                self.replay_files = ReplayStateFiles(self.replay_path())
            except ReplayStateError as e:
                raise FatalError(str(e)) from None
            self.ratchets.open_files()
            self.drop_privileges()
        except FatalError:
            for thing in (self.native, self.tun, self.sock, self.control, self.replay_files):
                if thing is not None:
                    thing.close()
            raise
        self.load_replay_state()
        # Everything built so far lives as long as the daemon: keep the collector off it
        # (with thousands of clients, full collections otherwise cost tens of ms a tick).
        gc.collect()
        gc.freeze()
        trim_heap()
        if ready is not None:
            ready()
        self.run()

    # -- replay state across restarts ------------------------------------------------------

    def replay_windows(self):
        """[(key, [Python ReplayWindows], native engine index or None)] for every sender."""
        raise NotImplementedError

    def replay_path(self) -> str:
        return os.path.join(self.config.state_dir, f"{self.tun.name}.replay")

    def newest_timestamps(self) -> dict:
        out = {}
        for key, windows, index in self.replay_windows():
            seen = [w.newest for w in windows if w.newest is not None]
            if index is not None:
                native = self.native.engine.window_newest(index)
                if native is not None:
                    seen.append(native)
            if seen:
                out[str(key)] = max(seen)
        return out

    def save_replay_state(self) -> None:
        """Every tick and at exit: the newest timestamp accepted from each sender, so a
        restarted daemon refuses everything captured before (docs/PROTOCOL.md)."""
        state = self.newest_timestamps()
        if state == self._saved_replay:
            return
        if self.replay_files is None:
            return
        try:
            self.replay_files.save(state)
        except OSError as e:
            if self.limiter.allow(("replay-state", e.errno), time.monotonic()) is not None:
                log.warning("cannot save replay state to %s: %s", self.replay_path(),
                            e.strerror)
            return
        self._saved_replay = state

    def follow_clock_steps(self) -> None:
        """Every tick: log a step of the wall clock. The protocol clock never follows one
        back (it runs on the steady clock; the server moves its base by
        protocol/clock.py), so replay windows never move: what they refused before a
        step stays refused after it."""
        offset = time.time() - steady()
        previous, self._wall_offset = self._wall_offset, offset
        if previous is not None and abs(offset - previous) >= STEP_LOGGED:
            log.warning(kv("clock-step", seconds=round(offset - previous),
                           action=self.clock_step_action(offset - previous)))

    def clock_step_action(self, delta: float) -> str:
        return "none: the protocol clock runs on the server's time"

    def stream_closed(self, addr, authenticated: bool, why: str) -> None:
        """A TCP connection ended (daemon/streams.py); the engine already forgot it."""

    def ratchet_sides(self):
        """Per ratcheting client: (name, key file path or None, Sender, Receiver, engine
        index or None); see daemon/keystate.py."""
        return ()

    def clock_trusted(self) -> bool:
        """Whether our protocol clock may move a ratchet on (and erase secrets)."""
        return True

    def set_clock_base(self, base: float) -> None:
        self.clock_base = base
        if self.native is not None:
            self.native.engine.clock_offset = base

    def restore_clock(self, saved: dict) -> None:
        """Before the start floor is taken: whatever of the protocol clock the saved state
        carries (the server's; a client's clock is the server's)."""

    def start_floor(self) -> int | None:
        """The protocol time before which nothing is accepted from any sender when this
        process starts, or None where the start time is not yet known in the protocol's
        clock (the client: until its first time sync)."""
        return None

    def load_replay_state(self) -> None:
        saved, problem = self.replay_files.load()
        if problem:
            log.warning("ignoring unreadable replay state %s: %s", self.replay_path(), problem)
        self.restore_clock(saved)
        restored = 0
        start = self.start_floor()
        for key, windows, index in self.replay_windows():
            # The state is saved every tick: packets accepted since then are at most a
            # second or so newer than what was saved. Without state (a router's /run
            # is tmpfs) or with state older than our start, what was sent before the
            # start is refused all the same: honest senders are on our clock.
            floor = saved[str(key)] + REPLAY_MARGIN if str(key) in saved else None
            restored += floor is not None
            if start is not None and (floor is None or floor < start):
                floor = start
            if floor is None:
                continue
            self.restore_floor(windows, index, floor)
        if restored:
            log.info("replay state restored for %d sender(s) from %s", restored, self.replay_path())
        if start is not None:
            log.info("replay windows start at %d: nothing sent before this start is accepted",
                     start)

    def restore_floor(self, windows, index, floor: int) -> None:
        """Refuse everything older than `floor` from one sender (its Python windows and,
        while the native loop runs, its engine slot's)."""
        for w in windows:
            w.restore(floor)
        if index is not None:
            self.native.engine.restore_window(index, floor)

    def drop_privileges(self) -> None:
        """After set-up, before any thread starts (capabilities are per thread)."""
        from . import privileges

        freebsd = privileges.platform() == "freebsd"
        try:
            entry = privileges.target(self.config.user)
            if entry is None:
                if os.geteuid() == 0 and self.config.user != "root":
                    if freebsd:  # `user` unset: nothing to keep a reload working with
                        log.warning("%s", privileges.STAYING_ROOT_FREEBSD)
                    else:
                        log.warning("no user '%s' to drop privileges to: staying root",
                                    self.config.user or privileges.DEFAULT_USER)
                return
            privileges.drop(entry)
        except (privileges.PrivilegeError, OSError) as e:
            raise FatalError(str(e)) from None
        if freebsd:
            log.info("running as %s (uid %d), no privileges kept: a reload re-reads the "
                     "configuration and key files as %s", entry.pw_name, entry.pw_uid,
                     entry.pw_name)
        else:
            log.info("running as %s (uid %d) with CAP_NET_ADMIN and CAP_DAC_READ_SEARCH only",
                     entry.pw_name, entry.pw_uid)

    def start(self) -> None:
        raise NotImplementedError

    def run(self) -> None:
        if self.native is not None:
            self.selector.register(self.native.events, selectors.EVENT_READ, self.on_native_events)
            self.native.engine.mtu = self.mtu
            self.native.start()
        else:
            self.selector.register(self.tun.fd, selectors.EVENT_READ, self.on_tun)
            self.selector.register(self.sock, selectors.EVENT_READ, self.on_udp)
        self.streams.start()
        next_tick = 0.0
        try:
            while not self.stopping:
                timeout = max(0.0, next_tick - time.monotonic())
                for key, _ in self.selector.select(timeout):
                    key.data()
                if self.reload_requested:
                    self.reload_requested = False
                    self.reload()
                    trim_heap()
                if self.dump_requested:
                    self.dump_requested = False
                    self.dump_stats()
                if time.monotonic() >= next_tick:
                    self.follow_clock_steps()
                    self.ratchets.step(self.now(), self.clock_trusted())
                    self.streams.tick(time.monotonic())
                    self.tick(time.monotonic())
                    self.save_replay_state()
                    next_tick = time.monotonic() + TICK
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        if self.native is not None:
            self.native.stop()  # before the descriptors its threads use are closed
        self.streams.close_all()
        self.save_replay_state()
        self.dump_stats()
        if self.tun is not None:
            self.tun.close()  # a non-persistent TUN interface disappears with its descriptor
        if self.sock is not None:
            self.sock.close()
        if self.replay_files is not None:
            self.replay_files.close()
        self.ratchets.close()
        if self.control is not None:
            self.control.close()
            try:
                os.unlink(self.control_path)
            except OSError:
                pass  # not ours to remove after the privilege drop: the next start does
        if self.native is not None:
            self.native.close()
        log.info("stopped")

    def replace_socket(self, sock) -> None:
        """Swap the UDP socket (the Python loop's; the native loop is rebuilt by its owner)."""
        if self.sock is not None:
            if self.native is None:
                self.selector.unregister(self.sock)
            self.sock.close()
        self.sock = sock
        if self.native is None:
            self.selector.register(sock, selectors.EVENT_READ, self.on_udp)

    # -- shared packet helpers ----------------------------------------------------------------

    def drop(self, counters, reason: Drop, now: float, src=None, client=None, detail="") -> None:
        """Count a drop (globally and for the peer, if known) and log it, rate-limited."""
        self.counters.drops[reason] += 1
        if counters is not None and counters is not self.counters:
            counters.drops[reason] += 1
        self.log_drop(reason, now, src, client, detail)

    def log_drop(self, reason: Drop, now: float, src=None, client=None, detail="") -> None:
        key = (reason, src[0] if src else None)
        held = self.limiter.allow(key, time.monotonic())  # not `now`: wall clocks step
        if held is None:
            return
        fields = {"reason": reason.label}
        if client is not None:
            fields["client"] = client
        if src is not None:
            fields["src"] = format_addr(src)
        if held:
            fields["suppressed"] = held
        if detail:
            fields["detail"] = detail
        level = log.warning if reason in (Drop.CLOCK_SKEW, Drop.AUTH, Drop.SPOOFED_SOURCE) else log.info
        level(kv("drop", **fields))

    def on_native_events(self) -> None:
        for event in self.native.drain():
            if event[0] == fastpath.EV_TOO_BIG:
                self.icmp_too_big(event[4])
            elif event[0] == fastpath.EV_STREAM:
                self.streams.ended(event[3], event[1], event[2])
            else:
                self.on_engine_event(*event)

    def on_engine_event(self, kind: int, reason: int, client_id: int, addr, packet) -> None:
        raise NotImplementedError

    def engine_drop(self, reason: int, client_id: int, addr, packet, name, receiver, index) -> Drop:
        """Log a drop the engine counted; AUTH/STALE samples get the clock diagnosis
        (`receiver` opens for it; `index` is the sender's slot in the engine)."""
        now = self.now()
        why, detail = Drop(reason), ""
        if packet and receiver is not None and why in (Drop.AUTH, Drop.STALE):
            verdict = receiver.diagnose(packet, now, why, self.native.engine.window_newest(index))
            why, detail = verdict.reason, verdict.detail
        elif packet and why == Drop.SPOOFED_SOURCE:  # the sample is the inner header
            from .ippacket import addresses

            fields = addresses(packet)
            if fields:
                detail = f"inner source {ipaddress.ip_address(fields[1])}"
        self.log_drop(why, now, addr, name, detail)
        return why

    def now(self) -> float:
        """The protocol clock, what every timestamp is sealed and judged by."""
        return steady() + self.clock_base

    def write_tun(self, packet) -> bool:
        try:
            self.tun.write(packet)  # the device adds any per-packet platform header
            return True
        except BlockingIOError:
            return False
        except OSError as e:
            log.debug("TUN write failed: %s", e.strerror)
            return False

    def send(self, packet, addr) -> bool:
        if streams.is_stream(addr):
            return self.streams.send(addr, packet)
        try:
            self.sock.sendto(packet, addr)
            return True
        except BlockingIOError:
            return False
        except OSError as e:
            if e.errno not in (errno.ENOBUFS, errno.EAGAIN):
                key = ("send", e.errno)
                if self.limiter.allow(key, time.monotonic()) is not None:
                    log.warning(kv("send-failed", dst=format_addr(addr), error=e.strerror))
            return False

    def icmp_too_big(self, packet) -> None:
        from .ippacket import too_big

        reply = too_big(packet, self.mtu, self.our_v4, self.our_v6)
        if reply is not None:
            self.write_tun(reply)

    # -- role hooks ---------------------------------------------------------------------------

    def on_tun(self) -> None:
        raise NotImplementedError

    def on_udp(self) -> None:
        """The Python loop's UDP side: every datagram through handle_datagram."""
        sock = self.sock
        for _ in range(BATCH):
            try:
                data, addr = sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            self.handle_datagram(data, addr)

    def handle_datagram(self, data, addr) -> None:
        raise NotImplementedError

    def tick(self, monotonic_now: float) -> None:
        pass

    def reload(self) -> str | None:
        """Re-read the configuration; the error as one line, or None."""
        return None

    # Settings a reload cannot change in a running daemon.
    RESTART_ONLY: tuple = ()

    def reread_config(self):
        """(new configuration, None), or (None, error line) when it is broken or is no
        longer of our role; the running configuration stays in force then."""
        try:
            new = configmod.load(self.config.path)
            if new.role != self.role:
                raise configmod.ConfigError(
                    f"{self.config.path}: is no longer a {self.role} configuration")
        except configmod.ConfigError as e:
            log.error("reload failed, keeping the running configuration: %s", e)
            return None, str(e)
        for what in self.RESTART_ONLY:
            if getattr(new, what) != getattr(self.config, what):
                log.warning("reload: '%s' changed; it takes effect after a restart", what)
        return new, None

    def dump_stats(self) -> None:
        log.info(kv("stats", role=self.role, **flatten(self.totals())))
