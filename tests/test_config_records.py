"""Tests for vpncrypt.config.records: frozen, value-equal records whose reprs never
show a key."""

import pickle

import pytest

from configfiles import HEAD, K1, K2, RAW1, RAW2, SERVER_GOOD, client, laptop, write_conf, write_key
from vpncrypt.config import ClientConfig, Peer, ServerConfig, load, parse


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


def test_peer_has_no_instance_dict():
    peer = parse(HEAD + laptop(), "s.conf").clients[0]
    assert not hasattr(peer, "__dict__")
    with pytest.raises(AttributeError):
        peer.id = 9  # type: ignore[misc]
