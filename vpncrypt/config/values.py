"""The syntax of each value: endpoints (host:port, [v6]:port), interface names,
tunnel addresses, networks (a fast path that agrees with ipaddress), MTU, user, state
directory and keys; and _Section, one section's values with typed getters that raise
ConfigError at the right line."""

from __future__ import annotations

import ipaddress
import os
import re
import socket

from ..protocol.keys import KeyFormatError, decode_key
from ..protocol.ratchet import MAX_PERIOD, MIN_PERIOD
from .errors import ConfigError, _show
from .ini import _safe_key_name
from .keyfiles import load_key_file

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .ini import _Context

DEFAULT_STATE_DIR = "/run/vpncrypt"
MIN_MTU = 576  # smallest datagram every IPv4 host must accept
MIN_MTU_IPV6 = 1280  # RFC 8200
MAX_MTU = 65483  # = protocol.wire.MAX_BODY: the largest UDP payload minus our 24 bytes

_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\$?")
_INT = re.compile(r"[0-9]+")
_LABEL = r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_LIST_SPLIT = re.compile(r"[,\s]+")


def _did_you_mean(key, allowed) -> str:
    import difflib  # only on this error path

    close = difflib.get_close_matches(key, allowed, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Section:
    """One section's values with helpers that raise ConfigError at the right line."""

    def __init__(self, ctx: _Context, header: str, display: str, values: dict, allowed):
        self.ctx = ctx
        self.header = header  # as configparser knows it
        self.display = display  # as shown in messages, without brackets
        self.values = values
        for key in values:  # file order
            if key in allowed:
                continue
            valid = ", ".join(allowed)
            if _safe_key_name(key):
                hint = _did_you_mean(key, allowed)
                raise ctx.error(
                    f"unknown key {key!r}{hint}; valid keys: {valid}",
                    section=display,
                    line=ctx.key_lines.get((header, key), ctx.section_lines.get(header)),
                )
            raise ctx.error(
                f"[{display}] unrecognised line (expected 'key = value' with one of: {valid})",
                line=ctx.key_lines.get((header, key), ctx.section_lines.get(header)),
            )

    def error(self, problem, key=None):
        return self.ctx.error(problem, header=self.header, section=self.display, key=key)

    def has(self, key) -> bool:
        return key in self.values

    def get(self, key, *, multiline=False) -> str | None:
        value = self.values.get(key)
        if value is None:
            return None
        if "\n" in value and not multiline:
            raise self.error(
                "the value continues on an indented line below; remove the indentation "
                "of the next line or join the lines",
                key,
            )
        return value

    def require(self, key) -> str:
        value = self.get(key)
        if value is None:
            raise self.error(f"missing required key {key!r}")
        if not value:
            raise self.error("value is empty", key)
        return value

    def optional(self, key) -> str | None:
        value = self.get(key)
        if value is not None and not value:
            raise self.error("value is empty (remove the line to use the default)", key)
        return value

    def items(self, key, *, required) -> list[str]:
        value = self.get(key, multiline=True)
        if value is None:
            if required:
                raise self.error(f"missing required key {key!r}")
            return []
        items = [v for v in _LIST_SPLIT.split(value.strip()) if v]
        if required and not items:
            raise self.error("value is empty (list at least one entry)", key)
        return items

    def flag(self, key, *, default: bool) -> bool:
        value = self.optional(key)
        if value is None:
            return default
        if value.lower() in ("yes", "on", "true", "1"):
            return True
        if value.lower() in ("no", "off", "false", "0"):
            return False
        raise self.error(f"{_show(value)} is not yes or no", key)

    def integer(self, key, low, high, default=None, *, required=False) -> int | None:
        value = self.require(key) if required else self.optional(key)
        if value is None:
            return default
        if not _INT.fullmatch(value):
            raise self.error(f"{_show(value)} is not a whole number", key)
        if len(value.lstrip("0")) > 20:  # int() refuses > 4300 digits; out of range anyway
            raise self.error(f"the number is out of range {low}-{high}", key)
        number = int(value)
        if not low <= number <= high:
            raise self.error(f"{number} is out of range {low}-{high}", key)
        return number


def _endpoint(s: _Section, key: str, *, listen: bool) -> tuple[str, int]:
    return _parse_endpoint(s, key, s.require(key), listen=listen)


def _parse_endpoint(s: _Section, key: str, value: str, *, listen: bool) -> tuple[str, int]:
    """One host:port (`value`, one entry of `key`'s list)."""
    example = "0.0.0.0:51900 or [::]:51900" if listen else "vpn.example.org:51900 or [fd00::1]:51900"
    if value.startswith("["):
        mo = re.fullmatch(r"\[([^\]]*)\](?::(.*))?", value)
        if mo is None:
            raise s.error(f"{_show(value)} is not host:port (e.g. {example})", key)
        host, port = mo.group(1), mo.group(2)
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise s.error(f"{_show(host)} in brackets is not an IPv6 address", key) from None
    else:
        if value.count(":") > 1:
            raise s.error(
                f"{_show(value)}: write an IPv6 address in brackets, e.g. [fd00::1]:51900", key
            )
        host, sep, port = value.rpartition(":")
        if not sep:
            host, port = value, None
        if not host:
            raise s.error(f"{_show(value)} has no host (e.g. {example})", key)
    if not port:
        raise s.error(f"{_show(value)} has no port (e.g. {example})", key)
    if not _INT.fullmatch(port):
        raise s.error(f"port {_show(port)} is not a number", key)
    if len(port.lstrip("0")) > 5:
        raise s.error("port is out of range 1-65535", key)
    port_number = int(port)
    if not 1 <= port_number <= 65535:
        raise s.error(f"port {port_number} is out of range 1-65535", key)

    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if listen:
        if ip is None:
            raise s.error(
                f"{_show(host)} is not an IP address; listen takes an IP literal such as "
                "0.0.0.0 or [::]",
                key,
            )
        return str(ip), port_number
    if ip is not None:
        if ip.is_unspecified or ip.is_multicast:
            raise s.error(f"{ip} cannot be a server address", key)
        return str(ip), port_number
    if len(host.rstrip(".")) > 253 or not _HOSTNAME.fullmatch(host):
        raise s.error(f"{_show(host)} is not a valid host name or IP address", key)
    if host.rstrip(".").rsplit(".", 1)[-1].isdigit():
        raise s.error(f"{_show(host)} is not a valid IPv4 address", key)
    return host, port_number


def _interface(s: _Section) -> str:
    name = s.require("interface")
    if any(c in name for c in "/:") or any(c.isspace() or not c.isprintable() for c in name) \
            or name in (".", ".."):
        raise s.error(
            f"{_show(name)} is not a valid interface name (no '/', ':' or whitespace)",
            "interface",
        )
    if len(name.encode("utf-8")) > 15:
        raise s.error(f"{_show(name)} is too long for an interface name (at most 15 bytes)",
                      "interface")
    return name


def _addresses(s: _Section) -> tuple:
    out = []
    seen = {}
    for item in s.items("address", required=True):
        if "/" not in item:
            try:
                ip = ipaddress.ip_address(item)
            except ValueError:
                pass
            else:
                example = "24" if ip.version == 4 else "64"
                raise s.error(f"{ip} has no prefix length (e.g. {ip}/{example})", "address")
        try:
            iface = ipaddress.ip_interface(item)
        except ValueError:
            raise s.error(
                f"{_show(item)} is not an IP address with a prefix length (e.g. 10.77.0.1/24)",
                "address",
            ) from None
        net = iface.network
        if iface.version == 4 and net.prefixlen <= 30:
            if iface.ip == net.network_address:
                raise s.error(f"{iface} is the network address of {net}, not a host address",
                              "address")
            if iface.ip == net.broadcast_address:
                raise s.error(f"{iface} is the broadcast address of {net}, not a host address",
                              "address")
        if iface.ip in seen:
            raise s.error(f"{iface.ip} is listed twice", "address")
        seen[iface.ip] = iface
        out.append(iface)
    return tuple(out)


# The usual spellings of a network, which _network() builds without ipaddress's parser
# (a few times faster; a 5 000-client file has 10 000 of them). Only the canonical
# decimal IPv4 form, and IPv6 in hex digits and colons (which inet_pton and ipaddress
# accept and refuse alike); anything else (and every error) goes through ipaddress.
_FAST_V4_NET = re.compile(
    r"((?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
    r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9]))/(3[0-2]|[12]?[0-9])"
)
_FAST_V6_NET = re.compile(r"([0-9A-Fa-f:]{2,39})/(12[0-8]|1[01][0-9]|[1-9]?[0-9])")


