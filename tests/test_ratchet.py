"""Forward secrecy: epoch keys from a one-way chain (protocol/ratchet.py), the ratcheting
key file (config/ratchetfile.py, daemon/keystate.py), both crypto paths and the native
loop. The real-daemon test (a thief takes the key files) is test_a_stolen_key_file_opens_
nothing_from_before in tests/test_daemon.py."""

import json
import os
import pathlib

import pytest

from cryptopaths import PATHS, context_class
from loopengines import LoopbackEngines, _ipv4, native
from vpncrypt import config as configmod
from vpncrypt.config import ratchetfile
from vpncrypt.daemon.keystate import RatchetFile, install
from vpncrypt.protocol import keys, ratchet
from vpncrypt.protocol.ratchet import ORIGIN, Ratchet, epoch_of, epoch_start
from vpncrypt.protocol.session import ClientSession, Opened, Reply, ServerCore, prepare_epochs
from vpncrypt.protocol.wire import Drop, Kind

PSK = bytes(range(32))
HOUR = 3600
NOW = ORIGIN + 1000 * HOUR + 1800.5  # the middle of epoch 1000
VECTORS = pathlib.Path(__file__).parent / "vectors" / "ratchet.json"


@pytest.fixture(params=PATHS)
def ctx(request):
    return context_class(request.param)


def ratchet_pair(ctx, now=NOW, period=HOUR):
    server = ServerCore(7, ctx)
    server.set_client(1, Ratchet.from_psk(PSK, period))
    client = ClientSession(1, 7, Ratchet.from_psk(PSK, period), ctx)
    step(server, client, now)
    return server, client


def step(server, client, now, advance=True):
    peer = server.peer(1)
    prepare_epochs(peer.sender, peer.receiver, now, advance)
    prepare_epochs(client.sender, client.receiver, now, advance)


def test_the_chain_is_one_way_and_cheap_to_walk_forward():
    r = Ratchet.from_psk(PSK, HOUR)
    s5 = r.secret_at(5)
    assert s5 == ratchet.step(ratchet.step(ratchet.step(ratchet.step(ratchet.step(r.secret)))))
    assert r.advance(epoch_start(5, HOUR) + 200) and r.epoch == 5 and r.secret == s5
    assert r.secret_at(4) is None  # gone: that is the point
    assert not r.advance(epoch_start(3, HOUR))  # never back
    assert epoch_of(0, HOUR) == 0 and epoch_of(ORIGIN + HOUR, HOUR) == 1


def test_the_window_holds_two_epochs_only_near_a_boundary():
    r = Ratchet.from_psk(PSK, HOUR)
    b = epoch_start(10, HOUR)
    assert r.window(b + 1000) == (10, 10)
    assert r.window(b + 100) == (9, 10)  # a packet from 128 s ago is still in epoch 9
    assert r.window(b - 100) == (9, 10)
    assert r.advance(b + 100) and r.epoch == 9
    assert r.advance(b + 200) and r.epoch == 10


def test_packets_flow_across_epoch_boundaries_both_ways(ctx):
    b = epoch_start(1001, HOUR)
    server, client = ratchet_pair(ctx, b - 300)
    for t in (b - 300, b - 100, b - 1, b, b + 1, b + 127, b + 129, b + 400, b + HOUR + 5):
        step(server, client, t)
        assert server.open(client.seal(Kind.DATA, b"up", t), t).body == b"up", t - b
        assert client.open(server.seal(1, Kind.DATA, b"down", t), t).body == b"down", t - b
    # Sealed just before a boundary, opened just after it (within the clock window).
    server, client = ratchet_pair(ctx, b - 2)
    late = client.seal(Kind.DATA, b"late", b - 2)
    step(server, client, b + 100)
    assert server.open(late, b + 100).body == b"late"


