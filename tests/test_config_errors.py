"""Tests for vpncrypt.config.errors: the one-line ConfigError, its parts, pickling, and
the promise that key material never shows up in a message."""

import pickle

import pytest

from configfiles import HEAD, K1, client, laptop
from vpncrypt.config import ConfigError, parse


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