def _network(item: str):
    """ipaddress.ip_network(item, strict=True), faster for the usual spellings."""
    mo = _FAST_V4_NET.fullmatch(item)
    if mo is not None:
        family, cls, bits = socket.AF_INET, ipaddress.IPv4Network, 32
    else:
        mo = _FAST_V6_NET.fullmatch(item)
        if mo is None:
            return ipaddress.ip_network(item, strict=True)
        family, cls, bits = socket.AF_INET6, ipaddress.IPv6Network, 128
    try:
        address = int.from_bytes(socket.inet_pton(family, mo.group(1)), "big")
    except OSError:
        return ipaddress.ip_network(item, strict=True)
    prefixlen = int(mo.group(2))
    if address & ((1 << (bits - prefixlen)) - 1):  # host bits set: ipaddress says so
        return ipaddress.ip_network(item, strict=True)
    return cls((address, prefixlen))


def _networks(s: _Section, key: str, *, required: bool) -> tuple:
    out = []
    for item in s.items(key, required=required):
        try:
            net = _network(item)
        except ValueError:
            try:
                loose = ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise s.error(f"{_show(item)} is not an IP network", key) from None
            host = ipaddress.ip_interface(item).ip
            raise s.error(
                f"{item} has host bits set (the network is {loose}; a single host is "
                f"{host}/{loose.max_prefixlen})",
                key,
            ) from None
        if net in out:
            raise s.error(f"{net} is listed twice", key)
        out.append(net)
    return tuple(out)


