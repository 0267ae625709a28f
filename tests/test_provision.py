"""vpncrypt.provision: adding and removing clients edits real files byte-exactly and atomically.

Everything runs on real files in tmp_path; the only stand-in is the key generator's rng
(and os.replace, where a failure during the write is simulated). Each server config
points its state_dir into tmp_path so no test can reach a real daemon's control socket.
"""

import base64
import ipaddress
import itertools
import json
import os
import socket
import stat
import threading

import pytest

from vpncrypt import config, control, provision
from vpncrypt.provision import ProvisionError, add_client, remove_client

K1 = base64.b64encode(bytes(range(32))).decode()
K2 = base64.b64encode(bytes(range(100, 132))).decode()
K3 = base64.b64encode(bytes(range(200, 232))).decode()



def parse_client(result, name):
    """The printed client config as the client reads it, its key file installed where
    it points (the server's copy of the key, as the notes say to copy it)."""
    text = result.client_config
    if result.key_file is not None:
        text = text.replace(provision.CLIENT_KEY_FILE, result.key_file)
    return config.parse(text, name)

def counting_rng():
    """Deterministic, and a different key on every call."""
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(2, "big") * (n // 2)


def server_text(tmp_path, clients="", *, address="10.77.0.1/24, fd77::1/64",
                listen="0.0.0.0:51900", extra="", server_id="7"):
    return (
        "# vpncrypt server (hand-written; comments must survive)\n"
        "[server]\n"
        f"listen = {listen}   ; public UDP port\n"
        "interface = vpn0\n"
        f"address = {address}\n"
        + (f"server_id = {server_id}\n" if server_id is not None else "")
        + f"state_dir = {tmp_path / 'run'}\n"
        f"{extra}"
        f"{clients}"
    )


def write(path, text, mode=0o600):
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    os.chmod(path, mode)
    return path


def key_file(tmp_path, name, key, mode=0o600):
    path = tmp_path / name
    write(path, key + "\n", mode)
    return path


@pytest.fixture
def laptop(tmp_path):
    """A server config with comments and one client using a key file."""
    key_file(tmp_path, "laptop.key", K1)
    text = server_text(tmp_path, (
        "\n"
        "; Bob's laptop\n"
        "[client laptop]\n"
        "id = 1\n"
        "key_file = laptop.key   # beside this file\n"
        "allowed_ips = 10.77.0.2/32, fd77::2/128\n"
    ))
    return write(tmp_path / "vpn.conf", text, 0o644)


def peer(cfg, name):
    return next(p for p in cfg.clients if p.name == name)


# --------------------------------------------------------------------------- add-client


def test_add_keeps_every_byte_and_backs_up(laptop, tmp_path):
    original = laptop.read_bytes()
    result = add_client(str(laptop), "phone", "vpn.example.org:51900", rng=counting_rng())

    new = laptop.read_bytes()
    assert new.startswith(original)
    assert new[len(original):] == (
        "\n"
        "[client phone]\n"
        "id = 2\n"
        f"key_file = {tmp_path / 'phone.key'}\n"
        "ratchet = 1h\n"
        "allowed_ips = 10.77.0.3/32, fd77::3/128\n"
    ).encode()
    bak = tmp_path / "vpn.conf.bak"
    assert bak.read_bytes() == original
    assert stat.S_IMODE(bak.stat().st_mode) == 0o600
    assert not (tmp_path / "vpn.conf.tmp").exists()

    server = config.load(str(laptop))
    entry = peer(server, "phone")
    client = parse_client(result, "client.conf")
    assert client.role == "client"
    assert client.key == entry.key
    assert client.id == entry.id == result.id == 2
    assert client.server_host == "vpn.example.org" and client.server_port == 51900
    assert client.server_id == server.server_id == 7
    assert client.interface == "vpn0"
    assert client.keepalive == 25
    assert client.addresses == result.addresses == (
        ipaddress.ip_interface("10.77.0.3/24"), ipaddress.ip_interface("fd77::3/64"))
    assert entry.allowed_ips == result.allowed_ips
    assert result.key_file == str(tmp_path / "phone.key")
    assert stat.S_IMODE(os.stat(result.key_file).st_mode) == 0o600
    assert result.name == "phone"
    # The key appears nowhere but the key file (the client config points to its copy).
    key = (tmp_path / "phone.key").read_text().strip()
    assert entry.key == config.load_key_file(result.key_file, 3600)  # ratchet = 1h
    assert not any(key in n for n in result.notes)
    assert key.encode() not in new and key not in result.client_config


def test_the_server_accepts_the_new_client(laptop):
    """The returned config is what the client's daemon would load: same key, same ids."""
    from vpncrypt.protocol import aead
    from vpncrypt.protocol.session import ClientSession, Opened, ServerCore, prepare_epochs
    from vpncrypt.protocol.wire import Kind

    result = add_client(str(laptop), "phone", "192.0.2.1:51900", reload=False,
                        rng=counting_rng())
    server = config.load(str(laptop))
    client = parse_client(result, "client.conf")
    ctx, _ = aead.select(None)
    core = ServerCore(server.server_id, ctx)
    for entry in server.clients:
        core.set_client(entry.id, entry.key)
    session = ClientSession(client.id, client.server_id, client.key, ctx)
    assert client.key == server.clients[-1].key  # ratchet = 1h on both ends, one chain
    now = 1_800_000_000.0
    for ends in (core.peer(client.id), session):
        prepare_epochs(ends.sender, ends.receiver, now, True)
    opened = core.open(session.seal(Kind.DATA, b"\x45" + bytes(39), now), now)
    assert type(opened) is Opened and opened.client_id == client.id


def test_returned_type_and_notes(laptop):
    result = add_client(str(laptop), "phone", rng=counting_rng())
    assert isinstance(result, provision.Provisioned)
    assert all(isinstance(n, str) and "\n" not in n for n in result.notes)
    assert any("added [client phone] (id 2" in n for n in result.notes)
    # No --endpoint and a wildcard listen address: a placeholder with the listen port.
    client = parse_client(result, "client.conf")
    assert client.server_host == provision.PLACEHOLDER_HOST
    assert client.server_port == 51900
    assert "YOUR.SERVER.HOST" in result.client_config
    assert any("YOUR.SERVER.HOST" in n for n in result.notes)


def test_listen_address_is_the_default_server(tmp_path):
    conf = write(tmp_path / "vpn.conf", server_text(tmp_path, listen="[2001:db8::7]:4000"))
    result = add_client(str(conf), "a", reload=False, rng=counting_rng())
    client = parse_client(result, "client.conf")
    assert (client.server_host, client.server_port) == ("2001:db8::7", 4000)


@pytest.mark.parametrize("endpoint, host, port", [
    ("vpn.example.org:443", "vpn.example.org", 443),
    ("vpn.example.org", "vpn.example.org", 51900),
    ("198.51.100.4", "198.51.100.4", 51900),
    ("2001:db8::1", "2001:db8::1", 51900),
    ("[2001:db8::1]", "2001:db8::1", 51900),
    ("[2001:db8::1]:7000", "2001:db8::1", 7000),
])
def test_endpoint_forms(tmp_path, endpoint, host, port):
    conf = write(tmp_path / "vpn.conf", server_text(tmp_path))
    result = add_client(str(conf), "a", endpoint, reload=False, rng=counting_rng())
    client = parse_client(result, "client.conf")
    assert (client.server_host, client.server_port) == (host, port)
    assert "YOUR.SERVER.HOST" not in result.client_config


@pytest.mark.parametrize("endpoint", ["vpn.example.org:99999", "bad host:1", "[nope]:1",
                                      "x.org:1 ; key = foo", "", "a:b"])
def test_bad_endpoint_writes_nothing(tmp_path, endpoint):
    conf = write(tmp_path / "vpn.conf", server_text(tmp_path))
    before = conf.read_bytes()
    with pytest.raises(ProvisionError) as e:
        add_client(str(conf), "a", endpoint, reload=False, rng=counting_rng())
    assert "\n" not in str(e.value) and "endpoint" in str(e.value)
    assert conf.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vpn.conf"]


def test_ids_and_addresses_skip_used_ones_with_holes(tmp_path):
    key_file(tmp_path, "a.key", K1)
    key_file(tmp_path, "b.key", K2)
    key_file(tmp_path, "c.key", K3)
    clients = (
        "[client a]\nid = 1\nkey_file = a.key\nallowed_ips = 10.77.0.2/32, fd77::2/127\n"
        # a hole at id 3 and at 10.77.0.3; a /30 covers .4-.7; fd77::4 is free
        "[client b]\nid = 2\nkey_file = b.key\nallowed_ips = 10.77.0.4/30, fd77::5/128\n"
        "[client c]\nid = 4\nkey_file = c.key\nallowed_ips = 10.77.0.9/32, 192.168.5.0/24\n"
    )
    conf = write(tmp_path / "vpn.conf", server_text(tmp_path, clients))
    rng = counting_rng()
    first = add_client(str(conf), "d", reload=False, rng=rng)
    assert first.id == 3
    assert [str(n) for n in first.allowed_ips] == ["10.77.0.3/32", "fd77::4/128"]
    second = add_client(str(conf), "e", reload=False, rng=rng)
    assert second.id == 5
    assert [str(n) for n in second.allowed_ips] == ["10.77.0.8/32", "fd77::6/128"]
    third = add_client(str(conf), "f", reload=False, rng=rng)
    assert third.id == 6
    assert [str(n) for n in third.allowed_ips] == ["10.77.0.10/32", "fd77::7/128"]
    assert [str(a) for a in third.addresses] == ["10.77.0.10/24", "fd77::7/64"]
    assert len(config.load(str(conf)).clients) == 6


def test_server_address_is_skipped_wherever_it_is(tmp_path):
    # The server is .2 and ::1 is not its address: the first client gets .1 and fd00::1.
    conf = write(tmp_path / "vpn.conf",
                 server_text(tmp_path, address="fd00::2/120, 10.9.0.2/29"))
    rng = counting_rng()
    a = add_client(str(conf), "a", reload=False, rng=rng)
    assert [str(n) for n in a.allowed_ips] == ["fd00::1/128", "10.9.0.1/32"]
    b = add_client(str(conf), "b", reload=False, rng=rng)
    assert [str(n) for n in b.allowed_ips] == ["fd00::3/128", "10.9.0.3/32"]
    assert [str(x) for x in b.addresses] == ["fd00::3/120", "10.9.0.3/29"]


def test_ipv6_only_server(tmp_path):
    conf = write(tmp_path / "vpn.conf", server_text(tmp_path, address="fd77::1/64"))
    result = add_client(str(conf), "a", reload=False, rng=counting_rng())
    assert [str(n) for n in result.allowed_ips] == ["fd77::2/128"]
    client = parse_client(result, "client.conf")
    assert [str(x) for x in client.addresses] == ["fd77::2/64"]


def test_only_the_first_address_of_each_family_gets_a_client_address(tmp_path):
    conf = write(tmp_path / "vpn.conf",
                 server_text(tmp_path, address="10.1.0.1/24, 10.2.0.1/24, fd77::1/64"))
    result = add_client(str(conf), "a", reload=False, rng=counting_rng())
    assert [str(n) for n in result.allowed_ips] == ["10.1.0.2/32", "fd77::2/128"]


def test_a_full_network_is_refused(tmp_path):
    key_file(tmp_path, "a.key", K1)
    clients = "[client a]\nid = 1\nkey_file = a.key\nallowed_ips = 10.5.0.2/32\n"
    conf = write(tmp_path / "vpn.conf", server_text(tmp_path, clients, address="10.5.0.1/30"))
    before = conf.read_bytes()
    with pytest.raises(ProvisionError) as e:
        add_client(str(conf), "b", reload=False, rng=counting_rng())
    assert str(e.value) == f"{conf}: no free address left in 10.5.0.0/30 ([server] address)"
    assert conf.read_bytes() == before
    assert not (tmp_path / "b.key").exists()


def test_inline_keys_stay_inline(tmp_path):
    clients = ("[client a]\nid = 1\nkey = " + K1 + "\nallowed_ips = 10.77.0.2/32\n"
               "[client b]\nid = 2\nkey = " + K2 + "\nallowed_ips = 10.77.0.3/32\n")
    conf = write(tmp_path / "vpn.conf", server_text(tmp_path, clients), 0o600)
    result = add_client(str(conf), "c", reload=False, rng=counting_rng())
    assert result.key_file is None
    client = parse_client(result, "client.conf")
    tail = conf.read_text().split("[client c]\n", 1)[1]
    assert f"key = {base64.b64encode(client.key).decode()}\n" in tail
    assert peer(config.load(str(conf)), "c").key == client.key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vpn.conf", "vpn.conf.bak"]
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600


@pytest.mark.parametrize("clients", [
    "",  # the first client: a key file, whatever the file's mode
    "[client a]\nid = 1\nkey = " + K1 + "\nallowed_ips = 10.77.0.2/32\n"
    "[client b]\nid = 2\nkey_file = b.key\nallowed_ips = 10.77.0.3/32\n",  # mixed
])
def test_key_file_unless_every_client_is_inline(tmp_path, clients):
    key_file(tmp_path, "b.key", K2)
    conf = write(tmp_path / "vpn.conf", server_text(tmp_path, clients), 0o600)
    result = add_client(str(conf), "c", reload=False, rng=counting_rng())
    assert result.key_file == str(tmp_path / "c.key")
    assert f"key_file = {tmp_path / 'c.key'}\n" in conf.read_text()


def test_key_file_goes_where_the_other_key_files_are(tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    key_file(keys, "a.key", K1)
    clients = "[client a]\nid = 1\nkey_file = keys/a.key\nallowed_ips = 10.77.0.2/32\n"
    conf = write(tmp_path / "vpn.conf", server_text(tmp_path, clients), 0o644)
    result = add_client(str(conf), "b", reload=False, rng=counting_rng())
    assert result.key_file == str(keys / "b.key")
    assert stat.S_IMODE((keys / "b.key").stat().st_mode) == 0o600
    assert peer(config.load(str(conf)), "b").key == \
        parse_client(result, "c.conf").key


def test_an_existing_key_file_is_never_overwritten(laptop, tmp_path):
    write(tmp_path / "phone.key", "precious\n", 0o600)
    before = laptop.read_bytes()
    with pytest.raises(ProvisionError) as e:
        add_client(str(laptop), "phone", reload=False, rng=counting_rng())
    assert str(e.value).startswith(f"{tmp_path / 'phone.key'}: already exists")
    assert (tmp_path / "phone.key").read_text() == "precious\n"
    assert laptop.read_bytes() == before


def test_duplicate_name_is_refused(laptop):
    before = laptop.read_bytes()
    with pytest.raises(ProvisionError) as e:
        add_client(str(laptop), "laptop", reload=False, rng=counting_rng())
    assert str(e.value) == f"{laptop}: [client laptop] already exists"
    assert laptop.read_bytes() == before


@pytest.mark.parametrize("name", ["", "-x", "a b", "a/b", ".hidden", "x" * 65, "a]", "ü"])
def test_invalid_name_is_refused(laptop, tmp_path, name):
    before = laptop.read_bytes()
    with pytest.raises(ProvisionError) as e:
        add_client(str(laptop), name, reload=False, rng=counting_rng())
    assert str(e.value).startswith(f"{laptop}: invalid client name")
    assert laptop.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["laptop.key", "vpn.conf"]


@pytest.mark.parametrize("text", [
    "[server]\nlisten = 0.0.0.0:1\ninterface = vpn0\naddress = 10.0.0.1\n",
    "[server]\nlisten = 0.0.0.0:1\ninterface = vpn0\naddress = 10.0.0.1/24\nfoo = 1\n",
    "[server]\nlisten = 0.0.0.0:1\ninterface = vpn0\naddress = 10.0.0.1/24\n"
    "[client a]\nid = 1\nkey_file = missing.key\nallowed_ips = 10.0.0.2/32\n",
])
def test_an_invalid_server_config_is_refused_with_its_own_error(tmp_path, text):
    conf = write(tmp_path / "vpn.conf", text)
    with pytest.raises(config.ConfigError) as expected:
        config.load(str(conf))
    for call in (lambda: add_client(str(conf), "b", reload=False, rng=counting_rng()),
                 lambda: remove_client(str(conf), "a", reload=False)):
        with pytest.raises(ProvisionError) as e:
            call()
        assert str(e.value) == str(expected.value)
        assert "\n" not in str(e.value)
    assert conf.read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vpn.conf"]


def test_inline_keys_in_an_open_file_are_refused(tmp_path):
    clients = "[client a]\nid = 1\nkey = " + K1 + "\nallowed_ips = 10.77.0.2/32\n"
    conf = write(tmp_path / "vpn.conf", server_text(tmp_path, clients), 0o644)
    with pytest.raises(ProvisionError) as e:
        add_client(str(conf), "b", reload=False, rng=counting_rng())
    assert "too open" in str(e.value)


def test_a_client_config_is_refused(tmp_path):
    conf = write(tmp_path / "client.conf", (
        f"[client]\nid = 1\nserver = vpn.example.org:1\nkey = {K1}\n"
        "interface = vpn0\naddress = 10.77.0.2/24\n"))
    with pytest.raises(ProvisionError) as e:
        add_client(str(conf), "b", reload=False, rng=counting_rng())
    assert str(e.value).startswith(f"{conf}: is a client configuration")


def test_missing_file(tmp_path):
    with pytest.raises(ProvisionError) as e:
        add_client(str(tmp_path / "nope.conf"), "b", reload=False)
    assert str(e.value) == f"{tmp_path / 'nope.conf'}: no such file"


# --------------------------------------------------------------------------- server id and key reuse


def test_the_first_client_gives_a_server_without_server_id_a_random_one(tmp_path):
    """Two servers left at the default id 0 that share a client key accept each other's
    captured packets: the first add-client writes an id of the server's own into the file
    (so it stays the same across restarts) and into the client config."""
    text = server_text(tmp_path, server_id=None)
    conf = write(tmp_path / "vpn.conf", text)
    rng = counting_rng()
    result = add_client(str(conf), "a", reload=False, rng=rng)

    server = config.load(str(conf))
    assert server.server_id == 0x00020002  # the rng's second draw (the first: the key)
    state_dir = f"state_dir = {tmp_path / 'run'}\n"  # the last line of [server]
    assert conf.read_text().startswith(
        text.replace(state_dir, state_dir + "server_id = 131074\n") + "\n[client a]\nid = 1\n")
    assert parse_client(result, "c.conf").server_id == server.server_id
    assert any(n.startswith(f"server_id = 131074 (random) added to [server] of {conf}")
               for n in result.notes)
    assert (tmp_path / "vpn.conf.bak").read_text() == text

    # From then on it is the file's: kept by the next client and by removals.
    second = add_client(str(conf), "b", reload=False, rng=rng)
    assert parse_client(second, "c.conf").server_id == 131074
    assert not any("server_id" in n for n in second.notes)
    remove_client(str(conf), "b", reload=False)
    remove_client(str(conf), "a", reload=False)
    assert config.load(str(conf)).server_id == 131074
    assert conf.read_text().count("server_id") == 1


def test_every_new_server_gets_its_own_id(tmp_path):
    ids = set()
    for n in range(8):
        directory = tmp_path / str(n)
        directory.mkdir()
        conf = write(directory / "vpn.conf", server_text(directory, server_id=None))
        result = add_client(str(conf), "a", reload=False)  # the real rng
        ids.add(parse_client(result, "c.conf").server_id)
    assert len(ids) == 8 and 0 not in ids


@pytest.mark.parametrize("text, expected", [
    # Indented keys: after the header, the new line would swallow them as continuations.
    ("[server]\n  listen = 0.0.0.0:51900\n  interface = vpn0\n  address = 10.77.0.1/24,\n"
     "      fd77::1/64   ; v6\n# about the clients\n\n",
     "[server]\n  listen = 0.0.0.0:51900\n  interface = vpn0\n  address = 10.77.0.1/24,\n"
     "      fd77::1/64   ; v6\nserver_id = 65537\n# about the clients\n\n"),
    # CRLF, no final line break.
    ("[server]\r\nlisten = 0.0.0.0:51900\r\ninterface = vpn0\r\naddress = 10.77.0.1/24",
     "[server]\r\nlisten = 0.0.0.0:51900\r\ninterface = vpn0\r\naddress = 10.77.0.1/24\r\n"
     "server_id = 65537\r\n"),
])
def test_the_server_id_goes_after_the_last_value_of_the_server_section(tmp_path, text, expected):
    conf = write(tmp_path / "vpn.conf", text)
    add_client(str(conf), "a", reload=False, rng=lambda n: b"\x00\x01" * (n // 2))
    new = conf.read_bytes().decode()
    assert new.startswith(expected) and new[len(expected):].lstrip("\r\n").startswith("[client a]")
    assert config.load(str(conf)).server_id == 65537


def test_a_server_in_use_without_server_id_keeps_0_and_says_why(tmp_path):
    """Its clients all use id 0: a new id would cut every one of them off."""
    key_file(tmp_path, "a.key", K1)
    clients = "\n[client a]\nid = 1\nkey_file = a.key\nallowed_ips = 10.77.0.2/32\n"
    text = server_text(tmp_path, clients, server_id=None)
    conf = write(tmp_path / "vpn.conf", text)
    result = add_client(str(conf), "b", reload=False, rng=counting_rng())
    assert conf.read_text().startswith(text) and "server_id" not in conf.read_text()
    assert parse_client(result, "c.conf").server_id == 0
    warning = next(n for n in result.notes if "server_id is 0" in n)
    assert warning.startswith(f"{conf}: [server] server_id is 0") and "replayed" in warning
    assert any("gets server_id = 0 to match" in n and "every one of its clients" in n
               for n in result.notes)


def test_an_explicit_server_id_0_is_kept_with_the_warning(tmp_path):
    conf = write(tmp_path / "vpn.conf", server_text(tmp_path, server_id="0"))
    result = add_client(str(conf), "a", reload=False, rng=counting_rng())
    assert config.load(str(conf)).server_id == 0
    assert any("server_id is 0" in n for n in result.notes)


def test_a_running_daemon_must_be_restarted_for_a_new_server_id(tmp_path):
    """server_id is restart-only in the daemon: a reload keeps the old one."""
    conf = write(tmp_path / "vpn.conf", server_text(tmp_path, server_id=None))
    (tmp_path / "run").mkdir()
    daemon = FakeDaemon(control.socket_path(str(tmp_path / "run"), "vpn0"), {"ok": True})
    try:
        result = add_client(str(conf), "a", reload=True, rng=counting_rng())
    finally:
        daemon.close()
    assert result.reloaded is True
    assert any(n.startswith("restart vpncryptd on vpn0") for n in result.notes)


def test_generated_server_ids_are_never_0():
    draws = iter([bytes(4), bytes(4), b"\xff\xff\xff\xff"])
    assert provision.generate_server_id(lambda n: next(draws)) == config.MAX_SERVER_ID
    with pytest.raises(ProvisionError):
        provision.generate_server_id(lambda n: bytes(n))


def test_a_removed_clients_key_file_is_never_reused(laptop, tmp_path):
    added = add_client(str(laptop), "phone", reload=False)
    old_key = (tmp_path / "phone.key").read_text()
    removed = remove_client(str(laptop), "phone", reload=False)
    assert any("never reuses it" in n for n in removed.notes)
    before = laptop.read_bytes()
    with pytest.raises(ProvisionError) as e:
        add_client(str(laptop), "phone", reload=False)
    message = str(e.value)
    assert message.startswith(f"{tmp_path / 'phone.key'}: already exists")
    assert "never reuses" in message and "\n" not in message and old_key.strip() not in message
    assert laptop.read_bytes() == before
    assert (tmp_path / "phone.key").read_text() == old_key
    # Once the operator deals with the old file: a fresh key, never the old one.
    (tmp_path / "phone.key").unlink()
    again = add_client(str(laptop), "phone", reload=False)
    assert (tmp_path / "phone.key").read_text() != old_key
    assert again.client_config == added.client_config  # the key is in the file alone


def test_two_servers_never_get_the_same_client_key(tmp_path):
    """Two server configs side by side (key files beside them): the second add-client of
    a name refuses the first one's key file rather than share it."""
    one = write(tmp_path / "one.conf", server_text(tmp_path, server_id=None))
    two = write(tmp_path / "two.conf", server_text(tmp_path, server_id=None)
                .replace("interface = vpn0", "interface = vpn1"))
    first = add_client(str(one), "laptop", reload=False)
    with pytest.raises(ProvisionError) as e:
        add_client(str(two), "laptop", reload=False)
    assert str(e.value).startswith(f"{tmp_path / 'laptop.key'}: already exists")
    second = add_client(str(two), "laptop2", reload=False)
    a, b = (parse_client(r, "c") for r in (first, second))
    assert a.key != b.key
    assert a.server_id != b.server_id and 0 not in (a.server_id, b.server_id)


# --------------------------------------------------------------------------- files


def test_mode_and_owner_are_preserved(laptop, tmp_path):
    os.chmod(laptop, 0o640)
    if os.geteuid() == 0:
        os.chown(laptop, 65534, 65534)
    add_client(str(laptop), "phone", reload=False, rng=counting_rng())
    st = laptop.stat()
    assert stat.S_IMODE(st.st_mode) == 0o640
    key_st = (tmp_path / "phone.key").stat()
    assert stat.S_IMODE(key_st.st_mode) == 0o600
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (65534, 65534)
        # The key file belongs to the config's owner, so a daemon running as that user
        # can read it on reload.
        assert (key_st.st_uid, key_st.st_gid) == (65534, 65534)
    remove_client(str(laptop), "phone", reload=False)
    st = laptop.stat()
    assert stat.S_IMODE(st.st_mode) == 0o640
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (65534, 65534)


def test_a_symlinked_config_stays_a_symlink(laptop, tmp_path):
    link = tmp_path / "link.conf"
    link.symlink_to(laptop.name)
    add_client(str(link), "phone", reload=False, rng=counting_rng())
    assert link.is_symlink()
    assert "[client phone]" in laptop.read_text()
    assert (tmp_path / "vpn.conf.bak").exists()


def test_crlf_files_stay_crlf(tmp_path):
    key_file(tmp_path, "a.key", K1)
    text = server_text(tmp_path, "[client a]\nid = 1\nkey_file = a.key\n"
                       "allowed_ips = 10.77.0.2/32\n").replace("\n", "\r\n")
    conf = write(tmp_path / "vpn.conf", text.encode())
    original = conf.read_bytes()
    add_client(str(conf), "b", reload=False, rng=counting_rng())
    new = conf.read_bytes()
    assert new.startswith(original)
    assert b"\n" not in new[len(original):].replace(b"\r\n", b"")
    remove_client(str(conf), "b", reload=False)
    assert conf.read_bytes() == original


def test_a_missing_final_newline_is_added(tmp_path):
    conf = write(tmp_path / "vpn.conf", server_text(tmp_path).rstrip("\n"))
    original = conf.read_bytes()
    add_client(str(conf), "b", reload=False, rng=counting_rng())
    assert conf.read_bytes().startswith(original + b"\n\n[client b]\n")
    remove_client(str(conf), "b", reload=False)
    assert conf.read_bytes() == original + b"\n"  # documented: the newline stays


def test_a_failure_during_the_write_leaves_the_file_untouched(laptop, tmp_path, monkeypatch):
    original = laptop.read_bytes()
    original_mode = laptop.stat().st_mode

    def failing_replace(src, dst, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(ProvisionError) as e:
        add_client(str(laptop), "phone", reload=False, rng=counting_rng())
    assert str(e.value) == f"{laptop}: cannot replace: no space left on device"
    assert laptop.read_bytes() == original
    assert laptop.stat().st_mode == original_mode
    assert not (tmp_path / "vpn.conf.tmp").exists()
    assert not (tmp_path / "phone.key").exists()  # the key file it had made is gone again
    with pytest.raises(ProvisionError):
        remove_client(str(laptop), "laptop", reload=False)
    assert laptop.read_bytes() == original
    assert not (tmp_path / "vpn.conf.tmp").exists()


def test_an_edit_in_progress_is_not_disturbed(laptop, tmp_path):
    tmp = write(tmp_path / "vpn.conf.tmp", "someone else's\n")
    before = laptop.read_bytes()
    with pytest.raises(ProvisionError) as e:
        add_client(str(laptop), "phone", reload=False, rng=counting_rng())
    assert str(e.value).startswith(f"{tmp}: already exists")
    assert tmp.read_text() == "someone else's\n"
    assert laptop.read_bytes() == before
    assert not (tmp_path / "phone.key").exists()


# --------------------------------------------------------------------------- remove-client


def test_remove_restores_what_add_added(laptop):
    original = laptop.read_bytes()
    rng = counting_rng()
    add_client(str(laptop), "phone", reload=False, rng=rng)
    after_phone = laptop.read_bytes()
    add_client(str(laptop), "tablet", reload=False, rng=rng)
    remove_client(str(laptop), "tablet", reload=False)
    assert laptop.read_bytes() == after_phone
    remove_client(str(laptop), "phone", reload=False)
    assert laptop.read_bytes() == original
    # In the other order too.
    (laptop.parent / "phone.key").unlink()
    (laptop.parent / "tablet.key").unlink()
    add_client(str(laptop), "phone", reload=False, rng=rng)
    add_client(str(laptop), "tablet", reload=False, rng=rng)
    remove_client(str(laptop), "phone", reload=False)
    remove_client(str(laptop), "tablet", reload=False)
    assert laptop.read_bytes() == original


def test_remove_takes_exactly_one_section(tmp_path):
    for name, key in (("a", K1), ("b", K2), ("c", K3)):
        key_file(tmp_path, f"{name}.key", key)
    head = server_text(tmp_path)
    a = "\n# --- laptops ---\n[client a]\nid = 1\nkey_file = a.key\nallowed_ips = 10.77.0.2/32\n"
    b = ("\n; phone of Bob\n"
         "[client b]  ; the header may carry a comment\n"
         "id = 2\n"
         "# a comment between keys goes with the section\n"
         "key_file = b.key\n"
         "allowed_ips = 10.77.0.3/32,\n"
         "    fd77::3/128\n"
         "\n"
         "\n")
    rest = ("# --- tablets ---\n"
            "\n"
            "[client c]\nid = 3\nkey_file = c.key\nallowed_ips = 10.77.0.4/32\n"
            "; the end\n")
    conf = write(tmp_path / "vpn.conf", head + a + b + rest)
    result = remove_client(str(conf), "b", reload=False)
    # The comment above the header and the comments after its last key stay.
    assert conf.read_text() == head + a + "\n; phone of Bob\n" + rest
    assert result.id == 2 and result.name == "b"
    assert result.key_file == str(tmp_path / "b.key")
    assert (tmp_path / "b.key").exists()  # left in place ...
    assert any(str(tmp_path / "b.key") in n and "left in place" in n for n in result.notes)
    assert [p.name for p in config.load(str(conf)).clients] == ["a", "c"]
    assert (tmp_path / "vpn.conf.bak").read_text() == head + a + b + rest


def test_remove_the_last_section(tmp_path):
    key_file(tmp_path, "a.key", K1)
    head = server_text(tmp_path)
    conf = write(tmp_path / "vpn.conf",
                 head + "\n[client a]\nid = 1\nkey_file = a.key\nallowed_ips = 10.77.0.2/32\n\n\n")
    remove_client(str(conf), "a", reload=False)
    assert conf.read_text() == head  # with the blank line before its header
    assert config.load(str(conf)).clients == ()


def test_remove_inline_client(tmp_path):
    clients = "[client a]\nid = 1\nkey = " + K1 + "\nallowed_ips = 10.77.0.2/32\n"
    conf = write(tmp_path / "vpn.conf", server_text(tmp_path, clients))
    result = remove_client(str(conf), "a", reload=False)
    assert result.key_file is None
    assert K1 not in conf.read_text()
    assert not any("key file" in n for n in result.notes)


def test_remove_unknown_name(laptop):
    before = laptop.read_bytes()
    with pytest.raises(ProvisionError) as e:
        remove_client(str(laptop), "phone", reload=False)
    assert str(e.value) == f"{laptop}: no [client phone] section (clients: laptop)"
    assert laptop.read_bytes() == before
    assert not (laptop.parent / "vpn.conf.bak").exists()


# --------------------------------------------------------------------------- reload


def test_no_daemon_running_is_a_note_not_an_error(laptop, tmp_path):
    result = add_client(str(laptop), "phone", reload=True, rng=counting_rng())
    assert result.reloaded is False
    sock = control.socket_path(str(tmp_path / "run"), "vpn0")
    assert any("no vpncryptd is running" in n and sock in n for n in result.notes)
    removed = remove_client(str(laptop), "phone", reload=True)
    assert removed.reloaded is False
    assert any("no vpncryptd is running" in n for n in removed.notes)


def test_a_stale_socket_is_a_note_not_an_error(laptop, tmp_path):
    (tmp_path / "run").mkdir()
    path = control.socket_path(str(tmp_path / "run"), "vpn0")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # the file stays; nobody listens
    result = add_client(str(laptop), "phone", reload=True, rng=counting_rng())
    assert result.reloaded is False
    assert any("was not reloaded" in n and "nobody listening" in n for n in result.notes)
    assert "[client phone]" in laptop.read_text()


class FakeDaemon:
    """A real control socket that answers one request per connection, like vpncryptd."""

    def __init__(self, path, reply):
        self.requests = []
        self.reply = reply
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(4)
        self.sock.settimeout(10)
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            data = b""
            while not data.endswith(b"\n"):
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            self.requests.append(json.loads(data))
            conn.sendall(json.dumps(self.reply).encode() + b"\n")

    def close(self):
        self.thread.join(10)
        self.sock.close()


@pytest.mark.parametrize("reply, reloaded, note", [
    ({"ok": True}, True, "vpncryptd on vpn0 reloaded its configuration"),
    ({"ok": False, "error": "bad things"}, False, "vpncryptd on vpn0 did not reload: bad things"),
])
def test_a_running_daemon_is_asked_to_reload(laptop, tmp_path, reply, reloaded, note):
    (tmp_path / "run").mkdir()
    daemon = FakeDaemon(control.socket_path(str(tmp_path / "run"), "vpn0"), reply)
    try:
        result = add_client(str(laptop), "phone", reload=True, rng=counting_rng())
    finally:
        daemon.close()
    assert daemon.requests == [{"command": "reload"}]
    assert result.reloaded is reloaded
    assert any(n.startswith(note) for n in result.notes)


def test_reload_false_does_not_touch_the_socket(laptop, tmp_path):
    (tmp_path / "run").mkdir()
    path = control.socket_path(str(tmp_path / "run"), "vpn0")
    daemon = FakeDaemon(path, {"ok": True})
    try:
        result = add_client(str(laptop), "phone", reload=False, rng=counting_rng())
    finally:
        control.request(path, {"command": "show"})  # its one connection, after ours
        daemon.close()
    assert daemon.requests == [{"command": "show"}]
    assert result.reloaded is False
    assert not any("vpncryptd" in n for n in result.notes)


def test_transport_tcp_points_the_client_at_listen_tcp(laptop):
    with pytest.raises(ProvisionError, match=r"--transport=tcp, but \[server\] has no listen_tcp"):
        add_client(str(laptop), "phone", reload=False, transport="tcp")
    text = laptop.read_text().replace("[server]\n", "[server]\nlisten_tcp = 192.0.2.7:443\n", 1)
    laptop.write_text(text)
    result = add_client(str(laptop), "phone", reload=False, transport="tcp")
    client = parse_client(result, "c.conf")
    assert client.transport == "tcp" and (client.server_host, client.server_port) == ("192.0.2.7", 443)
    udp = parse_client(add_client(str(laptop), "tablet", reload=False), "c.conf")
    assert udp.transport == "udp" and udp.server_port != 443
