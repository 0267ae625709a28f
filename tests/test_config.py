"""Tests for vpncrypt.config: good files, a table of broken files with exact messages,
key files, and the promise that key material never shows up in messages or reprs."""

import base64
import ipaddress
import os
import pickle
import random
from ipaddress import ip_interface, ip_network

import pytest

from vpncrypt import config
from vpncrypt.config import ClientConfig, ConfigError, Peer, ServerConfig, load, load_key_file, parse
from vpncrypt.protocol import wire
from vpncrypt.protocol.keys import generate_key

RAW1 = bytes(range(32))
RAW2 = bytes(range(100, 132))
RAW3 = bytes(range(200, 232))
K1 = base64.b64encode(RAW1).decode()
K2 = base64.b64encode(RAW2).decode()
K3 = base64.b64encode(RAW3).decode()
SHORT = base64.b64encode(bytes(16)).decode()
ALL_KEY_TEXTS = (K1, K2, K3, SHORT)



NOBODY = 65534


@pytest.fixture
def unprivileged_dir():
    """A directory an unprivileged user may traverse (pytest's tmp_path is 0700 root's)."""
    import shutil
    import tempfile

    path = tempfile.mkdtemp(prefix="vpncrypt-config-test-")
    os.chmod(path, 0o755)
    try:
        yield __import__("pathlib").Path(path)
    finally:
        shutil.rmtree(path)


def error_as_unprivileged_user(func, *args):
    """str() of the ConfigError func(*args) raises, run without root's power to read anything."""
    if os.geteuid() != 0:
        with pytest.raises(ConfigError) as e:
            func(*args)
        return str(e.value)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop to nobody, report, never return into pytest
        status = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                func(*args)
                out = "NO ERROR"
            except ConfigError as e:
                out, status = str(e), 0
            except BaseException as e:  # noqa: BLE001 - reported to the parent
                out = f"UNEXPECTED {type(e).__name__}: {e}"
            os.write(write_end, out.encode())
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        out = f.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out
    return out


def write_key(path, text, mode=0o600):
    path.write_text(text)
    os.chmod(path, mode)
    return path


def write_conf(tmp_path, text, name="vpncrypt.conf", mode=0o600):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    os.chmod(path, mode)
    return path


# --------------------------------------------------------------------------- good files

SERVER_GOOD = f"""\
# vpncrypt server
[server]
listen = [::]:51900          ; dual stack
interface = vpn0
address = 10.77.0.1/24, fd77::1/64

[client laptop]
id = 1
key = {K1}
allowed_ips = 10.77.0.2/32, fd77::2/128

[client phone]
id = 2
key_file = phone.key   # relative to the config file
allowed_ips = 10.77.0.3/32,
    fd77::3/128,
    192.168.50.0/24
"""


def test_server_config_with_ipv6_listen_and_defaults(tmp_path, monkeypatch):
    write_key(tmp_path / "phone.key", K2 + "\n")
    path = write_conf(tmp_path, SERVER_GOOD)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # key_file must resolve against the config's directory
    cfg = load(str(path))
    assert isinstance(cfg, ServerConfig)
    assert cfg.role == "server"
    assert cfg.path == str(path)
    assert cfg.listen_host == "::"
    assert cfg.listen_port == 51900
    assert cfg.interface == "vpn0"
    assert cfg.addresses == (ip_interface("10.77.0.1/24"), ip_interface("fd77::1/64"))
    assert cfg.server_id == 0
    assert cfg.mtu is None
    assert cfg.user is None
    assert cfg.state_dir == "/run/vpncrypt"
    assert cfg.clients == (
        Peer("laptop", 1, RAW1, (ip_network("10.77.0.2/32"), ip_network("fd77::2/128"))),
        Peer(
            "phone",
            2,
            RAW2,
            (ip_network("10.77.0.3/32"), ip_network("fd77::3/128"), ip_network("192.168.50.0/24")),
        ),
    )


def test_server_config_all_options(tmp_path):
    path = write_conf(
        tmp_path,
        f"""\
[server]
listen = 0.0.0.0:51900
interface = vpn7
address = 10.77.0.1/24
server_id = 4294967295
mtu = 576
user = nobody
state_dir = /var/lib/vpncrypt

[client a-b.c_d@x+y]
id = 65535
key = {K1}
allowed_ips = 10.77.0.2/32
""",
    )
    cfg = load(path)
    assert (cfg.listen_host, cfg.listen_port) == ("0.0.0.0", 51900)
    assert cfg.interface == "vpn7"
    assert cfg.server_id == 4294967295
    assert cfg.mtu == 576  # allowed: the tunnel carries only IPv4
    assert cfg.user == "nobody"
    assert cfg.state_dir == "/var/lib/vpncrypt"
    assert [(c.name, c.id) for c in cfg.clients] == [("a-b.c_d@x+y", 65535)]


def test_server_without_clients_is_valid(tmp_path):
    cfg = parse("[server]\nlisten = 127.0.0.1:1\ninterface = t\naddress = 10.0.0.1/32\n")
    assert cfg.clients == ()
    assert cfg.listen_port == 1


def test_client_config_ipv6_literal_and_key_file(tmp_path):
    keyfile = write_key(tmp_path / "laptop.key", "\n  " + K1 + "  \n\n")
    path = write_conf(
        tmp_path,
        f"""\
[client]
id = 1
server = [fd00::1]:51900
server_id = 7
key_file = {keyfile}
interface = vpn0
address = 10.77.0.2/24, fd77::2/64
routes = 10.77.0.0/24, 192.168.1.0/24 fd77:1::/64
keepalive = 0
mtu = 1280
user = vpn-user
state_dir = /run/vpn
""",
    )
    cfg = load(path)
    assert isinstance(cfg, ClientConfig)
    assert cfg.role == "client"
    assert cfg.id == 1
    assert cfg.server_host == "fd00::1"
    assert cfg.server_port == 51900
    assert cfg.server_id == 7
    assert cfg.key == RAW1
    assert cfg.interface == "vpn0"
    assert cfg.addresses == (ip_interface("10.77.0.2/24"), ip_interface("fd77::2/64"))
    assert cfg.routes == (ip_network("10.77.0.0/24"), ip_network("192.168.1.0/24"), ip_network("fd77:1::/64"))
    assert cfg.keepalive == 0
    assert cfg.mtu == 1280
    assert cfg.user == "vpn-user"
    assert cfg.state_dir == "/run/vpn"


