"""Configuration: reading and validating the INI file that describes one tunnel endpoint.

This module owns the file format and everything it accepts or refuses:

* the layout (either one ``[server]`` section plus any number of ``[client NAME]``
  peer sections, or a single ``[client]`` section), the keys of each section, their
  defaults and their ranges;
* key files (:func:`load_key_file`): one base64 256-bit key, refused when group or
  others may access it, the way ssh refuses a private key;
* cross-checks between sections: unique client ids and keys, non-overlapping
  ``allowed_ips``, no client owning the server's own tunnel address;
* the error contract: every problem with the input becomes a :class:`ConfigError`
  whose ``str()`` is exactly one line naming the file, the line (or section/key)
  and the problem, and never contains key material.

The result is a frozen :class:`ServerConfig` or :class:`ClientConfig`. Nothing here
opens sockets or touches interfaces; the only files read are the config file itself
and key files. Only the standard library and :mod:`vpncrypt.protocol.keys` are
imported, so the daemon stays light.
"""

from __future__ import annotations

import gc
import ipaddress
import os
import re
import socket
import stat

from .protocol.keys import KeyFormatError, decode_key

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at run time
if TYPE_CHECKING:
    import configparser

__all__ = [
    "ConfigError",
    "Peer",
    "ServerConfig",
    "ClientConfig",
    "load",
    "parse",
    "load_key_file",
    "DEFAULT_STATE_DIR",
    "DEFAULT_KEEPALIVE",
]

DEFAULT_STATE_DIR = "/run/vpncrypt"
DEFAULT_KEEPALIVE = 25  # seconds
MAX_KEEPALIVE = 3600
MIN_MTU = 576  # smallest datagram every IPv4 host must accept
MIN_MTU_IPV6 = 1280  # RFC 8200
MAX_MTU = 65483  # = protocol.wire.MAX_BODY: the largest UDP payload minus our 24 bytes
MAX_CLIENT_ID = 0xFFFF  # 16 bits on the wire; 0 is reserved
MAX_SERVER_ID = 0xFFFFFFFF
MAX_CONFIG_SIZE = 1 << 20
MAX_KEY_FILE_SIZE = 4096

SERVER_KEYS = (
    "listen", "interface", "address", "server_id", "mtu", "user", "state_dir", "offload",
    "configure_interface",
)
PEER_KEYS = ("id", "key", "key_file", "allowed_ips")
CLIENT_KEYS = (
    "id", "server", "server_id", "key", "key_file", "interface", "address",
    "routes", "keepalive", "mtu", "user", "state_dir", "offload", "configure_interface",
)


# --------------------------------------------------------------------------- errors