def test_epoch_keys_differ_and_old_ones_are_refused(ctx):
    server, client = ratchet_pair(ctx)
    old = client.seal(Kind.DATA, b"x", NOW)
    later = NOW + 2 * HOUR
    step(server, client, later)
    assert server.peer(1).sender.epochs.ratchet.epoch == epoch_of(int(later), HOUR)
    # The server no longer holds epoch 1000: a replay at its old time cannot open.
    assert server.open(old, NOW).reason in (Drop.AUTH, Drop.STALE, Drop.CLOCK_SKEW)
    static = ServerCore(7, ctx)
    static.set_client(1, PSK)
    assert static.open(old, NOW).reason == Drop.AUTH  # not the static key either


def test_time_sync_needs_no_epoch_and_a_client_in_1970_catches_up(ctx):
    server, _ = ratchet_pair(ctx)
    saved = Ratchet.from_psk(PSK, HOUR)
    saved.advance(NOW - 5 * HOUR)  # its key file, as saved 5 hours ago
    client = ClientSession(1, 7, saved, ctx)
    prepare_epochs(client.sender, client.receiver, 3.0, False)  # booted without an RTC
    assert client.seal(Kind.DATA, b"x", 3.0) is None  # no key for 1970: held back
    assert saved.epoch == epoch_of(int(NOW - 5 * HOUR) - 128, HOUR)  # and nothing erased
    reply = server.open(client.time_request(3.0), NOW)
    assert type(reply) is Reply
    got = client.open(reply.packet, 3.2)
    assert got.kind == Kind.TIME_RESPONSE
    synced = 3.2 + got.clock_offset
    prepare_epochs(client.sender, client.receiver, synced, True)
    assert client.sender.epochs.ratchet.epoch == epoch_of(int(synced), HOUR)
    assert server.open(client.seal(Kind.DATA, b"hi", synced), NOW + 0.2).body == b"hi"


def test_a_mismatched_period_does_not_authenticate(ctx):
    server = ServerCore(7, ctx)
    server.set_client(1, Ratchet.from_psk(PSK, HOUR))
    client = ClientSession(1, 7, Ratchet.from_psk(PSK, 2 * HOUR), ctx)
    step(server, client, NOW)
    assert server.open(client.seal(Kind.DATA, b"x", NOW), NOW).reason == Drop.AUTH


def test_an_unchanged_ratchet_keeps_its_peer_on_reload(ctx):
    server, _ = ratchet_pair(ctx)
    peer = server.peer(1)
    assert not server.set_client(1, Ratchet.from_psk(PSK, HOUR))
    assert server.peer(1) is peer
    assert server.set_client(1, PSK)  # the static key is another key


# ---- vectors --------------------------------------------------------------------------------

def test_ratchet_vectors_on_both_paths(ctx):
    doc = json.loads(VECTORS.read_text())
    assert doc["version"] == 1 and doc["origin"] == ORIGIN
    for v in doc["vectors"]:
        psk, period = bytes.fromhex(v["psk"]), v["period"]
        chain = Ratchet.from_psk(psk, period)
        assert chain.secret.hex() == v["first_secret"]
        assert chain.time_key.hex() == v["time_key"]
        assert chain.secret_at(v["epoch"]).hex() == v["secret"]
        assert epoch_of(v["timestamp"], period) == v["epoch"]
        key = keys.direction_key(bytes.fromhex(v["secret"]), v["direction"].encode(),
                                 v["server_id"], v["client_id"])
        assert key.hex() == v["siv_key"]
        sealed = ctx(key, v["client_id"], v["server_id"]).seal(
            v["type"], v["timestamp"], v["counter"], bytes.fromhex(v["body"]))
        assert sealed.hex() == v["packet"], v["name"]
        # And through the sessions: the receiving end opens the vector's packet.
        receiving = ServerCore(v["server_id"], ctx) if v["direction"] == "c2s" else None
        if receiving is not None:
            receiving.set_client(v["client_id"], Ratchet.from_psk(psk, period))
            peer = receiving.peer(v["client_id"])
            prepare_epochs(peer.sender, peer.receiver, v["timestamp"], True)
            got = receiving.open(bytes.fromhex(v["packet"]), v["timestamp"] + 0.5)
            assert type(got) is Opened and got.body == bytes.fromhex(v["body"])