def test_client_config_host_name_inline_key_and_defaults():
    cfg = parse(
        f"""\
[client]
id = 1
server = vpn.example.org:51900  ; host name
key = {K2}
interface = vpn0
address = 10.77.0.2/24
""",
        "/etc/vpncrypt/client.conf",
    )
    assert cfg.path == "/etc/vpncrypt/client.conf"
    assert (cfg.server_host, cfg.server_port) == ("vpn.example.org", 51900)
    assert cfg.key == RAW2
    assert cfg.server_id == 0
    assert cfg.keepalive == 25
    assert cfg.routes == ()
    assert cfg.mtu is None
    assert cfg.user is None
    assert cfg.state_dir == "/run/vpncrypt"


@pytest.mark.parametrize(
    "server, host, port",
    [
        ("198.51.100.7:1", "198.51.100.7", 1),
        ("[2001:db8::7]:65535", "2001:db8::7", 65535),
        ("[2001:0db8:0000::0007]:443", "2001:db8::7", 443),
        ("VPN-1.Example.ORG.:51900", "VPN-1.Example.ORG.", 51900),
        ("localhost:51900", "localhost", 51900),
    ],
)
def test_client_server_endpoint_forms(server, host, port):
    cfg = parse(f"[client]\nid=3\nserver={server}\nkey={K1}\ninterface=t0\naddress=10.0.0.2/24\n")
    assert (cfg.server_host, cfg.server_port) == (host, port)


def test_key_file_relative_to_config_dir_with_parse(tmp_path, monkeypatch):
    sub = tmp_path / "etc"
    sub.mkdir()
    write_key(sub / "c.key", K3)
    monkeypatch.chdir(tmp_path)
    text = "[client]\nid=9\nserver=10.0.0.1:5\nkey_file=c.key\ninterface=t0\naddress=10.0.0.2/24\n"
    assert parse(text, str(sub / "client.conf")).key == RAW3
    with pytest.raises(ConfigError) as e:
        parse(text, str(tmp_path / "client.conf"))  # now c.key would be tmp_path/c.key
    assert str(e.value) == (
        f"{tmp_path}/client.conf:4: [client] key_file: {tmp_path}/c.key: no such key file"
    )


def test_crlf_bom_comments_and_blank_lines(tmp_path):
    text = (
        "\ufeff; comment\r\n# another\r\n\r\n[server]\r\nlisten = 10.0.0.1:51900 # c\r\n"
        "interface = vpn0\r\n\r\naddress = 10.77.0.1/24 ; c\r\n"
    )
    path = tmp_path / "crlf.conf"
    path.write_bytes(text.encode("utf-8"))
    cfg = load(path)
    assert cfg.listen_host == "10.0.0.1"
    assert cfg.addresses == (ip_interface("10.77.0.1/24"),)
    # line numbers still count CRLF lines correctly
    with pytest.raises(ConfigError) as e:
        parse(text.replace("vpn0", "vpn/0"), "crlf.conf")
    assert str(e.value).startswith("crlf.conf:6: [server] interface: ")


def test_keys_are_case_insensitive_and_whitespace_tolerant():
    cfg = parse("[server]\n  LISTEN=10.0.0.1:7\nInterface =t\naddress= 10.0.0.1/24 ,  fd00::1/64\n")
    assert cfg.listen_port == 7 and cfg.interface == "t" and len(cfg.addresses) == 2


def test_many_clients_keep_file_order_and_parse_quickly():
    parts = ["[server]\nlisten=0.0.0.0:1\ninterface=t\naddress=10.0.0.1/16\n"]
    for i in range(1, 1001):
        raw = i.to_bytes(2, "big") * 16
        parts.append(
            f"[client c{i}]\nid={i}\nkey={base64.b64encode(raw).decode()}\n"
            f"allowed_ips=10.1.{i // 256}.{i % 256}/32, fd00::{i:x}/128\n"
        )
    cfg = parse("".join(parts))
    assert [c.id for c in cfg.clients] == list(range(1, 1001))
    assert cfg.clients[999].allowed_ips == (ip_network("10.1.3.232/32"), ip_network("fd00::3e8/128"))


# --------------------------------------------------------------------------- broken files

HEAD = """\
[server]
listen = 0.0.0.0:51900
interface = vpn0
address = 10.77.0.1/24, fd77::1/64
"""  # lines 1-4


def laptop(key_line=f"key = {K1}", allowed="10.77.0.2/32, fd77::2/128", id_="1"):
    # line 5 blank, 6 header, 7 id, 8 key, 9 allowed_ips
    return f"\n[client laptop]\nid = {id_}\n{key_line}\nallowed_ips = {allowed}\n"


def phone(key_line=f"key = {K2}", allowed="10.77.0.3/32, fd77::3/128", id_="2", header="client phone"):
    # line 10 blank, 11 header, 12 id, 13 key, 14 allowed_ips
    return f"\n[{header}]\nid = {id_}\n{key_line}\nallowed_ips = {allowed}\n"


def client(**override):
    keys = {
        "id": "1",
        "server": "vpn.example.org:51900",
        "key": K1,
        "interface": "vpn0",
        "address": "10.77.0.2/24, fd77::2/64",
    }
    keys.update(override)
    lines = ["[client]"] + [f"{k} = {v}" for k, v in keys.items() if v is not None]
    return "\n".join(lines) + "\n"  # lines: 1 [client], 2 id, 3 server, 4 key, 5 interface, 6 address, 7+ extras


TOO_OPEN = (
    "permissions 0644 are too open; the key file must not be accessible by group or others (chmod 600)"
)
SERVER_KEYS = "listen, interface, address, server_id, mtu, user, state_dir, offload, configure_interface"
PEER_KEYS = "id, key, key_file, allowed_ips"

