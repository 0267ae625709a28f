"""Tests for vpncrypt.config.ini: line numbers that follow configparser, and its own
line walk, which must read every file exactly as configparser does."""

import random
from ipaddress import ip_interface

import pytest

from configfiles import HEAD, laptop, phone
from vpncrypt import config
from vpncrypt.config import ConfigError, load, parse


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


# config reads a file with its own walk of configparser's algorithm (start-up with
# thousands of clients); it must give exactly what configparser gives, and leave every
# refusal to it.
_INI_PIECES = [
    "[server]", "[client a]", "[client  b ]", "[client a]", "[server] junk", "[]", "[x",
    " [client c]", "[a]b]", "key = v", "KEY=v", "key =", "= v", " = v", "key : v", "key",
    "key = v ; c", "key = v;c", "key = v #c", "key = a=b", "k.e-y_1 = x  ", "\tkey = v",
    "  key = v", "      continued", "\tcontinued", "# comment", "; comment", "   # c",
    "", "   ", "\t", "Ключ = ü", "key\x0b= v", "\x1ckey = v", "key = v\x85", "İ = x",
    "allowed_ips = 10.0.0.1/32,", "  fd00::1/128", "id = 1", "[client \u2028x]",
]


def _configparser_sections(text):
    cp = config.ini._new_parser()
    try:
        cp.read_string(text, source="t")
    except Exception as e:  # noqa: BLE001  (any refusal: the fast walk must refuse too)
        return type(e)
    return {h: dict(cp[h]) for h in cp.sections()}


def _assert_walk_agrees(text):
    ctx = config.ini._Context("t", text)
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
