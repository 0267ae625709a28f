"""A hostile network: floods of garbage, clocks that jump, links that lose, reorder and duplicate.

Real vpncryptd processes in namespaces (tests/vpnharness.py), as in test_daemon.py:

- garbage flood: a third host on its own link to the server floods the server's UDP
  port (tests/flooder.py: random bytes, truncated packets, forged headers with the
  configured client ids, captured genuine packets replayed) while a client moves data;
  the kernel's socket filter drops the short and wrong-type part of it, the daemon
  counts the rest by reason; and a flood of junk keepalives alone;
- clock steps: the wall clock of the client or of the server jumps by +-10 minutes in
  the middle of a transfer (tests/clockstep.py, an LD_PRELOAD shim: the monotonic clock
  does not move, as with a real NTP step), and traffic must come back without a restart;
- link faults: 5% loss, 5% duplication, 25% reordering and 100 ms delay both ways
  between client and server (tests/impair.py, netem's rules in a UDP relay); a transfer
  completes and every duplicate is counted as a replay, on both packet loops.

bench/flood.py runs the flood for longer and reports throughput and rates.
"""

import json
import os
import re
import subprocess
import sys
import time

import pytest

import clockstep
from flooder import DEFAULT_WEIGHTS
from hostile import (FLOOD_SERVER, FRAGMENT_REASSEMBLY_TIMEOUT, ONE_WAY_SINK, ONE_WAY_SOURCE,
                     REPLAY_SENDER, Flooder, capture_client_packets, delta, drops, filter_drops,
                     flood_result, udp_snmp, vmrss_kb)
from netns import TESTS_DIR
from vpnharness import (PORT, SERVER_TUN4, Daemon, Deployment, client_tun4, receiver_result,
                        show, start_receiver, start_sender, transfer)

from vpncrypt.protocol.keys import generate_key

NETNS = pytest.mark.netns  # the daemon tests; the sans-IO ones below run anywhere

MB = 1 << 20
GHOST_ID = 2  # configured on the server, but no client ever uses it
# Flood kinds a pin holds back: DATA and keepalives naming a configured client.
PINNABLE = ("forged-data", "forged-keepalive", "large", "replay")


def assert_same(sent: dict, received: dict, size: int) -> None:
    assert sent["bytes"] == received["bytes"] == size
    assert sent["sha256"] == received["sha256"]


def total_drops(fields: dict) -> int:
    return sum(drops(fields).values())


def peer_fields(stats: dict, name: str) -> dict:
    return stats["peers"].get(name, {"rx_packets": "0", "tx_packets": "0"})


# --------------------------------------------------------------------------- garbage flood


def ghost_section() -> str:
    return (f"\n[client ghost]\nid = {GHOST_ID}\nkey = {generate_key()}\n"
            "allowed_ips = 10.201.0.200/32\n")