# (id, config text or bytes, {key file name: (content, mode) or "dir"}, expected message)
BROKEN = [
    # ---- cross-client checks
    ("overlap-v4", HEAD + laptop() + phone(allowed="10.77.0.2/31"), {},
     "{path}:14: [client phone] allowed_ips: 10.77.0.2/31 overlaps 10.77.0.2/32 of [client laptop]"),
    ("overlap-v6", HEAD + laptop() + phone(allowed="10.77.0.3/32, fd77::2/127"), {},
     "{path}:14: [client phone] allowed_ips: fd77::2/127 overlaps fd77::2/128 of [client laptop]"),
    ("overlap-later-is-smaller", HEAD + laptop(allowed="192.168.0.0/16") + phone(allowed="192.168.7.9/32"), {},
     "{path}:14: [client phone] allowed_ips: 192.168.7.9/32 overlaps 192.168.0.0/16 of [client laptop]"),
    ("overlap-last-address", HEAD + laptop(allowed="192.168.0.0/24") + phone(allowed="192.168.0.255/32"), {},
     "{path}:14: [client phone] allowed_ips: 192.168.0.255/32 overlaps 192.168.0.0/24 of [client laptop]"),
    ("overlap-identical", HEAD + laptop() + phone(allowed="10.77.0.3/32, fd77::2/128"), {},
     "{path}:14: [client phone] allowed_ips: fd77::2/128 overlaps fd77::2/128 of [client laptop]"),
    ("overlap-same-client", HEAD + laptop(allowed="192.168.0.0/16, 192.168.1.0/24"), {},
     "{path}:9: [client laptop] allowed_ips: 192.168.1.0/24 overlaps 192.168.0.0/16 listed before it"),
    ("allowed-contains-server-v4", HEAD + laptop(allowed="10.77.0.0/24"), {},
     "{path}:9: [client laptop] allowed_ips: 10.77.0.0/24 contains the server's own address 10.77.0.1 ([server] address)"),
    ("allowed-contains-server-v6", HEAD + laptop(allowed="::/0"), {},
     "{path}:9: [client laptop] allowed_ips: ::/0 contains the server's own address fd77::1 ([server] address)"),
    ("duplicate-id", HEAD + laptop() + phone(id_="1"), {},
     "{path}:12: [client phone] id: 1 is already used by [client laptop]"),
    ("same-key-two-clients", HEAD + laptop() + phone(key_line=f"key = {K1}"), {},
     "{path}:13: [client phone] key: the same key as [client laptop]; every client needs its own key"),
    ("duplicate-client-name", HEAD + laptop() + phone(header="client   laptop"), {},
     "{path}:11: duplicate client name 'laptop' (first at line 6)"),
    ("bad-client-name", HEAD + laptop() + phone(header="client my phone"), {},
     "{path}:11: invalid client name 'my phone': use 1-64 letters, digits and _ . - @ + (starting with a letter or digit)"),
    # ---- keys
    ("bad-base64", HEAD + laptop(key_line="key = not*base64!"), {},
     "{path}:8: [client laptop] key: key is not valid base64"),
    ("wrong-key-length", HEAD + laptop(key_line=f"key = {SHORT}"), {},
     "{path}:8: [client laptop] key: key must decode to 32 bytes, got 16"),
    ("empty-key", HEAD + laptop(key_line="key ="), {},
     "{path}:8: [client laptop] key: key is empty"),
    ("key-file-bad-base64", HEAD + laptop(key_line="key_file = laptop.key"), {"laptop.key": ("%%%%\n", 0o600)},
     "{path}:8: [client laptop] key_file: {dir}/laptop.key: key is not valid base64"),
    ("key-file-wrong-length", HEAD + laptop(key_line="key_file = laptop.key"), {"laptop.key": (SHORT + "\n", 0o600)},
     "{path}:8: [client laptop] key_file: {dir}/laptop.key: key must decode to 32 bytes, got 16"),
    ("key-file-too-open", HEAD + laptop(key_line="key_file = laptop.key"), {"laptop.key": (K1 + "\n", 0o644)},
     "{path}:8: [client laptop] key_file: {dir}/laptop.key: " + TOO_OPEN),
    ("key-file-group-readable", client(key=None, key_file="c.key"), {"c.key": (K1, 0o640)},
     "{path}:6: [client] key_file: {dir}/c.key: permissions 0640 are too open; the key file must not be accessible by group or others (chmod 600)"),
    ("key-file-missing", HEAD + laptop(key_line="key_file = missing.key"), {},
     "{path}:8: [client laptop] key_file: {dir}/missing.key: no such key file"),
    ("key-file-is-directory", HEAD + laptop(key_line="key_file = keys"), {"keys": "dir"},
     "{path}:8: [client laptop] key_file: {dir}/keys: is a directory, not a key file"),
    ("key-in-key-file-value", HEAD + laptop(key_line=f"key_file = {K1}"), {},
     "{path}:8: [client laptop] key_file: the value is a key, not a file name (write key = ... for an inline key)"),
    ("key-and-key-file", HEAD + laptop(key_line=f"key = {K1}\nkey_file = laptop.key"), {"laptop.key": (K1, 0o600)},
     "{path}:9: [client laptop] key_file: key and key_file are mutually exclusive; keep only one"),
    ("neither-key-nor-key-file", HEAD + laptop(key_line=""), {},
     "{path}:6: [client laptop] missing key or key_file (the client's base64 256-bit key)"),
    ("client-neither-key", client(key=None), {},
     "{path}:1: [client] missing key or key_file (the client's base64 256-bit key)"),
    ("key-pasted-on-own-line", HEAD + laptop(key_line=f"key = {K1}\n{K2}"), {},
     "{path}:9: [client laptop] unrecognised line (expected 'key = value' with one of: " + PEER_KEYS + ")"),
    # ---- structure
    ("unknown-key", HEAD + "keepalive = 25\n", {},
     "{path}:5: [server] unknown key 'keepalive'; valid keys: " + SERVER_KEYS),
    ("unknown-key-typo", HEAD + laptop(allowed="10.77.0.2/32\nalowed_ips = 10.77.0.4/32"), {},
     "{path}:10: [client laptop] unknown key 'alowed_ips' (did you mean 'allowed_ips'?); valid keys: " + PEER_KEYS),
    ("unknown-section", HEAD + laptop() + phone(header="peer phone"), {},
     "{path}:11: unknown section [peer phone] (expected [server] with [client NAME] peers, or a single [client])"),
    ("key-as-section-name", HEAD + f"[{K3}]\n", {},
     "{path}:5: unknown section [<name not shown: it looks like key material>] (expected [server] with [client NAME] peers, or a single [client])"),
    ("default-section-is-not-special", "[DEFAULT]\nmtu = 1400\n" + HEAD, {},
     "{path}:1: unknown section [DEFAULT] (expected [server] with [client NAME] peers, or a single [client])"),
    ("section-name-is-case-sensitive", HEAD.replace("[server]", "[Server]"), {},
     "{path}:1: unknown section [Server] (expected [server] with [client NAME] peers, or a single [client])"),
    ("missing-server-section", laptop().lstrip("\n"), {},
     "{path}:1: [client laptop] needs a [server] section ([client NAME] sections are the peers of a server; a client config has a single [client])"),
    ("no-role-section", "; nothing here\n# at all\n", {},
     "{path}: no [server] or [client] section"),
    ("both-roles", HEAD + "\n" + client(), {},
     "{path}:6: a file is either a server config ([server] and [client NAME] peers) or a client config (one [client]), not both"),
    ("client-with-named-peer", client() + laptop(), {},
     "{path}:8: [client laptop] is only allowed in a server config; a client config has a single [client] section"),
    ("empty-file", "", {},
     "{path}: the file is empty (expected a [server] or [client] section)"),
    ("whitespace-only-file", "\n   \n\t\n", {},
     "{path}: the file is empty (expected a [server] or [client] section)"),
    ("non-utf8", b"[server]\nlisten = 0.0.0.0:51900\ninterface = vpn\xff0\n", {},
     "{path}:3: not valid UTF-8 text (byte 0xff)"),
    ("duplicate-section", HEAD + laptop() + phone(header="client laptop"), {},
     "{path}:11: duplicate section [client laptop] (first at line 6)"),
    ("duplicate-server-section-spelled-differently", HEAD + "\n[ server ]\nmtu = 1400\n", {},
     "{path}:6: duplicate section [server] (first at line 1)"),
    ("text-after-section-header", HEAD + laptop().replace("[client laptop]", "[client laptop] id = 1"), {},
     "{path}:6: unexpected text after the section header"),
    ("duplicate-key", HEAD + "listen = 0.0.0.0:51901\n", {},
     "{path}:5: [server] listen: duplicate key (first set at line 2)"),
    ("text-before-section", "listen = 0.0.0.0:1\n" + HEAD, {},
     "{path}:1: text before the first section header (a file starts with [server] or [client])"),
    ("colon-delimiter", HEAD.replace("listen = ", "listen: "), {},
     "{path}:2: cannot parse this line: expected 'key = value', a [section] header or a comment (use '=' between key and value, not ':')"),
    ("line-without-value", HEAD + "mtu\n", {},
     "{path}:5: cannot parse this line: expected 'key = value', a [section] header or a comment"),
    ("accidental-continuation", HEAD.replace("interface", "  interface"), {},
     "{path}:2: [server] listen: the value continues on an indented line below; remove the indentation of the next line or join the lines"),
    ("missing-listen", HEAD.replace("listen = 0.0.0.0:51900\n", ""), {},
     "{path}:1: [server] missing required key 'listen'"),
    ("missing-address", HEAD.replace("address = 10.77.0.1/24, fd77::1/64\n", ""), {},
     "{path}:1: [server] missing required key 'address'"),
    ("missing-client-server", client(server=None), {},
     "{path}:1: [client] missing required key 'server'"),
    ("missing-peer-allowed-ips", HEAD + "\n[client laptop]\nid = 1\nkey = " + K1 + "\n", {},
     "{path}:6: [client laptop] missing required key 'allowed_ips'"),
    ("missing-peer-id", HEAD + "\n[client laptop]\nkey = " + K1 + "\nallowed_ips = 10.77.0.2/32\n", {},
     "{path}:6: [client laptop] missing required key 'id'"),
    ("empty-interface", HEAD.replace("= vpn0", "="), {},
     "{path}:3: [server] interface: value is empty"),
    ("empty-allowed-ips", HEAD + laptop(allowed=""), {},
     "{path}:9: [client laptop] allowed_ips: value is empty (list at least one entry)"),
    # ---- endpoints
    ("port-out-of-range", HEAD.replace(":51900", ":70000"), {},
     "{path}:2: [server] listen: port 70000 is out of range 1-65535"),
    ("port-zero", HEAD.replace(":51900", ":0"), {},
     "{path}:2: [server] listen: port 0 is out of range 1-65535"),
    ("port-not-a-number", HEAD.replace(":51900", ":http"), {},
     "{path}:2: [server] listen: port 'http' is not a number"),
    ("listen-without-port", HEAD.replace(":51900", ""), {},
     "{path}:2: [server] listen: '0.0.0.0' has no port (e.g. 0.0.0.0:51900 or [::]:51900)"),
    ("listen-host-name", HEAD.replace("0.0.0.0:", "vpn.example.org:"), {},
     "{path}:2: [server] listen: 'vpn.example.org' is not an IP address; listen takes an IP literal such as 0.0.0.0 or [::]"),
    ("listen-ipv6-without-brackets", HEAD.replace("0.0.0.0:51900", ":::51900"), {},
     "{path}:2: [server] listen: ':::51900': write an IPv6 address in brackets, e.g. [fd00::1]:51900"),
    ("server-ipv6-without-brackets", client(server="fd00::1:51900"), {},
     "{path}:3: [client] server: 'fd00::1:51900': write an IPv6 address in brackets, e.g. [fd00::1]:51900"),
    ("server-ipv4-in-brackets", client(server="[10.0.0.1]:51900"), {},
     "{path}:3: [client] server: '10.0.0.1' in brackets is not an IPv6 address"),
    ("server-bad-host-name", client(server="vpn..example.org:51900"), {},
     "{path}:3: [client] server: 'vpn..example.org' is not a valid host name or IP address"),
    ("server-bad-ipv4", client(server="10.77.0.300:51900"), {},
     "{path}:3: [client] server: '10.77.0.300' is not a valid IPv4 address"),
    ("server-unspecified", client(server="0.0.0.0:51900"), {},
     "{path}:3: [client] server: 0.0.0.0 cannot be a server address"),
    ("server-without-port", client(server="vpn.example.org"), {},
     "{path}:3: [client] server: 'vpn.example.org' has no port (e.g. vpn.example.org:51900 or [fd00::1]:51900)"),
    # ---- addresses and networks
    ("bad-address", HEAD.replace("10.77.0.1/24", "10.77.0.300/24"), {},
     "{path}:4: [server] address: '10.77.0.300/24' is not an IP address with a prefix length (e.g. 10.77.0.1/24)"),
    ("address-without-prefix", HEAD.replace("10.77.0.1/24", "10.77.0.1"), {},
     "{path}:4: [server] address: 10.77.0.1 has no prefix length (e.g. 10.77.0.1/24)"),
    ("address-is-network-address", HEAD.replace("10.77.0.1/24", "10.77.0.0/24"), {},
     "{path}:4: [server] address: 10.77.0.0/24 is the network address of 10.77.0.0/24, not a host address"),
    ("address-twice", HEAD.replace("fd77::1/64", "10.77.0.1/16"), {},
     "{path}:4: [server] address: 10.77.0.1 is listed twice"),
    ("host-bits-set", HEAD + laptop(allowed="10.77.0.2/24"), {},
     "{path}:9: [client laptop] allowed_ips: 10.77.0.2/24 has host bits set (the network is 10.77.0.0/24; a single host is 10.77.0.2/32)"),
    ("host-bits-set-v6", HEAD + laptop(allowed="10.77.0.2/32, fd77::2/64"), {},
     "{path}:9: [client laptop] allowed_ips: fd77::2/64 has host bits set (the network is fd77::/64; a single host is fd77::2/128)"),
    ("bad-allowed-ips", HEAD + laptop(allowed="10.77.0.300/32"), {},
     "{path}:9: [client laptop] allowed_ips: '10.77.0.300/32' is not an IP network"),
    ("bad-route", client(routes="10.0.0.0/8, banana"), {},
     "{path}:7: [client] routes: 'banana' is not an IP network"),
    ("route-twice", client(routes="10.0.0.0/8, 10.0.0.0/8"), {},
     "{path}:7: [client] routes: 10.0.0.0/8 is listed twice"),
    # ---- numbers
    ("server-id-too-big", HEAD + "server_id = 4294967296\n", {},
     "{path}:5: [server] server_id: 4294967296 is out of range 0-4294967295"),
    ("server-id-negative", HEAD + "server_id = -1\n", {},
     "{path}:5: [server] server_id: '-1' is not a whole number"),
    ("client-server-id-not-number", client(server_id="seven"), {},
     "{path}:7: [client] server_id: 'seven' is not a whole number"),
    ("keepalive-not-number", client(keepalive="25s"), {},
     "{path}:7: [client] keepalive: '25s' is not a whole number"),
    ("keepalive-too-big", client(keepalive="3601"), {},
     "{path}:7: [client] keepalive: 3601 is out of range 0-3600"),
    ("id-zero", HEAD + laptop(id_="0"), {},
     "{path}:7: [client laptop] id: 0 is out of range 1-65535"),
    ("id-70000", HEAD + laptop(id_="70000"), {},
     "{path}:7: [client laptop] id: 70000 is out of range 1-65535"),
    ("client-id-zero", client(id="0"), {},
     "{path}:2: [client] id: 0 is out of range 1-65535"),
    ("mtu-too-small", client(address="10.77.0.2/24", mtu="575"), {},
     "{path}:7: [client] mtu: 575 is out of range 576-65483"),
    ("mtu-too-big", HEAD + "mtu = 65484\n", {},
     "{path}:5: [server] mtu: 65484 is out of range 576-65483"),
    ("mtu-below-ipv6-minimum", client(mtu="1279"), {},
     "{path}:7: [client] mtu: 1279 is below 1280, the minimum for IPv6 (address fd77::2/64 is IPv6)"),
    # ---- names
    ("interface-with-slash", HEAD.replace("vpn0", "vpn/0"), {},
     "{path}:3: [server] interface: 'vpn/0' is not a valid interface name (no '/', ':' or whitespace)"),
    ("interface-with-colon", client(interface="vpn0:1"), {},
     "{path}:5: [client] interface: 'vpn0:1' is not a valid interface name (no '/', ':' or whitespace)"),
    ("interface-with-space", HEAD.replace("vpn0", "vpn 0"), {},
     "{path}:3: [server] interface: 'vpn 0' is not a valid interface name (no '/', ':' or whitespace)"),
    ("interface-too-long", HEAD.replace("vpn0", "vpn0123456789abc"), {},
     "{path}:3: [server] interface: 'vpn0123456789abc' is too long for an interface name (at most 15 bytes)"),
    ("bad-user", client(user="no body"), {},
     "{path}:7: [client] user: 'no body' is not a valid user name"),
    ("empty-user", HEAD + "user =\n", {},
     "{path}:5: [server] user: value is empty (remove the line to use the default)"),
    ("relative-state-dir", HEAD + "state_dir = run/vpncrypt\n", {},
     "{path}:5: [server] state_dir: 'run/vpncrypt' is not an absolute path"),
]