def _one_line(text: str) -> str:
    """Escape line breaks and other control characters so a message stays on one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


_KEY_RUN = re.compile(r"[A-Za-z0-9+/]{43,}={0,2}")


def _redact(text: str) -> str:
    """Hide anything shaped like a base64 key (43+ characters of its alphabet)."""
    return _KEY_RUN.sub("<not shown: looks like key material>", text)


class ConfigError(Exception):
    """A problem with a configuration or key file; ``str(e)`` is exactly one line.

    ``"<path>:<line>: [section] key: <problem>"`` when the line is known, otherwise
    ``"<path>: [section] key: <problem>"``; the section and key parts are present
    when the problem belongs to one. The parts are also available as attributes.
    ``ConfigError(message)`` with a single argument is accepted too (for callers that
    already have a formatted line): ``path`` is then None and the message is kept as is.
    """

    def __init__(self, path, problem=None, *, line=None, section=None, key=None):
        if problem is None:
            self.path = self.line = self.section = self.key = None
            self.problem = str(path)
            super().__init__(_redact(_one_line(self.problem)))
            return
        self.path = os.fspath(path) if not isinstance(path, str) else path
        self.problem = problem
        self.line = line
        self.section = section
        self.key = key
        where = f"{self.path}:{line}: " if line is not None else f"{self.path}: "
        if section is not None:
            where += f"[{section}] "
        if key is not None:
            where += f"{key}: "
        super().__init__(_redact(_one_line(where + problem)))

    def __str__(self) -> str:
        return self.args[0]

    def __reduce__(self):
        return (_rebuild_error, (self.path, self.problem, self.line, self.section, self.key))


def _rebuild_error(path, problem, line, section, key):
    if path is None:
        return ConfigError(problem)
    return ConfigError(path, problem, line=line, section=section, key=key)


_KEYLIKE = re.compile(r"[A-Za-z0-9+/_-]{40,}={0,2}")


def _show(value: str) -> str:
    """repr() of a user value for a message, unless it looks like key material."""
    if _KEYLIKE.search(value):
        return "<value not shown: it looks like key material>"
    return repr(value)


# --------------------------------------------------------------------------- results


class _Record:
    """A frozen record, as ``@dataclass(frozen=True)`` would make it, without importing
    dataclasses (it pulls in inspect, ast and dis: about 1 MB resident in the daemon).

    A subclass lists its fields in order in ``_fields`` and trailing defaults in
    ``_defaults``. Records of the same class are equal (and hash alike) when their
    fields are; attributes cannot be set or deleted; ``repr()`` never shows ``key``.
    """

    __slots__ = ()
    _fields: tuple = ()
    _defaults: dict = {}

    def __init__(self, *args, **kwargs):
        cls = type(self).__name__
        if len(args) > len(self._fields):
            raise TypeError(f"{cls}() takes {len(self._fields)} arguments, got {len(args)}")
        values = dict(zip(self._fields, args))
        for name, value in kwargs.items():
            if name not in self._fields or name in values:
                raise TypeError(f"{cls}() got an unexpected or repeated argument {name!r}")
            values[name] = value
        for name in self._fields:
            if name in values:
                value = values[name]
            elif name in self._defaults:
                value = self._defaults[name]
            else:
                raise TypeError(f"{cls}() missing argument {name!r}")
            object.__setattr__(self, name, value)

    def _values(self) -> tuple:
        return tuple(getattr(self, name) for name in self._fields)

    def __setattr__(self, name, value):
        raise AttributeError(f"cannot assign to field {name!r}: {type(self).__name__} is frozen")

    def __delattr__(self, name):
        raise AttributeError(f"cannot delete field {name!r}: {type(self).__name__} is frozen")

    def __eq__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self):
        return hash(self._values())

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields
                          if name != "key")  # key material never reaches a log line
        return f"{type(self).__name__}({shown})"

    def __reduce__(self):  # copy/pickle: __setattr__ refuses the default way
        return (type(self), self._values())


class Peer(_Record):
    """A ``[client NAME]`` section of a server config: name, id, key (32 bytes),
    allowed_ips (a tuple of ipaddress.IPv4Network / IPv6Network)."""

    # slots: a server holds thousands of these
    __slots__ = _fields = ("name", "id", "key", "allowed_ips")


class ServerConfig(_Record):
    """A server config. listen_host is an IP literal without brackets ('0.0.0.0', '::');
    addresses a tuple of ipaddress.IPv4Interface / IPv6Interface; mtu None means the path
    MTU minus the real overhead, decided by the daemon; clients a tuple of Peer in file
    order; offload: segmentation/checksum offloads in the native loop (Linux);
    configure_interface False: the daemon sets only the TUN's MTU, and addresses, routes
    and the link state are someone else's (netifd's `proto vpncrypt` on OpenWrt)."""

    _fields = ("path", "listen_host", "listen_port", "interface", "addresses", "server_id",
               "mtu", "clients", "user", "state_dir", "offload", "configure_interface")
    _defaults = {"offload": True, "configure_interface": True}
    role = "server"


class ClientConfig(_Record):
    """A client config. server_host is a host name or IP literal (brackets stripped);
    addresses a tuple of ipaddress.IPv4Interface / IPv6Interface; routes a tuple of
    ipaddress.IPv4Network / IPv6Network; keepalive in seconds, 0 = off."""

    _fields = ("path", "id", "server_host", "server_port", "server_id", "key", "interface",
               "addresses", "routes", "keepalive", "mtu", "user", "state_dir", "offload",
               "configure_interface")
    _defaults = {"offload": True, "configure_interface": True}
    role = "client"


# --------------------------------------------------------------------------- key files


def load_key_file(path) -> bytes:
    """Read a key file holding one base64 256-bit key; raise ConfigError naming the file.

    Refused, like ssh refuses a private key, when group or others have any access.
    """
    path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError):
        raise ConfigError(path, "no such key file") from None
    except PermissionError:
        raise ConfigError(path, "permission denied reading the key file") from None
    except OSError as e:
        raise ConfigError(path, f"cannot open the key file: {_strerror(e)}") from None
    except ValueError:  # a NUL byte, or a character the file system encoding cannot hold
        raise ConfigError(path, "is not a usable file name (NUL byte or invalid character)") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ConfigError(path, "is a directory, not a key file")
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(path, "is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise ConfigError(
                path,
                f"permissions {mode:04o} are too open; the key file must not be "
                "accessible by group or others (chmod 600)",
            )
        chunks, size = [], 0
        while size <= MAX_KEY_FILE_SIZE:
            chunk = os.read(fd, MAX_KEY_FILE_SIZE + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise ConfigError(path, f"cannot read the key file: {_strerror(e)}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > MAX_KEY_FILE_SIZE:
        raise ConfigError(path, f"is too large to be a key file (over {MAX_KEY_FILE_SIZE} bytes)")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ConfigError(path, "key is not valid base64 (the file is not ASCII text)") from None
    try:
        return decode_key(text)
    except KeyFormatError as e:
        raise ConfigError(path, str(e)) from None


def _strerror(e: OSError) -> str:
    return e.strerror.lower() if e.strerror else type(e).__name__


# --------------------------------------------------------------------------- entry points


def load(path) -> ServerConfig | ClientConfig:
    """Read and validate the configuration file at ``path``."""
    path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_SIZE + 1)
            mode = os.fstat(f.fileno()).st_mode
    except FileNotFoundError:
        raise ConfigError(path, "no such file") from None
    except IsADirectoryError:
        raise ConfigError(path, "is a directory, not a configuration file") from None
    except PermissionError:
        raise ConfigError(path, "permission denied reading the configuration file") from None
    except OSError as e:
        raise ConfigError(path, f"cannot read the configuration file: {_strerror(e)}") from None
    except ValueError:  # a NUL byte, or a character the file system encoding cannot hold
        raise ConfigError(path, "is not a usable file name (NUL byte or invalid character)") from None
    if len(data) > MAX_CONFIG_SIZE:
        raise ConfigError(path, f"is too large for a configuration file (over {MAX_CONFIG_SIZE} bytes)")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        bad = data[e.start : e.start + 1].hex()
        raise ConfigError(path, f"not valid UTF-8 text (byte 0x{bad})", line=line) from None
    config = parse(text, path)
    # A file holding keys inline is as secret as a key file: refuse it the same way.
    # Search the text as parse() read it (any line ending, any whitespace configparser strips).
    lines = text.replace("\r\n", "\n").replace("\r", "\n")
    inline = _INLINE_KEY.search(lines)
    if mode & 0o077 and inline:
        line = lines[: inline.start()].count("\n") + 1
        raise ConfigError(
            path,
            f"permissions {stat.S_IMODE(mode):04o} are too open for a file that holds a key; "
            "it must not be accessible by group or others (chmod 600), or use key_file",
            line=line,
        )
    return config


_INLINE_KEY = re.compile(r"^[^\S\n]*key[^\S\n]*=", re.MULTILINE | re.IGNORECASE)


def parse(text: str, path="<string>") -> ServerConfig | ClientConfig:
    """Validate configuration text; ``path`` names it in errors and anchors relative key files."""
    path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(text, str):
        raise ConfigError(path, "configuration text must be a str")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip():
        raise ConfigError(path, "the file is empty (expected a [server] or [client] section)")
    # Tens of thousands of objects for a file with thousands of clients, none of them in
    # a reference cycle: the cyclic collector would only walk them (and everything
    # else alive) over and over while they are built.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        ctx = _Context(path, text)
        return _build(ctx, _parse_ini(ctx))
    finally:
        if gc_was_enabled:
            gc.enable()


# --------------------------------------------------------------------------- INI layer

_SECT_RE = re.compile(r"\[(?P<header>.+)\]")  # configparser's SECTCRE
_OPT_RE = re.compile(r"(?P<option>.*?)\s*=\s*(?P<value>.*)$")  # its OPTCRE for '=' only
_INLINE_COMMENTS = (";", "#")
_SAFE_KEY_NAME = re.compile(r"[a-z0-9_.-]{1,32}")


def _new_parser() -> configparser.ConfigParser:
    import configparser  # only for files it refuses (see _Context), and the fuzz oracle

    return configparser.ConfigParser(
        delimiters=("=",),
        comment_prefixes=("#", ";"),
        inline_comment_prefixes=_INLINE_COMMENTS,
        strict=True,
        empty_lines_in_values=False,
        interpolation=None,
        # '\n' can never be a section header, so there is no magic [DEFAULT] section.
        default_section="\n",
    )


def _comment_start(line: str) -> int | None:
    """Where configparser's comment handling cuts the line (mirrors RawConfigParser._read)."""
    if line.strip().startswith(("#", ";")):
        return 0
    comment_start = None
    prefixes = {prefix: -1 for prefix in _INLINE_COMMENTS}
    while comment_start is None and prefixes:
        following = {}
        for prefix, index in prefixes.items():
            index = line.find(prefix, index + 1)
            if index == -1:
                continue
            following[prefix] = index
            if index == 0 or line[index - 1].isspace():
                comment_start = index if comment_start is None else min(comment_start, index)
        prefixes = following
    return comment_start