# ---- the key file -----------------------------------------------------------------------------

def key_file(tmp_path, text=None):
    path = tmp_path / "c.key"
    path.write_text(text if text is not None else keys.generate_key() + "\n")
    os.chmod(path, 0o600)
    return str(path)


def test_the_first_save_converts_the_key_file_and_erases_the_key(tmp_path):
    path = key_file(tmp_path, keys.generate_key(lambda n: PSK) + "\n")
    loaded = configmod.load_key_file(path, HOUR)
    assert loaded.epoch == 0 and loaded.secret == ratchet.first_secret(PSK, HOUR)
    loaded.advance(NOW)
    writer = RatchetFile(path)
    writer.save(loaded)
    data = pathlib.Path(path).read_bytes()
    assert len(data) == 2 * ratchetfile.SLOT
    assert keys.generate_key(lambda n: PSK).encode() not in data  # the PSK is gone
    assert ratchet.first_secret(PSK, HOUR) not in data
    again = configmod.load_key_file(path, HOUR)
    assert (again.epoch, again.secret, again.time_key) == (loaded.epoch, loaded.secret,
                                                           loaded.time_key)
    for n in range(3):  # later saves alternate between the two copies
        loaded.advance(NOW + (n + 1) * HOUR)
        writer.save(loaded)
        assert configmod.load_key_file(path, HOUR).epoch == loaded.epoch
    writer.close()


@pytest.mark.parametrize("cut", [0, 1, 100, ratchetfile.SLOT - 1])
def test_a_torn_save_leaves_the_previous_state(tmp_path, cut):
    path = key_file(tmp_path)
    state = configmod.load_key_file(path, HOUR)
    state.advance(NOW)
    writer = RatchetFile(path)
    writer.save(state)
    before = state.epoch
    state.advance(NOW + HOUR)
    # The next save goes to the copy holding the older generation: cut it short.
    generation = writer.generation + 1
    slot = ratchetfile.encode_slot(state, generation)
    raw = bytearray(pathlib.Path(path).read_bytes())
    offset = (generation % 2) * ratchetfile.SLOT
    raw[offset:offset + cut] = slot[:cut]
    raw[offset + cut:offset + ratchetfile.SLOT] = b"\0" * (ratchetfile.SLOT - cut)
    pathlib.Path(path).write_bytes(bytes(raw))
    assert configmod.load_key_file(path, HOUR).epoch == before
    writer.close()


def test_key_file_errors_name_the_problem(tmp_path):
    path = key_file(tmp_path)
    state = configmod.load_key_file(path, HOUR)
    state.advance(NOW)
    writer = RatchetFile(path)
    writer.save(state)
    writer.close()
    with pytest.raises(configmod.ConfigError, match="ratchets every 3600 s, but ratchet = 600 s"):
        configmod.load_key_file(path, 600)
    with pytest.raises(configmod.ConfigError, match="is a ratcheting key file"):
        configmod.load_key_file(path)
    pathlib.Path(path).write_bytes(b"vpncrypt-ratchet 1\n" + b"x" * 600)
    with pytest.raises(configmod.ConfigError, match="neither copy in the file is complete"):
        configmod.load_key_file(path, HOUR)


def test_check_config_refuses_ratchet_with_an_inline_key(tmp_path):
    conf = tmp_path / "c.conf"
    conf.write_text(f"[client]\nid = 1\nserver = 127.0.0.1:9\nkey = {keys.generate_key()}\n"
                    "ratchet = 1h\ninterface = t0\naddress = 10.9.0.2/24\n")
    os.chmod(conf, 0o600)
    with pytest.raises(configmod.ConfigError,
                       match=r"c.conf:5: \[client\] ratchet: ratchet needs key_file"):
        configmod.load(str(conf))


@pytest.mark.parametrize("value,problem", [
    ("5m", "300 s is out of range"), ("1y", "is not a period"), ("-1h", "is not a period"),
    ("40d", "3456000 s is out of range")])