def _materialise(tmp_path, text, keyfiles):
    for name, spec in keyfiles.items():
        if spec == "dir":
            (tmp_path / name).mkdir()
        else:
            content, mode = spec
            write_key(tmp_path / name, content, mode)
    return write_conf(tmp_path, text)


def _assert_good_message(message, path, secrets=ALL_KEY_TEXTS):
    assert "\n" not in message and "\r" not in message
    assert str(path) in message
    for secret in secrets:
        assert secret not in message
        assert secret.lower() not in message.lower()
        assert secret[:24] not in message


def test_broken_table_is_big_and_unique():
    ids = [case[0] for case in BROKEN]
    assert len(ids) == len(set(ids))
    assert len(BROKEN) >= 20


@pytest.mark.parametrize("case_id, text, keyfiles, expected", BROKEN, ids=[c[0] for c in BROKEN])
def test_broken_config(tmp_path, case_id, text, keyfiles, expected):
    path = _materialise(tmp_path, text, keyfiles)
    with pytest.raises(ConfigError) as excinfo:
        load(str(path))
    message = str(excinfo.value)
    assert message == expected.format(path=path, dir=tmp_path)
    _assert_good_message(message, path)
    _assert_good_message(repr(excinfo.value), path)
    assert excinfo.value.path == str(path)
    if isinstance(text, str):  # parse() on the same text says exactly the same
        with pytest.raises(ConfigError) as again:
            parse(text, str(path))
        assert str(again.value) == message