_NONSPACE = re.compile(r"\S")


class _Context:
    """The file being parsed and where its sections and keys are (configparser forgets).

    The line walk is configparser's own (``RawConfigParser._read`` with the options of
    :func:`_new_parser`), so it also yields the sections and their values: ``sections``
    is ``{header: {key: value}}`` exactly as configparser would read them, or None when
    configparser would refuse the file (duplicate section or key, a line before the
    first header, a line that is not ``key = value``); :func:`_parse_ini` then runs
    configparser itself for its exact diagnosis. A 5 000-client file is read several
    times faster this way than through configparser.
    """

    def __init__(self, path: str, text: str):
        self.path = path
        self.dir = os.path.dirname(path)
        self.text = text
        self.section_lines: dict[str, int] = {}
        self.key_lines: dict[tuple[str, str], int] = {}
        self.sections: dict[str, dict[str, str]] | None = None
        self.header_junk_line: int | None = None  # "[server] junk": configparser ignores junk
        self._raw_lines: list[str] | None = None
        self._scan()

    @property
    def raw_lines(self) -> list[str]:
        """The file's lines, without line ends (only error messages need them)."""
        if self._raw_lines is None:
            self._raw_lines = self.text.split("\n")
        return self._raw_lines

    def _scan(self) -> None:
        # Same walk as configparser with empty_lines_in_values=False and '=' as delimiter.
        # `section`/`optname` drive the position bookkeeping (as before); `cursect` and
        # `values` build configparser's result for as long as configparser would accept.
        section = None
        optname = None
        indent_level = 0
        section_lines, key_lines = self.section_lines, self.key_lines
        sections: dict[str, dict[str, list[str]]] | None = {}
        cursect = None
        comment_start, sect_match, nonspace = _comment_start, _SECT_RE.match, _NONSPACE.search
        for lineno, line in enumerate(self.text.split("\n"), start=1):
            # (io.StringIO, which configparser reads, splits lines at "\n" only.)
            if "#" in line or ";" in line:
                value = line[: comment_start(line)].strip()
            else:
                value = line.strip()
            if not value:
                indent_level = 1 << 62
                continue
            # `value` is not empty, so the line has a non-space character.
            cur_indent = nonspace(line).start() if line[0].isspace() else 0
            if section is not None and optname and cur_indent > indent_level:
                if sections is not None:  # continuation of the previous value
                    cursect[optname].append(value)
                continue
            indent_level = cur_indent
            mo = sect_match(value) if value[0] == "[" else None
            if mo:
                section = mo.group("header")
                if section in section_lines:
                    sections = None  # configparser: DuplicateSectionError
                else:
                    section_lines[section] = lineno
                    if sections is not None:
                        cursect = sections[section] = {}
                if mo.end() != len(value) and self.header_junk_line is None:
                    self.header_junk_line = lineno
                optname = None
                continue
            if section is None:
                sections = None  # configparser: MissingSectionHeaderError
                continue
            eq = value.find("=")  # the first '=' ends the key, as in configparser's OPTCRE
            name = value[:eq].rstrip() if eq > 0 else ""
            if not name:
                sections = None  # configparser: ParsingError (no '=', or nothing before it)
                continue
            optname = name.lower()
            if (section, optname) in key_lines:
                sections = None  # configparser: DuplicateOptionError
                continue
            key_lines[(section, optname)] = lineno
            if sections is not None:
                cursect[optname] = [value[eq + 1:].strip()]
        if sections is not None:
            self.sections = {
                header: {k: v[0] if len(v) == 1 else "\n".join(v).rstrip()
                         for k, v in options.items()}
                for header, options in sections.items()
            }

    def error(self, problem, *, header=None, section=None, key=None, line=None):
        if line is None and header is not None:
            if key is not None:
                line = self.key_lines.get((header, key))
            if line is None:
                line = self.section_lines.get(header)
        return ConfigError(self.path, problem, line=line, section=section, key=key)