@NETNS
def test_garbage_flood_legit_transfer_survives(netns_factory, tmp_path):
    vpn = Deployment(netns_factory, tmp_path, keepalive=2)
    vpn.write("server.conf", vpn.server_text() + ghost_section())
    flooder = Flooder(netns_factory, vpn.server_host)
    vpn.start()
    client = vpn.client_host()
    vpn.wait_ping(client, SERVER_TUN4)

    # Genuine packets to replay: pings, a keepalive or two, a small transfer. Time-sync
    # requests (type 03) carry no timestamp and may legitimately be answered: left out.
    def traffic():
        vpn.ping(client, SERVER_TUN4, count=3)
        time.sleep(2.5)  # idle: a keepalive goes out
        sent, received = transfer(client, vpn.server_host, SERVER_TUN4, 1 * MB)
        assert_same(sent, received, 1 * MB)

    genuine = capture_client_packets(vpn, tmp_path, traffic)
    replays = [p for p in genuine if p[0] != 0x03]
    assert len(replays) > 300 and any(p[0] == 0x02 for p in replays)

    pid = vpn.server.proc.pid
    before = vpn.server.stats()
    snmp_before = udp_snmp(vpn.server_host)
    rss_before = vmrss_kb(pid)
    log_before = len(vpn.server.text().splitlines())
    log_at = len(vpn.server.text())

    flooder.start_capture(str(tmp_path / "to-flooder.pcap"))
    flood = flooder.flood(tmp_path, FLOOD_SERVER, PORT, seconds=10, max_packets=5_000_000,
                          client_ids=[1, GHOST_ID], replays=replays, background=True)
    time.sleep(1.0)  # the flood is on
    size = 16 * MB
    started = time.monotonic()
    sent, received = transfer(client, vpn.server_host, SERVER_TUN4, size, seed=5, timeout=120)
    transfer_seconds = time.monotonic() - started
    assert flood.poll() is None, "the flood ended before the transfer: make the transfer smaller"
    report = flood_result(flood, 90)
    to_flooder = flooder.stop_capture()
    time.sleep(0.5)  # let the event queue drain before reading the counters

    # 1. The legit transfer went through intact, and the daemon is alive and well.
    assert_same(sent, received, size)
    assert vpn.server.proc.poll() is None, vpn.server.text()[-3000:]
    rss_after = vmrss_kb(pid)
    after = vpn.server.stats()
    snmp = delta(udp_snmp(vpn.server_host), snmp_before)

    # 2. Nothing the flood sent earned an answer: no packet from the server reached the
    #    flooder's link (but for the kernel's "fragment reassembly time exceeded", if the
    #    backlog dropped a fragment of a large datagram), nothing reached its socket.
    to_flooder.pop(FRAGMENT_REASSEMBLY_TIMEOUT, None)
    assert to_flooder == {}, f"the server sent packets to the flooder: {to_flooder}"
    assert report["received"] == 0, report
    # ... and no replay moved the legit client's endpoint to the flooder.
    assert "endpoint client=" not in vpn.server.text(), vpn.server.text()[-3000:]

    # 3. Memory stays put (the flood allocates nothing per packet or per source).
    assert rss_after - rss_before < 8 * 1024, (rss_before, rss_after)

    # 4. The flood is accounted for, reason by reason. First the kernel: the daemon's
    #    socket filter (vpncrypt/daemon/sockfilter.py) drops what is too short, has a
    #    type byte a server never receives or names a client id it does not have, before
    #    it is queued; and, once the daemon has pinned a client the flood names from
    #    elsewhere (daemon/pinning.py), all but 1 in `sample` of its DATA and keepalives
    #    from anywhere but its endpoint. The kernel
    #    counts the filter's drops in InErrors (which also holds RcvbufErrors and
    #    InCsumErrors), the daemon never sees them. The pool is shuffled, so every
    #    category reached the socket in the same proportion `arrived` (the veth backlog
    #    may drop some of every category first).
    legit_rx = (int(peer_fields(after, "c1")["rx_packets"])
                - int(peer_fields(before, "c1")["rx_packets"]))
    got = delta(drops(after), drops(before))
    flood_in = snmp.get("InDatagrams", 0) - legit_rx  # flood datagrams the daemon read
    rcvbuf = snmp.get("RcvbufErrors", 0)
    filtered = filter_drops(snmp)
    kinds, screened = report["by_kind"], report["prescreened"]
    passing = {k: kinds[k] - screened[k] for k in kinds}  # what the pre-screen lets through
    sent_screened = sum(screened.values())
    arrived = (flood_in + rcvbuf + filtered) / report["sent"]
    pinnable = {k: passing[k] for k in PINNABLE}  # DATA and keepalives naming c1 or ghost
    held = filtered - arrived * sent_screened  # what the pins held back
    # Of what passed the filter, the full socket buffer took the same share of each kind.
    kept = flood_in / (flood_in + rcvbuf) if flood_in + rcvbuf else 1.0
    expect = {k: passing[k] * arrived * kept for k in kinds if k not in PINNABLE}
    pinnable_in = flood_in - sum(expect.values())  # the pins' sample, and before the pins
    summary = (f"flood {report['sent']} pkts in {report['seconds']} s ({report['rate']}/s), "
               f"{arrived:.1%} reached the socket; the filter dropped {filtered} "
               f"({sent_screened} sent for the pre-screen, ~{held:.0f} held back by the "
               f"pins of {sum(pinnable.values())} pinnable sent), the full socket buffer "
               f"{rcvbuf}; read by the daemon {flood_in} (~{pinnable_in:.0f} pinnable); "
               f"drops {got}; transfer {size >> 20} MB in {transfer_seconds:.1f} s; "
               f"rss {rss_before}->{rss_after} kB")
    print(summary)
    # Truncated packets, random bytes (a wrong type byte, or an id nobody has) and
    # unknown ids are pre-screened, nothing else is: the flooder's copy of the rule.
    assert screened["truncated"] == kinds["truncated"] and screened["random"] > 0.99 * kinds["random"]
    assert screened["unknown-id"] == kinds["unknown-id"]
    assert sum(screened.values()) == sum(screened[k] for k in ("truncated", "random", "unknown-id"))
    assert 0.5 < arrived <= 1.0 + 300 / report["sent"], summary
    # Both clients the flood names were pinned (c1 to its endpoint, ghost without one),
    # within about a tick of the flood's start, and the pins held back most of their
    # forgeries and replays: the daemon read the sample and the first moments only.
    for name in ("c1", "ghost"):
        vpn.server.wait_log(rf"pinned client={name} id=\d+ endpoint=\S+ foreign_per_s=\d+",
                            timeout=1, after=log_at)
    pinnable_arrived = arrived * sum(pinnable.values())
    assert 0.6 * pinnable_arrived < held <= 1.05 * pinnable_arrived + 300, summary
    assert -300 < pinnable_in < 0.4 * pinnable_arrived, summary

    # No truncated packet, no wrong type byte and no unknown client id reached the
    # daemon (what is left of the random bytes, with a client's type byte and id, is
    # next to nothing: 3 in 256 times 2 in 65 536).
    assert got.get("bad-type", 0) == got.get("unknown-client", 0) == 0, summary
    assert got.get("malformed", 0) <= expect["random"] + 30, summary
    # Forged and replayed DATA with a configured id that got past the pins: stale or
    # replay (the window, checked first), auth, or rate-limited: forged DATA naming the
    # legit client from the flooder's address (not its endpoint), or the ghost client (no
    # endpoint), is opened at most 1000 times a second per client, and the rest dropped
    # before any crypto. Rate-limited also holds forged time-sync requests over their
    # budget.
    timed = sum(got.get(r, 0) for r in ("stale", "replay", "auth", "clock-skew", "rate-limited"))
    data_like = sum(pinnable[k] for k in ("forged-data", "large", "replay"))
    assert timed >= 0.92 * pinnable_in * data_like / sum(pinnable.values()) - 300, summary
    assert got.get("replay", 0) > 0 and got.get("stale", 0) > 0 and got.get("auth", 0) > 0
    for name in ("c1", "ghost"):
        opened = delta(drops(peer_fields(after, name)), drops(peer_fields(before, name)))
        assert opened.get("auth", 0) + opened.get("clock-skew", 0) <= \
            1000 * (report["seconds"] + 2) + 300, (name, opened, summary)
    # Every datagram the daemon read is a counted drop, except forged keepalives and
    # time requests over the native loop's budget for the Python side (2000/s), which
    # are discarded uncounted (see test_forged_keepalive_flood_... below).
    control = (expect["forged-time"]
               + max(pinnable_in, 0) * pinnable["forged-keepalive"] / sum(pinnable.values()))
    uncounted = flood_in - sum(got.values())
    print(f"uncounted {uncounted} of {control:.0f} forged keepalives/time requests read")
    assert -300 <= uncounted <= 1.08 * control + 300, summary
    # Nothing was accepted from the flood: the legit client's rx count is its own traffic.
    assert legit_rx < flood_in / 5

    # 5. A flood from one source cannot fill the disk: drop lines are rate-limited.
    flood_lines = len(vpn.server.text().splitlines()) - log_before
    assert flood_lines < 60, vpn.server.text().splitlines()[log_before:][:80]

    # 6. The tunnel still works.
    vpn.ping(client, SERVER_TUN4)
    vpn.ping(vpn.server_host, client_tun4(1))