def test_error_has_parts_and_survives_pickle(tmp_path):
    with pytest.raises(ConfigError) as excinfo:
        parse(HEAD + laptop(id_="0"), "/etc/vpncrypt/vpncrypt.conf")
    e = excinfo.value
    assert (e.path, e.line, e.section, e.key) == ("/etc/vpncrypt/vpncrypt.conf", 7, "client laptop", "id")
    assert e.problem == "0 is out of range 1-65535"
    copy = pickle.loads(pickle.dumps(e))
    assert str(copy) == str(e) and copy.line == 7


def test_error_without_line_uses_section_form():
    e = ConfigError("x.conf", "something", section="server", key="listen")
    assert str(e) == "x.conf: [server] listen: something"
    assert str(ConfigError("a\nb.conf", "bad\nthing")) == "a\\nb.conf: bad\\nthing"
    plain = ConfigError("x.conf: already formatted")
    assert str(plain) == "x.conf: already formatted" and plain.path is None
    assert str(pickle.loads(pickle.dumps(plain))) == "x.conf: already formatted"


def test_message_never_echoes_key_like_values():
    with pytest.raises(ConfigError) as e:
        parse(client(address=K1))
    assert str(e.value) == (
        "<string>:6: [client] address: <value not shown: it looks like key material> "
        "is not an IP address with a prefix length (e.g. 10.77.0.1/24)"
    )
    with pytest.raises(ConfigError) as e:
        parse(HEAD + laptop(key_line=f"key = {K1}x"))
    assert K1 not in str(e.value)
    assert str(e.value) == "<string>:8: [client laptop] key: key is not valid base64"


