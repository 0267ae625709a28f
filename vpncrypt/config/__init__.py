"""Configuration: reading and validating the INI file that describes one tunnel endpoint.

This package owns the file format and everything it accepts or refuses; here are the
entry points (load, parse) and the public names, and each part is a module:
ini (INI reading with line numbers), sections (section rules and cross-checks), values
(the syntax of each value: endpoints, addresses, networks, MTU, ...), keyfiles, errors
(the one-line error contract) and records (the frozen results). What it checks:

* the layout (either one ``[server]`` section plus any number of ``[client NAME]``
  peer sections, or a single ``[client]`` section), the keys of each section, their
  defaults and their ranges;
* key files (:func:`load_key_file`): one base64 256-bit key, refused when group or
  others may access it, the way ssh refuses a private key;
* cross-checks between sections: unique client ids and keys, non-overlapping
  ``allowed_ips``, no client owning the server's own tunnel address;
* the error contract: every problem with the input becomes a :class:`ConfigError`
  whose ``str()`` is exactly one line naming the file, the line (or section/key)
  and the problem, and never contains key material;
* what is valid but risky: :func:`warnings_for` (one line each, for the tools to show).

The result is a frozen :class:`ServerConfig` or :class:`ClientConfig`. Nothing here
opens sockets or touches interfaces; the only files read are the config file itself
and key files. Only the standard library and :mod:`vpncrypt.protocol.keys` are
imported, so the daemon stays light.
"""

from __future__ import annotations

import gc
import os
import re
import stat

from .errors import ConfigError
from .ini import _Context, _parse_ini
from .keyfiles import MAX_KEY_FILE_SIZE, _strerror, load_key_file
from .records import ClientConfig, Peer, ServerConfig
from .sections import (CLIENT_KEYS, DEFAULT_ANNOUNCE_HOLD, DEFAULT_ANNOUNCE_PROTOCOL,
                       DEFAULT_KEEPALIVE, MAX_ANNOUNCE_HOLD, MAX_ANNOUNCE_PROTOCOL,
                       MAX_CLIENT_ID, MAX_KEEPALIVE, MAX_SERVER_ID, MIN_ANNOUNCE_PROTOCOL,
                       PEER_KEYS, SERVER_KEYS, _build)
from .values import DEFAULT_STATE_DIR, MAX_MTU, MIN_MTU, MIN_MTU_IPV6

__all__ = [
    "ConfigError",
    "Peer",
    "ServerConfig",
    "ClientConfig",
    "load",
    "parse",
    "load_key_file",
    "warnings_for",
    "DEFAULT_STATE_DIR",
    "DEFAULT_KEEPALIVE",
    # The limits and key names each part enforces, in one namespace for the tools and docs.
    "MAX_KEEPALIVE", "MIN_MTU", "MIN_MTU_IPV6", "MAX_MTU", "MAX_CLIENT_ID", "MAX_SERVER_ID",
    "MAX_CONFIG_SIZE", "MAX_KEY_FILE_SIZE", "SERVER_KEYS", "PEER_KEYS", "CLIENT_KEYS",
    "DEFAULT_ANNOUNCE_HOLD", "MAX_ANNOUNCE_HOLD", "DEFAULT_ANNOUNCE_PROTOCOL",
    "MIN_ANNOUNCE_PROTOCOL", "MAX_ANNOUNCE_PROTOCOL",
]

MAX_CONFIG_SIZE = 1 << 20


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


def warnings_for(config: ServerConfig | ClientConfig) -> tuple[str, ...]:
    """One-line warnings about a valid configuration (no key material in them).

    A server id of 0 is what every server gets that leaves ``server_id`` unset. The id
    is bound into the key schedule and the AD, which is all that stops packets captured
    at one server from being accepted by another that shares a client key: two servers
    with id 0 and a client key in common accept each other's captured packets. Nothing
    in one file can show whether another server shares the key, hence a warning for the
    id alone. (Refusing 0 would cut off every installation made before ids were set.)
    """
    if config.role == "client" and len(config.server_list()) > 1:
        zero = [f"{host}:{port}" for host, port, sid in config.server_list() if sid == 0]
        return (f"{config.path}: [client] server_id is 0 for {zero[0]}: give that server an "
                "id of its own (vpncrypt genid) and set the same in its config",) if zero else ()
    if config.server_id != 0:
        return ()
    if config.role == "server":
        return (f"{config.path}: [server] server_id is 0, the id of every server that leaves "
                "it unset: a client key used on two servers with the same id lets packets "
                "captured at one be replayed at the other; give each server an id of its own "
                "(vpncrypt genid) and set the same in its clients' configs, together",)
    return (f"{config.path}: [client] server_id is 0, the id of every server that leaves it "
            "unset: if this key is also used with another server whose id is 0, packets "
            "captured at one can be replayed at the other; use the server's own id once it "
            "has one",)


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