@NETNS
@pytest.mark.parametrize("loop", ["native", "python"])
def test_pinned_client_roams_under_a_flood(netns_factory, tmp_path, loop):
    """A flood of forged DATA naming c1 gets c1 pinned to its endpoint; then c1's
    address changes mid-transfer (as in test_daemon.py's roaming test). Its packets from
    the new address pass the filter's sample and the roaming budget, the first one
    opened moves the endpoint, the pin follows it (or TCP would crawl on the sample
    until the pin is lifted, QUIET s after the flood), and the transfer completes intact.
    On the Python loop too, whose count of foreign datagrams is its own; there the
    flood is 20 000/s (1 in 8 kept): the loop's own speed, not the pin, would otherwise
    decide. Under a flood naming it, a roaming client's odds per packet are the roaming
    budget's (1000/s) share of the flood, pinned or not (daemon/pinning.py)."""
    vpn = Deployment(netns_factory, tmp_path, keepalive=2, loop=loop)
    flooder = Flooder(netns_factory, vpn.server_host)
    vpn.start()
    client = vpn.client_host()
    vpn.wait_ping(client, SERVER_TUN4)
    only_data = {k: 0 for k in DEFAULT_WEIGHTS} | {"forged-data": 1}
    flood = flooder.flood(tmp_path, FLOOD_SERVER, PORT, seconds=12, max_packets=10_000_000,
                          client_ids=[1], weights=only_data, background=True,
                          rate={"native": 0, "python": 20_000}[loop])
    vpn.server.wait_log(r"pinned client=c1 id=1 endpoint=10\.200\.1\.2:\d+ ", timeout=5)
    # The operator sees it: JSON, table, metrics.
    [doc] = json.loads(show(vpn.state_dir("server"), "--json"))
    assert [c["pinned"] for c in doc["clients"]] == [True]
    row = next(ln for ln in show(vpn.state_dir("server")).splitlines() if ln.startswith("c1 "))
    assert re.search(r" 10\.200\.1\.2:\d+ \(pinned\) ", row), row
    assert re.search(r'^vpncrypt_client_pinned\{.*client="c1".*\} 1$',
                     show(vpn.state_dir("server"), "--prometheus"), re.M)
    # Python: ~70 MB/s here (48 MB once crossed within the 0.7 s below, CI 2026-12-07).
    size = {"native": 160 * MB, "python": 192 * MB}[loop]
    recv = start_receiver(vpn.server_host)
    send = start_sender(client, SERVER_TUN4, size)
    time.sleep(0.7)
    assert send.poll() is None, "transfer finished before the move: make it larger"
    assert flood.poll() is None, "the flood ended before the move"
    client.replace_addr(vpn.links[0][1], "10.200.1.2/24", "10.200.1.77/24")
    out, _ = send.communicate(timeout=120)
    assert_same(json.loads(out.strip().splitlines()[-1]), receiver_result(recv), size)
    vpn.server.wait_log(r"endpoint client=c1 id=1 old=10\.200\.1\.2:\d+ new=10\.200\.1\.77:\d+")
    assert "unpinned" not in vpn.server.text()  # still pinned, now to the new endpoint
    report = flood_result(flood, 60)
    assert report["received"] == 0, report
    vpn.ping(client, SERVER_TUN4)