# --------------------------------------------------------------------------- load() I/O errors


def test_load_missing_file(tmp_path):
    with pytest.raises(ConfigError) as e:
        load(tmp_path / "nope.conf")
    assert str(e.value) == f"{tmp_path}/nope.conf: no such file"


def test_load_directory(tmp_path):
    with pytest.raises(ConfigError) as e:
        load(str(tmp_path))
    assert str(e.value) == f"{tmp_path}: is a directory, not a configuration file"


def test_load_unreadable_file(unprivileged_dir):
    path = write_conf(unprivileged_dir, HEAD)
    os.chmod(path, 0)
    assert error_as_unprivileged_user(load, str(path)) == (
        f"{path}: permission denied reading the configuration file"
    )


def test_load_too_large(tmp_path):
    path = write_conf(tmp_path, HEAD + "#" * (1 << 20))
    with pytest.raises(ConfigError) as e:
        load(path)
    assert str(e.value) == f"{path}: is too large for a configuration file (over 1048576 bytes)"


def test_load_non_utf8_first_line(tmp_path):
    path = write_conf(tmp_path, b"\xfe[server]\n")
    with pytest.raises(ConfigError) as e:
        load(path)
    assert str(e.value) == f"{path}:1: not valid UTF-8 text (byte 0xfe)"


# --------------------------------------------------------------------------- key files


def test_load_key_file_ok_with_whitespace(tmp_path):
    assert load_key_file(write_key(tmp_path / "k", f"\n {K3}\t\n")) == RAW3
    assert load_key_file(str(write_key(tmp_path / "k2", K1))) == RAW1
    assert load_key_file(write_key(tmp_path / "k3", K2, 0o400)) == RAW2


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o602, 0o620, 0o660, 0o666, 0o700 | 0o010, 0o601])
def test_load_key_file_refuses_open_permissions(tmp_path, mode):
    path = write_key(tmp_path / "k", K1, mode)
    with pytest.raises(ConfigError) as e:
        load_key_file(path)
    assert str(e.value) == (
        f"{path}: permissions {mode:04o} are too open; the key file must not be accessible "
        "by group or others (chmod 600)"
    )
    assert K1 not in str(e.value)


@pytest.mark.parametrize(
    "content, problem",
    [
        ("", "key is empty"),
        ("  \n\n", "key is empty"),
        (K1 + "\n" + K2 + "\n", "key is not valid base64"),
        (K1 + " # laptop\n", "key is not valid base64"),
        (SHORT, "key must decode to 32 bytes, got 16"),
        (base64.b64encode(bytes(33)).decode(), "key must decode to 32 bytes, got 33"),
        ("é" + K1, "key is not valid base64 (the file is not ASCII text)"),
        ("x" * 5000, "is too large to be a key file (over 4096 bytes)"),
    ],
)
def test_load_key_file_bad_contents(tmp_path, content, problem):
    path = write_key(tmp_path / "k", content)
    with pytest.raises(ConfigError) as e:
        load_key_file(path)
    assert str(e.value) == f"{path}: {problem}"
    for secret in ALL_KEY_TEXTS:
        assert secret not in str(e.value)