def _section_label(header: str) -> str:
    if _KEYLIKE.search(header):
        return "[<name not shown: it looks like key material>]"
    return f"[{header}]"


def _safe_key_name(name: str) -> bool:
    return bool(_SAFE_KEY_NAME.fullmatch(name))


def _parse_ini(ctx: _Context) -> dict[str, dict[str, str]]:
    """``{header: {key: value}}`` in file order, as configparser reads the file; its
    errors as one-line ConfigErrors."""
    if ctx.sections is not None:
        if ctx.header_junk_line is not None:
            raise ctx.error("unexpected text after the section header", line=ctx.header_junk_line)
        return ctx.sections
    # The walk in _Context found something configparser refuses: let it say what.
    import configparser

    cp = _new_parser()
    try:
        cp.read_string(ctx.text, source=ctx.path)
    except configparser.MissingSectionHeaderError as e:
        raise ctx.error(
            "text before the first section header (a file starts with [server] or [client])",
            line=e.lineno,
        ) from None
    except configparser.DuplicateSectionError as e:
        first = ctx.section_lines.get(e.section)
        raise ctx.error(
            f"duplicate section {_section_label(e.section)} (first at line {first})", line=e.lineno
        ) from None
    except configparser.DuplicateOptionError as e:
        first = ctx.key_lines.get((e.section, e.option))
        if _safe_key_name(e.option):
            raise ctx.error(
                f"duplicate key (first set at line {first})",
                section=e.section, key=e.option, line=e.lineno,
            ) from None
        raise ctx.error(f"[{e.section}] duplicate line (first at line {first})", line=e.lineno) from None
    except configparser.ParsingError as e:
        lineno = e.errors[0][0] if e.errors else None
        raw = ctx.raw_lines[lineno - 1] if lineno and lineno <= len(ctx.raw_lines) else ""
        hint = " (use '=' between key and value, not ':')" if ":" in raw and "=" not in raw else ""
        raise ctx.error(
            "cannot parse this line: expected 'key = value', a [section] header or a comment" + hint,
            line=lineno,
        ) from None
    except (configparser.Error, ValueError) as e:
        raise ctx.error(f"cannot parse the file ({type(e).__name__})") from None
    if ctx.header_junk_line is not None:
        raise ctx.error("unexpected text after the section header", line=ctx.header_junk_line)
    return {header: dict(cp[header]) for header in cp.sections()}