@NETNS
def test_forged_keepalive_flood_does_not_starve_other_clients(netns_factory, tmp_path):
    vpn = Deployment(netns_factory, tmp_path, keepalive=1)
    vpn.write("server.conf", vpn.server_text() + ghost_section())
    flooder = Flooder(netns_factory, vpn.server_host)
    vpn.start()
    vpn.wait_ping(vpn.client_host(), SERVER_TUN4)
    time.sleep(1.5)  # idle: the client keeps the tunnel up with keepalives, 1 a second
    # Junk keepalives with the id of ANOTHER client (the ghost), nothing else.
    only_keepalives = {k: 0 for k in DEFAULT_WEIGHTS} | {"forged-keepalive": 1}
    flood = flooder.flood(tmp_path, FLOOD_SERVER, PORT, seconds=7, max_packets=3_000_000,
                          client_ids=[GHOST_ID], weights=only_keepalives, linger=0.3,
                          server_ids=[1, GHOST_ID],
                          background=True)
    time.sleep(1.5)  # the flood is on
    client_before, server_before = vpn.clients[0].stats(), vpn.server.stats()
    snmp_before = udp_snmp(vpn.server_host)
    time.sleep(4.5)
    client_after, server_after = vpn.clients[0].stats(), vpn.server.stats()
    read = delta(udp_snmp(vpn.server_host), snmp_before).get("InDatagrams", 0)
    report = flood_result(flood, 60)
    sent = int(client_after["tx_packets"]) - int(client_before["tx_packets"])
    answered = int(client_after["rx_packets"]) - int(client_before["rx_packets"])
    counted = total_drops(server_after) - total_drops(server_before)
    summary = (f"flood {report['sent']} junk keepalives ({report['rate']}/s); in 4.5 s of it "
               f"the daemon read {read} datagrams and counted {counted} drops; the legit "
               f"client sent {sent} keepalives, {answered} were answered")
    print(summary)
    assert report["rate"] > 5000, f"flood too weak to show anything: {summary}"
    assert sent >= 4, summary
    assert answered >= sent // 2, summary
    assert counted >= 0.95 * (read - sent), summary


