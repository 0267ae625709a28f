"""A client with several servers (issue 18): `server = A, B` with `server_id = 1, 2` in
the same order; a single server reads as before; the ids must differ; every mistake is
one line naming the file, the line and the key."""

import pytest

from configfiles import K1
from vpncrypt.config import ConfigError, parse, warnings_for

PATH = "/etc/vpncrypt/laptop.conf"


def client_text(server: str, server_id: str | None) -> str:
    text = f"[client]\nid = 1\nserver = {server}\n"
    if server_id is not None:
        text += f"server_id = {server_id}\n"
    return text + f"key = {K1}\ninterface = vpn0\naddress = 10.77.0.2/24\n"


def test_several_servers_in_order_the_first_in_the_single_server_fields():
    cfg = parse(client_text("vpn-a.example.org:51900, [fd00::2]:51901 , 192.0.2.3:7",
                            "11, 22,33"), PATH)
    assert cfg.servers == (("vpn-a.example.org", 51900, 11), ("fd00::2", 51901, 22),
                           ("192.0.2.3", 7, 33))
    assert (cfg.server_host, cfg.server_port, cfg.server_id) == ("vpn-a.example.org", 51900, 11)
    assert cfg.server_list() == cfg.servers


def test_a_single_server_reads_as_before():
    cfg = parse(client_text("vpn.example.org:51900", "7"), PATH)
    assert cfg.servers == (("vpn.example.org", 51900, 7),)
    cfg = parse(client_text("vpn.example.org:51900", None), PATH)
    assert cfg.servers == (("vpn.example.org", 51900, 0),)  # the id still defaults to 0


@pytest.mark.parametrize("server, ids, message", [
    ("a.example:1, b.example:2", "5, 5",
     "{path}:4: [client] server_id: 5 is listed twice: every server needs its own id (it is "
     "bound into every key, which keeps packets captured at one server from being accepted "
     "by another)"),
    ("a.example:1, b.example:2, c.example:3", "5, 6",
     "{path}:4: [client] server_id: 2 ids for 3 servers: list one per server, in the order "
     "of `server`"),
    ("a.example:1", "5, 6",
     "{path}:4: [client] server_id: 2 ids for 1 server: list one per server, in the order "
     "of `server`"),
    ("a.example:1, b.example:2", None,
     "{path}:3: [client] server: 2 servers need a server_id each (server_id = ID, ID, ... "
     "in the same order, all different)"),
    ("a.example:1, a.example:1", "5, 6", "{path}:3: [client] server: a.example:1 is listed twice"),
    ("a.example:1,, b.example:2", "5, 6",
     "{path}:3: [client] server: 'a.example:1,, b.example:2' has an empty entry (servers "
     "are separated by commas)"),
    ("a.example:1, b.example", "5, 6",
     "{path}:3: [client] server: 'b.example' has no port (e.g. vpn.example.org:51900 or "
     "[fd00::1]:51900)"),
    ("a.example:1, b.example:2", "5, -6",
     "{path}:4: [client] server_id: '-6' is not a server id (0-4294967295)"),
    ("a.example:1, b.example:2", "5, 4294967296",
     "{path}:4: [client] server_id: '4294967296' is not a server id (0-4294967295)"),
])
def test_bad_server_lists_are_one_line_errors(server, ids, message):
    with pytest.raises(ConfigError) as e:
        parse(client_text(server, ids), PATH)
    assert str(e.value) == message.format(path=PATH)
    assert "\n" not in str(e.value)


def test_a_server_with_id_0_among_several_is_warned_about():
    cfg = parse(client_text("a.example:1, b.example:2", "5, 0"), PATH)
    (warning,) = warnings_for(cfg)
    assert "server_id is 0 for b.example:2" in warning
    assert warnings_for(parse(client_text("a.example:1, b.example:2", "5, 6"), PATH)) == ()