def test_load_key_file_missing_and_directory_and_fifo(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_key_file(tmp_path / "missing.key")
    assert str(e.value) == f"{tmp_path}/missing.key: no such key file"
    with pytest.raises(ConfigError) as e:
        load_key_file(tmp_path / "missing-dir" / "x.key")
    assert str(e.value) == f"{tmp_path}/missing-dir/x.key: no such key file"
    with pytest.raises(ConfigError) as e:
        load_key_file(tmp_path)
    assert str(e.value) == f"{tmp_path}: is a directory, not a key file"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(ConfigError) as e:
        load_key_file(fifo)  # must not block waiting for a writer
    assert str(e.value) == f"{fifo}: is not a regular file"


def test_load_key_file_follows_symlink_and_checks_target(tmp_path):
    target = write_key(tmp_path / "real.key", K2)
    link = tmp_path / "link.key"
    link.symlink_to(target)
    assert load_key_file(link) == RAW2
    os.chmod(target, 0o644)
    with pytest.raises(ConfigError) as e:
        load_key_file(link)
    assert "permissions 0644 are too open" in str(e.value)


def test_load_key_file_unreadable(unprivileged_dir):
    path = write_key(unprivileged_dir / "k", K1, 0o000)
    message = error_as_unprivileged_user(load_key_file, str(path))
    assert message == f"{path}: permission denied reading the key file"


# --------------------------------------------------------------------------- reprs


def test_keys_never_in_repr_or_str(tmp_path):
    write_key(tmp_path / "phone.key", K2)
    server = load(write_conf(tmp_path, SERVER_GOOD))
    client_cfg = parse(client(), str(tmp_path / "c.conf"))
    assert client_cfg.key == RAW1 and server.clients[1].key == RAW2
    texts = [repr(server), str(server), repr(client_cfg), str(client_cfg)]
    texts += [repr(p) for p in server.clients] + [str(p) for p in server.clients]
    for text in texts:
        for raw, b64 in ((RAW1, K1), (RAW2, K2)):
            assert b64 not in text
            assert repr(raw) not in text
            assert raw.hex() not in text
            assert "key=" not in text
    # the keys are still there for the daemon
    assert "allowed_ips=" in repr(server.clients[0])


def test_records_are_frozen_and_roles_are_class_level():
    cfg = parse(client())
    with pytest.raises(AttributeError):
        cfg.id = 2
    with pytest.raises(AttributeError):
        del cfg.id
    with pytest.raises(AttributeError):
        Peer("a", 1, RAW1, ()).id = 2
    assert ClientConfig.role == "client" and ServerConfig.role == "server"
    assert "role" not in ClientConfig._fields and "role" not in vars(cfg)
    # Equal and hashed by value, like the frozen dataclasses they replace.
    assert parse(client()) == cfg and hash(parse(client())) == hash(cfg)
    assert Peer("a", 1, RAW1, ()) == Peer(name="a", id=1, key=RAW1, allowed_ips=())
    assert Peer("a", 1, RAW1, ()) != Peer("a", 2, RAW1, ())
    assert pickle.loads(pickle.dumps(cfg)) == cfg


def test_mtu_limit_matches_wire_format():
    assert config.MAX_MTU == wire.MAX_BODY


# --------------------------------------------------------------------------- overlap check


def test_overlap_check_agrees_with_brute_force():
    rng = random.Random(1234)
    for _ in range(1000):
        nets = []
        for _ in range(rng.randint(2, 8)):
            if rng.random() < 0.5:
                prefix = rng.randint(20, 32)
                addr = ipaddress.IPv4Address(0x0A500000 | rng.getrandbits(10))
            else:
                prefix = rng.randint(116, 128)
                addr = ipaddress.IPv6Address((0xFD00 << 112) | rng.getrandbits(10))
            nets.append(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))
        # one network per client, so only cross-client overlaps (and exact repeats) matter
        expect_overlap = any(
            a.version == b.version and a.overlaps(b) for i, a in enumerate(nets) for b in nets[:i]
        )
        parts = ["[server]\nlisten=0.0.0.0:1\ninterface=t\naddress=192.0.2.1/24, 2001:db8::1/64\n"]
        for i, net in enumerate(nets, 1):
            key = base64.b64encode(bytes([i]) * 32).decode()
            parts.append(f"[client c{i}]\nid={i}\nkey={key}\nallowed_ips={net}\n")
        try:
            parse("".join(parts))
        except ConfigError as e:
            assert expect_overlap, str(e)
            assert " overlaps " in str(e)
        else:
            assert not expect_overlap


# --------------------------------------------------------------------------- line numbers


def test_line_numbers_follow_configparser_on_tricky_lines():
    text = (
        "[server]   ; header with a comment\n"  # 1
        "listen = 0.0.0.0:1 ;c#d ;e\n"  # 2
        "interface = t\n"  # 3
        "address = 10.0.0.1/24,\n"  # 4
        "\t10.1.0.1/24,\n"  # 5  tab-indented continuation
        "        fd00::1/64\n"  # 6
        "\n"  # 7
        "  user = a;b\n"  # 8  a blank line ends a value, so this is a key
    )
    with pytest.raises(ConfigError) as e:
        parse(text, "t.conf")
    assert str(e.value) == "t.conf:8: [server] user: 'a;b' is not a valid user name"
    cfg = parse(text.replace("a;b", "nobody ;b"), "t.conf")
    assert cfg.user == "nobody"
    assert [str(a) for a in cfg.addresses] == ["10.0.0.1/24", "10.1.0.1/24", "fd00::1/64"]


def test_line_number_of_key_in_second_section_with_same_key_name():
    text = HEAD + laptop() + phone(allowed="10.77.0.3/32, 10.77.0.300/32")
    with pytest.raises(ConfigError) as e:
        parse(text, "s.conf")
    assert str(e.value) == "s.conf:14: [client phone] allowed_ips: '10.77.0.300/32' is not an IP network"