# --------------------------------------------------------------------------- clock steps


def start_server_with(vpn, env) -> Daemon:
    vpn.server = Daemon(vpn.server_host, vpn.server_conf, vpn.log("server"),
                        env={**vpn.env, **env})
    vpn.server.wait_log(r"server started")
    vpn.check_loop(vpn.server)
    return vpn.server


def stepped_deployment(netns_factory, tmp_path, side: str, keepalive: int = 2, **kw):
    """A deployment whose server or client runs with a steppable wall clock."""
    vpn = Deployment(netns_factory, tmp_path, keepalive=keepalive, **kw)
    clock = str(tmp_path / "clock")
    shim = clockstep.env(clock, 0)
    if side == "server":
        start_server_with(vpn, shim)
        vpn.start_client(1)
    else:
        vpn.start_server()
        vpn.start_client(1, env=shim)
    vpn.wait_ping(vpn.client_host(), SERVER_TUN4)
    return vpn, clock


def wait_recovered(vpn, since: dict, timeout: float) -> float:
    """Seconds until a ping through the tunnel is answered again; on timeout, an
    AssertionError that says which side drops what."""
    started = time.monotonic()
    try:
        vpn.wait_ping(vpn.client_host(), SERVER_TUN4, timeout=timeout)
    except AssertionError:
        server, client = vpn.server.stats(), vpn.clients[0].stats()
        lines = [ln for d in (vpn.server, vpn.clients[0]) for ln in d.text()[since[d]:].splitlines()
                 if re.search(r"drop |clock|server-silent", ln)]
        raise AssertionError(
            f"no ping answered within {timeout} s of the step; server drops for c1 "
            f"{drops(peer_fields(server, 'c1'))}, client drops {drops(client)}; log:\n"
            + "\n".join(ln[:220] for ln in lines[-12:])) from None
    return time.monotonic() - started