def test_bad_ratchet_periods(tmp_path, value, problem):
    conf = tmp_path / "c.conf"
    conf.write_text(f"[client]\nid = 1\nserver = 127.0.0.1:9\nkey_file = {key_file(tmp_path)}\n"
                    f"ratchet = {value}\ninterface = t0\naddress = 10.9.0.2/24\n")
    os.chmod(conf, 0o600)
    with pytest.raises(configmod.ConfigError, match=problem):
        configmod.load(str(conf))


# ---- the native loop --------------------------------------------------------------------------

def test_the_native_loop_seals_and_opens_by_epoch_across_a_boundary():
    """A server and a client engine over loopback, both ratcheting, their protocol clocks
    set a second before an epoch boundary: DATA sealed by the native loop before and
    after the boundary gets through, each packet under its own epoch's key (the
    reference core, holding one epoch only, opens exactly the packets of that epoch)."""
    import time

    from vpncrypt.daemon.runtime import steady

    fast = native()
    net = LoopbackEngines()
    boundary = epoch_start(epoch_of(int(time.time()), HOUR) + 5, HOUR)
    base = boundary - 1.0 - steady()  # both engines' protocol clock: 1 s before it
    server = ServerCore(7, fast.SivContext)
    server.set_client(1, Ratchet.from_psk(PSK, HOUR))
    client = ClientSession(1, 7, Ratchet.from_psk(PSK, HOUR), fast.SivContext)
    peer = server.peer(1)
    for side in (peer, client):
        prepare_epochs(side.sender, side.receiver, boundary - 1.0, True)
    assert list(client.sender.epochs.by_epoch) == [epoch_of(boundary - 1, HOUR),
                                                   epoch_of(boundary, HOUR)]
    engines = {"s": net.add("s", True), "c": net.add("c", False)}
    index = engines["s"].add_peer(1, peer.sender.ctx, peer.receiver.ctx, 1000)
    install(engines["s"], index, peer.sender, peer.receiver)
    engines["c"].add_peer(1, client.sender.ctx, client.receiver.ctx, 5000)
    install(engines["c"], 0, client.sender, client.receiver)
    c_inner, s_inner = bytes([10, 9, 0, 2]), bytes([10, 9, 0, 1])
    engines["s"].set_routes([(4, 32, c_inner, index)])
    engines["s"].set_endpoint(index, "127.0.0.1", net.port("c"))
    engines["c"].set_endpoint(0, "127.0.0.1", net.port("s"))
    engines["c"].hold_tx = False
    for engine in engines.values():
        engine.clock_offset = base
    with net:
        def through(src, dst, packet):
            net.tuns[src][1].send(packet)
            net.tuns[dst][1].settimeout(5)
            return net.tuns[dst][1].recv(65536)

        before = _ipv4(c_inner, s_inner, b"before the boundary")
        assert through("c", "s", before) == before
        assert through("s", "c", _ipv4(s_inner, c_inner, b"down")) == _ipv4(s_inner, c_inner, b"down")
        sealed_before = engines["c"].seal(0, Kind.DATA, int(boundary - 1), before)
        time.sleep(1.3)
        after = _ipv4(c_inner, s_inner, b"after the boundary")
        assert through("c", "s", after) == after
        sealed_after = engines["c"].seal(0, Kind.DATA, int(boundary), after)
    # Each under its own epoch's key, as the reference path derives them.
    chain = Ratchet.from_psk(PSK, HOUR)

    def opener(epoch):
        key = keys.direction_key(chain.secret_at(epoch), keys.CLIENT_TO_SERVER, 7, 1)
        return context_class("reference")(key, 1, 7)

    first, second = epoch_of(boundary - 1, HOUR), epoch_of(boundary, HOUR)
    assert opener(first).open(sealed_before, boundary - 1) == before
    assert opener(first).open(sealed_after, boundary) is None
    assert opener(second).open(sealed_after, boundary) == after