# --------------------------------------------------------------------------- sections

_CLIENT_HEADER = re.compile(r"client\s+(?P<name>.*)", re.S)
_CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}")
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\$?")
_INT = re.compile(r"[0-9]+")
_LABEL = r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_LIST_SPLIT = re.compile(r"[,\s]+")


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


def _did_you_mean(key, allowed) -> str:
    import difflib  # only on this error path

    close = difflib.get_close_matches(key, allowed, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _build(ctx: _Context, sections: dict[str, dict[str, str]]):
    server = None
    bare_client = None
    named: list[tuple[str, str]] = []  # (header, name)
    for header in sections:
        kind = header.strip()
        if kind in ("server", "client") and (server if kind == "server" else bare_client):
            first = ctx.section_lines.get(server if kind == "server" else bare_client)
            raise ctx.error(
                f"duplicate section [{kind}] (first at line {first})",
                line=ctx.section_lines.get(header),
            )
        if kind == "server":
            server = header
        elif kind == "client":
            bare_client = header
        elif (mo := _CLIENT_HEADER.fullmatch(kind)) is not None:
            named.append((header, mo.group("name").strip()))
        else:
            raise ctx.error(
                f"unknown section {_section_label(header)} (expected [server] with [client NAME] "
                "peers, or a single [client])",
                line=ctx.section_lines.get(header),
            )
    if server is not None and bare_client is not None:
        raise ctx.error(
            "a file is either a server config ([server] and [client NAME] peers) or a "
            "client config (one [client]), not both",
            line=ctx.section_lines.get(bare_client),
        )
    if server is None and bare_client is None:
        if named:
            header = named[0][0]
            raise ctx.error(
                f"[{header}] needs a [server] section ([client NAME] sections are the "
                "peers of a server; a client config has a single [client])",
                line=ctx.section_lines.get(header),
            )
        raise ctx.error("no [server] or [client] section")
    if bare_client is not None:
        if named:
            header = named[0][0]
            raise ctx.error(
                f"[{header}] is only allowed in a server config; a client config has a "
                "single [client] section",
                line=ctx.section_lines.get(header),
            )
        return _build_client(ctx, bare_client, sections[bare_client])
    return _build_server(ctx, server, sections[server], [(h, n, sections[h]) for h, n in named])


def _build_server(ctx, header, values, peers) -> ServerConfig:
    s = _Section(ctx, header, "server", values, SERVER_KEYS)
    listen_host, listen_port = _endpoint(s, "listen", listen=True)
    interface = _interface(s)
    addresses = _addresses(s)
    server_id = s.integer("server_id", 0, MAX_SERVER_ID, default=0)
    mtu = _mtu(s, addresses)
    user = _user(s)
    state_dir = _state_dir(s)

    clients: list[Peer] = []
    sections: list[_Section] = []
    names: dict[str, str] = {}  # name -> header
    ids: dict[int, str] = {}  # id -> name
    keys: dict[bytes, str] = {}  # key -> name
    own_ips = [(own.version, own.ip) for own in addresses]  # (.ip builds a new object)
    for peer_header, name, peer_values in peers:
        display = f"client {name}"
        if not _CLIENT_NAME.fullmatch(name):
            raise ctx.error(
                f"invalid client name {_show(name)}: use 1-64 letters, digits and _ . - @ + "
                "(starting with a letter or digit)",
                line=ctx.section_lines.get(peer_header),
            )
        if name in names:
            first = ctx.section_lines.get(names[name])
            raise ctx.error(
                f"duplicate client name {name!r} (first at line {first})",
                line=ctx.section_lines.get(peer_header),
            )
        names[name] = peer_header
        p = _Section(ctx, peer_header, display, peer_values, PEER_KEYS)
        client_id = p.integer("id", 1, MAX_CLIENT_ID, required=True)
        if client_id in ids:
            raise p.error(f"{client_id} is already used by [client {ids[client_id]}]", "id")
        ids[client_id] = name
        key = _key(p)
        if key in keys:
            raise p.error(
                f"the same key as [client {keys[key]}]; every client needs its own key",
                "key" if p.has("key") else "key_file",
            )
        keys[key] = name
        allowed = _networks(p, "allowed_ips", required=True)
        for net in allowed:
            for own_version, own_ip in own_ips:
                if own_version == net.version and own_ip in net:
                    raise p.error(
                        f"{net} contains the server's own address {own_ip} "
                        "([server] address)",
                        "allowed_ips",
                    )
        clients.append(Peer(name=name, id=client_id, key=key, allowed_ips=allowed))
        sections.append(p)
    _check_overlaps(clients, sections)

    return ServerConfig(
        path=ctx.path,
        listen_host=listen_host,
        listen_port=listen_port,
        interface=interface,
        addresses=addresses,
        server_id=server_id,
        mtu=mtu,
        clients=tuple(clients),
        user=user,
        state_dir=state_dir,
        offload=s.flag("offload", default=True),
        configure_interface=s.flag("configure_interface", default=True),
    )


def _check_overlaps(clients, sections) -> None:
    """No two allowed_ips networks (of any clients) may overlap.

    CIDR blocks either nest or are disjoint. Sorted by (version, start), a block
    overlaps some earlier one exactly when it starts at or before the end of the
    block just before it (as long as none overlapped so far, that block has the
    largest end), so one pass over the sorted list finds an overlap if there is one.
    """
    entries = []  # (version, start, -end, file position, client index, network)
    position = 0
    for index, peer in enumerate(clients):
        for net in peer.allowed_ips:
            # The end computed here: net.broadcast_address would cache two address
            # objects in every network (~350 bytes each, for as long as the daemon runs).
            start, version = int(net.network_address), net.version
            size = 1 << ((32 if version == 4 else 128) - net.prefixlen)
            entries.append((version, start, -(start + size - 1), position, index, net))
            position += 1
    entries.sort()
    for previous, entry in zip(entries, entries[1:]):
        if previous[0] != entry[0] or entry[1] > -previous[2]:
            continue
        first, second = (previous, entry) if previous[3] < entry[3] else (entry, previous)
        later = sections[second[4]]
        if first[4] == second[4]:
            raise later.error(f"{second[5]} overlaps {first[5]} listed before it", "allowed_ips")
        other = clients[first[4]].name
        raise later.error(f"{second[5]} overlaps {first[5]} of [client {other}]", "allowed_ips")


def _build_client(ctx, header, values) -> ClientConfig:
    s = _Section(ctx, header, "client", values, CLIENT_KEYS)
    client_id = s.integer("id", 1, MAX_CLIENT_ID, required=True)
    server_host, server_port = _endpoint(s, "server", listen=False)
    server_id = s.integer("server_id", 0, MAX_SERVER_ID, default=0)
    key = _key(s)
    interface = _interface(s)
    addresses = _addresses(s)
    routes = _networks(s, "routes", required=False)
    keepalive = s.integer("keepalive", 0, MAX_KEEPALIVE, default=DEFAULT_KEEPALIVE)
    mtu = _mtu(s, addresses)
    user = _user(s)
    state_dir = _state_dir(s)
    return ClientConfig(
        path=ctx.path,
        id=client_id,
        server_host=server_host,
        server_port=server_port,
        server_id=server_id,
        key=key,
        interface=interface,
        addresses=addresses,
        routes=routes,
        keepalive=keepalive,
        mtu=mtu,
        user=user,
        state_dir=state_dir,
        offload=s.flag("offload", default=True),
        configure_interface=s.flag("configure_interface", default=True),
    )


# --------------------------------------------------------------------------- values


def _endpoint(s: _Section, key: str, *, listen: bool) -> tuple[str, int]:
    value = s.require(key)
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


def _key(s: _Section) -> bytes:
    has_key, has_file = s.has("key"), s.has("key_file")
    if has_key and has_file:
        lines = s.ctx.key_lines
        later = max(("key", "key_file"), key=lambda k: lines.get((s.header, k), 0))
        raise s.error("key and key_file are mutually exclusive; keep only one", later)
    if not has_key and not has_file:
        raise s.error("missing key or key_file (the client's base64 256-bit key)")
    if has_key:
        value = s.get("key")
        try:
            return decode_key(value)
        except KeyFormatError as e:
            raise s.error(str(e), "key") from None
    value = s.require("key_file")
    path = value if os.path.isabs(value) else os.path.join(s.ctx.dir, value)
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
        return load_key_file(path)
    except ConfigError as e:
        raise s.error(str(e), "key_file") from None