@NETNS
@pytest.mark.parametrize("side,step", [
    ("client", +600), ("client", -600), ("server", +600),
    ("server", -600),
], ids=["client+600", "client-600", "server+600", "server-600"])
def test_clock_step_mid_transfer_recovers(netns_factory, tmp_path, side, step):
    """Traffic both ways (a TCP transfer up, pings down) while one wall clock jumps."""
    vpn, clock = stepped_deployment(netns_factory, tmp_path, side)
    client = vpn.client_host()
    since = {d: len(d.text()) for d in (vpn.server, vpn.clients[0])}
    size = 512 * MB  # still running 0.5 s in at the offloaded native loop's 2+ Gbit/s
    recv = start_receiver(vpn.server_host)
    send = start_sender(client, SERVER_TUN4, size, seed=9)
    # Packets from the server keep coming after the step, whatever TCP does: the client
    # sees them fail and asks for the time at once (the path under test here; the
    # silence path is test_clock_step_during_one_way_stream_recovers).
    pinger = vpn.server_host.popen(["ping", "-i", "0.2", "-W", "1", client_tun4(1)],
                                   stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    assert send.poll() is None, "transfer finished before the clock step: make it larger"
    clockstep.set_offset(clock, step)
    stepped = vpn.server if side == "server" else vpn.clients[0]
    stepped.wait_log(rf"clock-step seconds={step} ", after=since[stepped], timeout=5)
    recovered = wait_recovered(vpn, since, timeout=20)
    print(f"{side} clock {step:+d} s: ping answered again {recovered:.1f} s after the daemon saw the step")
    out, _ = send.communicate(timeout=120)
    assert_same(json.loads(out.strip().splitlines()[-1]), receiver_result(recv), size)
    pinger.terminate()
    vpn.ping(vpn.server_host, client_tun4(1))

    # The diagnosis. Only a server clock that jumps forward moves the protocol clock:
    # the server then finds the client's packets clock-skewed, and the client re-syncs
    # by about the step. A server clock that steps back is not followed (the protocol
    # clock never goes back: nothing refused before is accepted after), and a client's
    # own wall clock is not the protocol clock at all: no re-sync is needed for either.
    server_log = vpn.server.text()[since[vpn.server]:]
    client_log = vpn.clients[0].text()[since[vpn.clients[0]]:]
    first = re.search(r"drop reason=(auth|stale|clock-skew) client=c1 (.*)", server_log)
    sync = [float(c) for c in re.findall(r"clock-sync correction=([-+][\d.]+)s", client_log)]
    if side == "server" and step > 0:
        assert first is None or first[1] == "clock-skew", server_log[-3000:]
        if first is not None:
            assert re.search(r"sender clock off by about [+-]\d+ s", first[2]), first[0]
        assert sync and abs(sync[-1] - step) < 3, client_log[-3000:]
    else:
        assert first is None, server_log[-3000:]
        assert not sync, client_log[-3000:]
        if side == "server":
            assert "the protocol clock does not go back" in server_log, server_log[-3000:]
    assert vpn.server.proc.poll() is None and vpn.clients[0].proc.poll() is None


@NETNS
def test_clock_step_during_one_way_stream_recovers(netns_factory, tmp_path):
    """The server's clock jumps forward while it has nothing to send back (the client
    streams one way, as a camera or a log shipper does): the server refuses the
    client's packets as clock-skewed, so nothing answers them, and only the client's
    silence detection (15 s without an answer) can bring it back."""
    vpn, clock = stepped_deployment(netns_factory, tmp_path, "server", keepalive=1)
    since = {d: len(d.text()) for d in (vpn.server, vpn.clients[0])}
    sink = vpn.server_host.popen([sys.executable, "-c", ONE_WAY_SINK, SERVER_TUN4],
                                 stdout=subprocess.PIPE, text=True)
    assert sink.stdout.readline().strip() == "ready"
    vpn.client_host().popen([sys.executable, "-c", ONE_WAY_SOURCE, SERVER_TUN4],
                            stderr=subprocess.DEVNULL)
    time.sleep(2.5)  # keepalives go out and are answered
    clockstep.set_offset(clock, 600)
    vpn.server.wait_log(r"clock-step seconds=600 ", after=since[vpn.server], timeout=5)
    # Silence is noticed after 15 s (docs/PROTOCOL.md §10.3); then one time-sync exchange.
    recovered = wait_recovered(vpn, since, timeout=20)
    print(f"ping answered again {recovered:.1f} s after the server saw the step")
    client_log = vpn.clients[0].text()[since[vpn.clients[0]]:]
    assert "server-silent" in client_log, client_log[-3000:]
    assert re.search(r"clock-sync correction=\+(599|600)\.", client_log), client_log[-3000:]
    assert re.search(r"drop reason=clock-skew client=c1 ", vpn.server.text()[since[vpn.server]:])


@NETNS
def test_replays_after_a_server_clock_step_back_are_refused(netns_factory, tmp_path):
    """The server's wall clock steps back 140 s (beyond the clock window and staleness,
    where the old daemon moved its replay windows with the step). Client packets captured
    just before, replayed once the server's clock would again be near their timestamps
    and after 8 192 newer packets pushed their counters out of the window: none
    accepted (the old daemon took them as a client restart, nearly all of them)."""
    vpn, clock = stepped_deployment(netns_factory, tmp_path, "server", keepalive=0)
    client = vpn.client_host()
    captured = capture_client_packets(vpn, tmp_path, lambda: vpn.ping(client, SERVER_TUN4, 10))
    assert len(captured) >= 10
    clockstep.set_offset(clock, -140)
    stepped = time.monotonic()
    time.sleep(0.3)
    vpn.wait_ping(client, SERVER_TUN4, timeout=20)  # honest traffic keeps flowing
    before = vpn.server.stats()["peers"]["c1"]
    client.python(UDP_BURST, SERVER_TUN4, "20000")  # some are lost on the way: 8192 must arrive
    time.sleep(max(0.5, 16 - (time.monotonic() - stepped)))  # 140 - 16 < 128: in the window
    middle = vpn.server.stats()["peers"]["c1"]
    assert int(middle["rx_packets"]) - int(before["rx_packets"]) >= 8200, middle
    (tmp_path / "up.hex").write_text("\n".join(p.hex() for p in captured))
    client.python(REPLAY_SENDER, str(tmp_path / "up.hex"), "10.200.1.1", str(PORT))
    time.sleep(0.5)
    after = vpn.server.stats()["peers"]["c1"]
    accepted = int(after["rx_packets"]) - int(middle["rx_packets"])
    assert accepted == 0, f"{accepted} of {len(captured)} replays accepted: {drops(after)}"
    refused = sum(int(after.get(f"drop_{r}", 0)) - int(middle.get(f"drop_{r}", 0))
                  for r in ("stale", "replay"))
    assert refused >= len(captured), drops(after)
    assert "the protocol clock does not go back" in vpn.server.text()


def openers(key_file_bytes: bytes, until: int, period: int):
    """Every c2s context a thief can derive from a key file's bytes: its ratchet state's
    secret walked forward to a few epochs past `until`, its time-sync key, or the key a
    plain key file holds."""
    from vpncrypt.config import ratchetfile
    from vpncrypt.protocol import keys
    from vpncrypt.protocol.aead import ReferenceSivContext
    from vpncrypt.protocol.ratchet import epoch_of

    got = ratchetfile.decode(key_file_bytes)
    secrets = []
    if got is not None:
        state = got[1]
        last = epoch_of(until, period) + 3
        secrets += [state.secret_at(e) for e in range(state.epoch, max(state.epoch, last) + 1)]
        secrets.append(state.time_key)
    else:
        secrets.append(keys.decode_key(key_file_bytes.decode()))
    for secret in secrets:
        key = keys.direction_key(secret, keys.CLIENT_TO_SERVER, 7, 1)
        yield ReferenceSivContext(key, 1, 7)


def opened_by(packets, key_file_bytes, around: int, until: int, period: int) -> int:
    """How many of the sealed `packets` (timestamped within 60 s of `around`) open under
    anything derived from the key file (stolen at `until`)."""
    from vpncrypt.protocol.wire import full_timestamp

    contexts = list(openers(key_file_bytes, until, period))
    count = 0
    for packet in packets:
        ts = full_timestamp(packet[3], around)
        if any(ctx.open(packet, ts) is not None or ctx.open(packet, 0) is not None
               for ctx in contexts):
            count += 1
    return count


@NETNS
def test_a_stolen_key_file_opens_nothing_from_before(netns_factory, tmp_path):
    """Issue 16, part 5. Both ends ratchet every 10 minutes. Traffic recorded in epoch n;
    then both clocks move past n + 2 (the server's steps 30 minutes forward, the client
    follows by time sync), and a thief takes both key files: nothing derived from them
    opens a recorded packet, while a copy of the same files from epoch n opens them all
    (so the test can tell). The tunnel keeps working across the epochs."""
    period = 600
    vpn, clock = stepped_deployment(netns_factory, tmp_path, "server", ratchet="10m")
    client = vpn.client_host()
    for side in ("server", "client"):
        daemon = vpn.server if side == "server" else vpn.clients[0]
        daemon.wait_log(r"ratchet client=\S+ epoch=\d+ action=\"key file rewritten", timeout=10)
    files = {side: vpn.key_path(1, side) for side in ("server", "client")}
    recorded_at = int(time.time())
    recorded = capture_client_packets(vpn, tmp_path, lambda: vpn.ping(client, SERVER_TUN4, 5))
    assert len(recorded) >= 5
    then = {side: open(path, "rb").read() for side, path in files.items()}
    since = {d: len(d.text()) for d in (vpn.server, vpn.clients[0])}
    clockstep.set_offset(clock, 3 * period)
    for daemon in (vpn.server, vpn.clients[0]):
        daemon.wait_log(r"ratchet client=\S+ epoch=\d+ action=\"key file rewritten",
                        after=since[daemon], timeout=30)
    vpn.wait_ping(client, SERVER_TUN4, timeout=30)  # the tunnel runs on in epoch n + 3
    stolen = {side: open(path, "rb").read() for side, path in files.items()}
    for side in files:
        assert stolen[side] != then[side]
        assert vpn.keys[0].encode() not in stolen[side] and vpn.keys[0].encode() not in then[side]
        later = recorded_at + 3 * period
        assert opened_by(recorded, stolen[side], recorded_at, later, period) == 0, side
        assert opened_by(recorded, then[side], recorded_at, recorded_at, period) == len(recorded), side


UDP_BURST = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[2])):
    s.sendto(b"x" * 16, (sys.argv[1], 9))
"""


# The sans-IO core under a server clock that went back (no clocks, no daemons: `now` is
# an argument): the daemon never lets its protocol clock go back (tests/test_clock.py),
# but an answer to a time request must not depend on that.

STEP_NOW = 1_764_000_000.25
STEP_PSK = bytes(range(32))


def step_pair():
    from vpncrypt.protocol.aead import ReferenceSivContext
    from vpncrypt.protocol.session import ClientSession, ServerCore

    server = ServerCore(7, ReferenceSivContext)
    server.set_client(1, STEP_PSK)
    return server, ClientSession(1, 7, STEP_PSK, ReferenceSivContext)


def test_server_clock_step_back_still_answers_time_requests():
    from vpncrypt.protocol.session import Reply

    server, client = step_pair()
    assert type(server.open(client.time_request(STEP_NOW), STEP_NOW)) is Reply
    stepped = STEP_NOW - 600 + 5  # 5 s later, the server's clock 600 s back
    got = server.open(client.time_request(stepped), stepped)
    assert type(got) is Reply, got