def _mtu(s: _Section, addresses: tuple) -> int | None:
    mtu = s.integer("mtu", MIN_MTU, MAX_MTU)
    if mtu is not None and mtu < MIN_MTU_IPV6:
        for iface in addresses:
            if iface.version == 6:
                raise s.error(
                    f"{mtu} is below {MIN_MTU_IPV6}, the minimum for IPv6 "
                    f"(address {iface} is IPv6)",
                    "mtu",
                )
    return mtu


def _user(s: _Section) -> str | None:
    user = s.optional("user")
    if user is not None and not _USER.fullmatch(user):
        raise s.error(f"{_show(user)} is not a valid user name", "user")
    return user


def _state_dir(s: _Section) -> str:
    value = s.optional("state_dir")
    if value is None:
        return DEFAULT_STATE_DIR
    if not os.path.isabs(value) or not value.isprintable():
        raise s.error(f"{_show(value)} is not an absolute path", "state_dir")
    return value


_DURATION = re.compile(r"([0-9]{1,9})\s*([smhdw]?)")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _ratchet(s: _Section) -> int | None:
    """`ratchet = PERIOD` (600, 10m, 1h, 1d; no = off): seconds, or None."""
    value = s.optional("ratchet")
    if value is None or value.lower() in ("no", "off", "0"):
        return None
    mo = _DURATION.fullmatch(value.strip().lower())
    if mo is None:
        raise s.error(f"{_show(value)} is not a period (e.g. 1h, 30m, 1d, or no)", "ratchet")
    period = int(mo.group(1)) * _UNIT[mo.group(2)]
    if not MIN_PERIOD <= period <= MAX_PERIOD:
        raise s.error(f"{period} s is out of range: an epoch is {MIN_PERIOD // 60} minutes to "
                      f"{MAX_PERIOD // 86400} days", "ratchet")
    return period


def _key_path(s: _Section) -> str | None:
    """The key file's path, or None for an inline key."""
    value = s.optional("key_file")
    if value is None:
        return None
    return value if os.path.isabs(value) else os.path.join(s.ctx.dir, value)


def _key(s: _Section):
    """The key: 32 bytes, or with `ratchet` the client's Ratchet (protocol/ratchet.py)."""
    ratchet = _ratchet(s)
    has_key, has_file = s.has("key"), s.has("key_file")
    if has_key and has_file:
        lines = s.ctx.key_lines
        later = max(("key", "key_file"), key=lambda k: lines.get((s.header, k), 0))
        raise s.error("key and key_file are mutually exclusive; keep only one", later)
    if not has_key and not has_file:
        raise s.error("missing key or key_file (the client's base64 256-bit key)")
    if has_key:
        value = s.get("key")
        if ratchet is not None:
            # Forward secrecy needs the stored secret to change: nothing rewrites a config.
            raise s.error("ratchet needs key_file: an inline key cannot be rewritten as epochs "
                          "pass, so it would keep opening everything recorded under it", "ratchet")
        try:
            return decode_key(value)
        except KeyFormatError as e:
            raise s.error(str(e), "key") from None
    value = s.require("key_file")
    path = _key_path(s)
    if not os.path.lexists(path):
        try:
            decode_key(value)
        except KeyFormatError:
            pass
        else:
            raise s.error(
                "the value is a key, not a file name (write key = ... for an inline key)",
                "key_file",
            )
    try:
        return load_key_file(path, ratchet)
    except ConfigError as e:
        raise s.error(str(e), "key_file") from None