def test_inline_key_in_readable_config_is_refused(tmp_path):
    text = f"[client]\nid = 1\nserver = 192.0.2.1:51900\nkey = {generate_key()}\n" \
           "interface = vpn0\naddress = 10.77.0.2/24\n"
    path = write_conf(tmp_path, text, mode=0o644)
    with pytest.raises(ConfigError) as e:
        load(str(path))
    msg = str(e.value)
    assert msg.startswith(f"{path}:") and "permissions 0644 are too open" in msg
    assert "\n" not in msg


def test_key_file_config_may_be_world_readable(tmp_path):
    write_key(tmp_path / "laptop.key", generate_key() + "\n")
    text = "[client]\nid = 1\nserver = 192.0.2.1:51900\nkey_file = laptop.key\n" \
           "interface = vpn0\naddress = 10.77.0.2/24\n"
    assert load(str(write_conf(tmp_path, text, mode=0o644))).id == 1


# --------------------------------------------------------------------------- fast paths
# config reads a file with its own walk of configparser's algorithm and builds the usual
# networks without ipaddress's parser (start-up with thousands of clients). Both must
# give exactly what configparser and ipaddress give, and leave every refusal to them.

_INI_PIECES = [
    "[server]", "[client a]", "[client  b ]", "[client a]", "[server] junk", "[]", "[x",
    " [client c]", "[a]b]", "key = v", "KEY=v", "key =", "= v", " = v", "key : v", "key",
    "key = v ; c", "key = v;c", "key = v #c", "key = a=b", "k.e-y_1 = x  ", "\tkey = v",
    "  key = v", "      continued", "\tcontinued", "# comment", "; comment", "   # c",
    "", "   ", "\t", "Ключ = ü", "key\x0b= v", "\x1ckey = v", "key = v\x85", "İ = x",
    "allowed_ips = 10.0.0.1/32,", "  fd00::1/128", "id = 1", "[client \u2028x]",
]


def _configparser_sections(text):
    cp = config._new_parser()
    try:
        cp.read_string(text, source="t")
    except Exception as e:  # noqa: BLE001  (any refusal: the fast walk must refuse too)
        return type(e)
    return {h: dict(cp[h]) for h in cp.sections()}


def _assert_walk_agrees(text):
    ctx = config._Context("t", text)
    expected = _configparser_sections(text)
    if isinstance(expected, dict):
        assert ctx.sections == expected, repr(text)
        assert list(ctx.sections) == list(expected), repr(text)
        for header, options in expected.items():
            assert list(ctx.sections[header]) == list(options), repr(text)
    else:
        assert ctx.sections is None, (repr(text), expected)


def test_line_walk_agrees_with_configparser_on_random_files():
    rng = random.Random(20261125)
    for _ in range(4000):
        lines = [rng.choice(_INI_PIECES) for _ in range(rng.randint(0, 9))]
        if rng.random() < 0.7:
            lines.insert(0, rng.choice(("[server]", "[client a]")))
        _assert_walk_agrees("\n".join(lines) + rng.choice(("", "\n", "\n\n")))


def test_line_walk_agrees_with_configparser_on_the_examples():
    for text in (HEAD + laptop() + phone(), HEAD, "[server]\n  a = 1\n   b\n  c = 2\n",
                 "[server]\na = 1\n\n  b\n", "[server]\na = x\n b ; y\n\n# z\n"):
        _assert_walk_agrees(text)


def test_refused_files_still_get_configparsers_diagnosis():
    # The walk only notices the refusal; the message and line come from configparser.
    with pytest.raises(ConfigError) as e:
        parse("[server]\nlisten = 0.0.0.0:1\nlisten = 0.0.0.0:2\n", "t.conf")
    assert str(e.value) == "t.conf:3: [server] listen: duplicate key (first set at line 2)"
    with pytest.raises(ConfigError) as e:
        parse("[server]\nlisten: 0.0.0.0:1\n", "t.conf")
    assert "t.conf:2: cannot parse this line" in str(e.value)


_NET_PIECES = "0123456789abcdefABCDEF:./%-x "


def test_fast_network_parse_agrees_with_ipaddress():
    rng = random.Random(6)
    items = [
        "10.0.0.1/32", "10.0.0.0/8", "10.0.0.1/8", "0.0.0.0/0", "255.255.255.255/32",
        "256.0.0.1/32", "01.2.3.4/32", "1.2.3.4/032", "1.2.3.4/33", "1.2.3.4/", "1.2.3/24",
        "fd80::1/128", "fd80::/16", "fd80::1/64", "::/0", "::1/128", "::/129", "FD80::A/128",
        "1:2:3:4:5:6:7:8/128", "1:2:3:4:5:6:7::/128", "::2:3:4:5:6:7:8/128",
        "1:2:3:4::5:6:7:8/128", "1::2::3/128", ":1::/128", "1::2:/128", "12345::/16",
        "::ffff:1.2.3.4/128", "fe80::1%eth0/128", "fd80::1/0128", "10.0.0.1/32 ",
        "\u0661.2.3.4/32", "1.2.3.4/\u0663\u0662",
    ]
    for _ in range(20000):
        n = rng.randint(1, 16)
        if rng.random() < 0.5:
            body = ":".join(rng.choice(("", "0", "1", "ff", "abcd", "fffff", "1.2.3.4"))
                            for _ in range(rng.randint(1, 10)))
        else:
            body = "".join(rng.choice(_NET_PIECES) for _ in range(n))
        items.append(body + rng.choice(("", "/", "/0", "/32", "/64", "/128", "/129")))
    for item in items:
        try:
            expected = ip_network(item, strict=True)
        except ValueError as e:
            with pytest.raises(type(e)) as got:
                config._network(item)
            assert str(got.value) == str(e), item
        else:
            net = config._network(item)
            assert type(net) is type(expected) and net == expected, item
            assert str(net) == str(expected), item
            if net.num_addresses <= 4:
                assert list(net.hosts()) == list(expected.hosts()), item


def test_peer_has_no_instance_dict():
    peer = parse(HEAD + laptop(), "s.conf").clients[0]
    assert not hasattr(peer, "__dict__")
    with pytest.raises(AttributeError):
        peer.id = 9  # type: ignore[misc]
