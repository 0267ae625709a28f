"""Tests for vpncrypt.config's entry points (load, parse): good files, a table of broken
files with their exact one-line messages, load()'s I/O errors, and inline keys in a
readable file."""

import os
from ipaddress import ip_interface, ip_network

import pytest

from configfiles import ALL_KEY_TEXTS, HEAD, K1, K2, K3, RAW1, RAW2, RAW3, SERVER_GOOD, SHORT, TOO_OPEN, client, error_as_unprivileged_user, laptop, phone, write_conf, write_key
from vpncrypt.config import ClientConfig, ConfigError, Peer, ServerConfig, load, parse
from vpncrypt.protocol.keys import generate_key


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
            str(tmp_path / "phone.key"),
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


def test_route_announcement_keys_and_defaults():
    cfg = parse(HEAD + laptop())
    assert (cfg.announce_routes, cfg.announce_hold, cfg.announce_protocol) == (False, 90, 77)
    cfg = parse(HEAD + "announce_routes = yes\nannounce_hold = 3\nannounce_protocol = 201\n"
                + laptop())
    assert (cfg.announce_routes, cfg.announce_hold, cfg.announce_protocol) == (True, 3, 201)


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


SERVER_KEYS = ("listen, listen_tcp, interface, address, server_id, mtu, user, state_dir, offload, "
               "configure_interface, announce_routes, announce_hold, announce_protocol")


PEER_KEYS = "id, key, key_file, ratchet, allowed_ips"


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
    # The same key through a key file (another file with the same key, or the same file).
    ("same-key-inline-and-key-file", HEAD + laptop() + phone(key_line="key_file = phone.key"),
     {"phone.key": (K1 + "\n", 0o600)},
     "{path}:13: [client phone] key_file: the same key as [client laptop]; every client needs its own key"),
    ("same-key-file-two-clients", HEAD + laptop(key_line="key_file = a.key") + phone(key_line="key_file = a.key"),
     {"a.key": (K1 + "\n", 0o600)},
     "{path}:13: [client phone] key_file: the same key as [client laptop]; every client needs its own key"),
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
    # ---- route announcement
    ("announce-routes-not-a-flag", HEAD + "announce_routes = maybe\n", {},
     "{path}:5: [server] announce_routes: 'maybe' is not yes or no"),
    ("announce-hold-with-unit", HEAD + "announce_hold = 90s\n", {},
     "{path}:5: [server] announce_hold: '90s' is not a whole number"),
    ("announce-hold-zero", HEAD + "announce_hold = 0\n", {},
     "{path}:5: [server] announce_hold: 0 is out of range 1-86400"),
    ("announce-hold-too-big", HEAD + "announce_hold = 86401\n", {},
     "{path}:5: [server] announce_hold: 86401 is out of range 1-86400"),
    ("announce-protocol-static", HEAD + "announce_protocol = 4\n", {},
     "{path}:5: [server] announce_protocol: 4 is out of range 5-255"),
    ("announce-protocol-too-big", HEAD + "announce_protocol = 256\n", {},
     "{path}:5: [server] announce_protocol: 256 is out of range 5-255"),
    ("announce-on-a-client", client(announce_routes="yes"), {},
     "{path}:7: [client] unknown key 'announce_routes'; valid keys: id, server, server_id, "
     "transport, key, key_file, ratchet, interface, address, routes, keepalive, mtu, user, state_dir, offload, "
     "configure_interface"),
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


# --------------------------------------------------------------------------- warnings


def test_server_id_0_is_valid_but_warned_about(tmp_path):
    """Two servers with id 0 (unset, or set to 0) accept each other's captured packets
    for a client key they share: warned about, once, on one line without key material."""
    from vpncrypt.config import warnings_for

    for text in (HEAD + laptop(), HEAD + "server_id = 0\n" + laptop()):
        path = write_conf(tmp_path, text)
        (warning,) = warnings_for(load(str(path)))
        assert warning.startswith(f"{path}: [server] server_id is 0")
        assert "replayed" in warning and "vpncrypt genid" in warning
        _assert_good_message(warning, path)
    for text in (client(), client(server_id="0")):
        path = write_conf(tmp_path, text)
        (warning,) = warnings_for(load(str(path)))
        assert warning.startswith(f"{path}: [client] server_id is 0") and "replayed" in warning
        _assert_good_message(warning, path)
    assert warnings_for(parse(HEAD + "server_id = 1\n" + laptop())) == ()
    assert warnings_for(parse(client(server_id="4294967295"))) == ()
