"""Provisioning: add a client to a server configuration, or remove one, safely.

``vpncrypt add-client NAME --config FILE [--endpoint HOST:PORT]`` and
``vpncrypt remove-client NAME --config FILE`` are thin wrappers around
:func:`add_client` and :func:`remove_client`.

What they promise
-----------------

* **Nothing else in the file changes.** A new ``[client NAME]`` section is appended
  after one blank line (and after a line break, if the file did not end with one);
  every existing byte (comments, order, blank lines, line endings) is kept. The one
  exception is the first client of a server without ``server_id``: a ``server_id =``
  line is inserted too (see *Server id* below). Removal deletes one section and
  nothing else (see :func:`remove_client` for the exact span), so removing what
  :func:`add_client` added gives back the previous file byte for byte (the inserted
  ``server_id`` stays: the id must not change under the server's clients).
* **Never a broken or half-written file.** The new text is validated with
  :func:`vpncrypt.config.parse` first; it is written to ``FILE.tmp`` in the same
  directory (created exclusively, with the original mode, owner and group), fsynced,
  the previous content is copied to ``FILE.bak`` (mode 0600), and ``FILE.tmp`` is
  renamed over ``FILE`` with :func:`os.replace`. If ``FILE`` changed since it was read,
  nothing is replaced. A symlinked ``FILE`` is followed: the real file is replaced.
  An existing ``FILE.tmp`` means another edit is running (or one crashed): refused.
* **The running daemon picks the change up.** With ``reload=True`` the daemon is asked
  to reload through its control socket (``control.socket_path(state_dir, interface)``).
  No daemon running is not an error: the notes say so.

Choices
-------

* **Id:** the lowest unused id in 1..65535.
* **Addresses:** for the first ``address`` of each family of the ``[server]`` section,
  the lowest host address of that network that is neither one of the server's own
  addresses nor inside any client's ``allowed_ips``. The server entry gets it as
  ``/32`` or ``/128``; the client config gets it with the server network's prefix length.
* **Key, inline or file:** inline (``key = ...``) when the server config already has
  clients and *every* one of them has an inline key (the file is then already held to
  mode 0600 by :func:`vpncrypt.config.load`); otherwise a key file ``NAME.key``,
  written with an absolute ``key_file =`` path. The key file goes in the directory of
  the key file of the last client (in file order) that has one, or else beside the
  configuration file; it is created exclusively (an existing file is never
  overwritten) with mode 0600 and the configuration file's owner and group, so a
  daemon running as that user can read it on reload.
* **Removal leaves the key file in place** (the note names it): deleting key material
  is the operator's call. Adding a client of the same name again is refused while that
  key file exists: add-client never overwrites a key file and never reuses the key in
  one (it may be a removed client's, or a client's of another server whose key files
  are in the same directory), and it does not move it aside either, so nothing happens
  to key material behind the operator's back. The error names the file.
* **Server id:** ``server_id`` is bound into the key schedule and the AD; it is what
  makes a packet captured at one server useless at another that shares a client key,
  so it must differ between servers, and 0 is what every server that omits it gets.
  The first client added to a server config that has no ``server_id`` line inserts
  ``server_id = N`` (random, 1..MAX_SERVER_ID, from the same rng as the keys) after the
  last value of ``[server]``: written in the file, it stays the same across restarts.
  A server config that has no ``server_id`` but already has clients is an
  installation whose clients all use id 0: changing it would cut every one of them
  off, so it stays 0 and the notes say why that is risky and how to move.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from dataclasses import dataclass, field

from . import config as configmod
from . import control
from .protocol.keys import generate_key

__all__ = [
    "ProvisionError",
    "Provisioned",
    "Removed",
    "add_client",
    "remove_client",
    "generate_server_id",
    "PLACEHOLDER_HOST",
]

PLACEHOLDER_HOST = "YOUR.SERVER.HOST"
CLIENT_INTERFACE = "vpn0"
CLIENT_KEY_FILE = f"/etc/vpncrypt/{CLIENT_INTERFACE}.key"  # where the printed client config looks
DEFAULT_RATCHET = "1h"  # forward secrecy for every client add-client makes with a key file


class ProvisionError(Exception):
    """Why a client could not be added or removed; ``str(e)`` is one line naming the file."""

    def __str__(self) -> str:
        return self.args[0]


@dataclass(frozen=True)
class Provisioned:
    """What :func:`add_client` did.

    ``client_config`` is the complete configuration file for the new client (it holds
    the key: install it with mode 0600); ``notes`` are one-line human messages on what
    was done and what is left to do (the CLI prints the config on stdout and the notes
    on stderr). ``addresses`` are the client's tunnel addresses as written in its
    config (with the server network's prefix length); ``allowed_ips`` are the networks
    written in the server's entry. ``key_file`` is the new key file, or None when the
    key went inline. ``reloaded`` is True when a running daemon confirmed the reload.
    """

    name: str
    id: int
    addresses: tuple  # of ipaddress.IPv4Interface / IPv6Interface
    allowed_ips: tuple  # of ipaddress.IPv4Network / IPv6Network
    key_file: str | None
    client_config: str = field(repr=False)
    notes: tuple
    reloaded: bool


@dataclass(frozen=True)
class Removed:
    """What :func:`remove_client` did (same meaning of ``notes`` and ``reloaded``).

    ``key_file`` is the key file the removed section referenced (left in place), or None.
    """

    name: str
    id: int
    key_file: str | None
    notes: tuple
    reloaded: bool


# --------------------------------------------------------------------------- entry points


def add_client(config_path: str, name: str, endpoint: str | None = None, *, reload=True,
               rng=os.urandom, transport: str | None = None) -> Provisioned:
    """Append a ``[client NAME]`` section to the server config at ``config_path``.

    Returns a :class:`Provisioned` whose ``client_config`` is the new client's complete
    configuration. ``endpoint`` is the server as the client reaches it (``host:port``,
    ``host`` alone takes the port of ``listen``); without it the client config gets the
    listen address, or a placeholder with a comment when the server listens on all
    addresses. Raises :class:`ProvisionError`; nothing is written then.
    """
    path = _fspath(config_path)
    cfg, target, data, text, st = _load(path)

    if not isinstance(name, str) or not configmod.sections._CLIENT_NAME.fullmatch(name):
        raise ProvisionError(
            f"{path}: invalid client name {name!r}: use 1-64 letters, digits and _ . - @ + "
            "(starting with a letter or digit)"
        )
    if any(peer.name == name for peer in cfg.clients):
        raise ProvisionError(f"{path}: [client {name}] already exists")

    client_id = _free_id(cfg, path)
    hosts = _free_addresses(cfg, path)
    addresses = tuple(ipaddress.ip_interface(f"{ip}/{net.prefixlen}") for ip, net in hosts)
    allowed = tuple(ipaddress.ip_network(f"{ip}/{ip.max_prefixlen}") for ip, _ in hosts)
    key = generate_key(rng)

    newline = "\r\n" if "\r\n" in text.split("\n", 1)[0] + "\n" else "\n"
    sections = _client_sections(text, path)  # name -> that section's raw values
    # Only a server nobody uses yet gets an id: with clients, 0 is what they all use.
    new_server_id = None
    server_id = cfg.server_id
    if not cfg.clients and "server_id" not in _server_section(text, path):
        new_server_id = server_id = generate_server_id(rng)
        text = _insert_server_id(text, path, server_id, newline)

    transport = _transport(cfg, transport, path)
    server_value, server_comment = _server_value(cfg, endpoint, path, transport)
    inline = bool(sections) and all("key" in values for values in sections.values())
    client_text = _client_config(name, client_id, server_value, server_comment, cfg, key,
                                 addresses, server_id, ratchet=not inline, transport=transport)
    try:
        # (Checked with the key inline: the client's key file is not on this machine.)
        configmod.parse(_client_config(name, client_id, server_value, server_comment, cfg, key,
                                       addresses, server_id), f"<client config for {name}>")
    except configmod.ConfigError as e:
        # Only the endpoint comes from outside: anything else would be our own bug.
        raise ProvisionError(f"{path}: --endpoint {endpoint!r}: {e.problem}") from None

    key_file = None
    if not inline:
        key_dir = _key_dir(sections, path, target)
        key_file = os.path.join(key_dir, f"{name}.key")
        key_line = f"key_file = {key_file}"
    else:
        key_line = f"key = {key}"
    section = [f"[client {name}]", f"id = {client_id}", key_line,
               *([] if inline else [f"ratchet = {DEFAULT_RATCHET}"]),
               "allowed_ips = " + ", ".join(str(n) for n in allowed)]
    prefix = "" if text.endswith(("\n", "\r")) or not text else newline
    new_text = text + prefix + newline + newline.join(section) + newline

    notes = []
    if key_file is not None:
        _create_key_file(key_file, key, st)
    try:
        try:
            new_cfg = configmod.parse(new_text, path)
        except configmod.ConfigError as e:
            raise ProvisionError(f"{path}: the new configuration would be invalid: {e}") from None
        if new_cfg.server_id != server_id:  # the inserted line must be the one in force
            raise ProvisionError(f"{path}: could not add server_id = {server_id} to [server]; "
                                 "nothing written (set server_id there, then try again)")
        _replace(target, path, data, new_text.encode("utf-8"), st)
    except BaseException:
        if key_file is not None:
            _unlink_quietly(key_file)
        raise

    where = ", ".join(str(n) for n in allowed)
    notes.append(f"added [client {name}] (id {client_id}, {where}) to {path}; "
                 f"the previous version is {target}.bak")
    if key_file is not None:
        notes.append(f"key written to {key_file} (mode 0600); ratchet = {DEFAULT_RATCHET}: "
                     "both ends rewrite their key file every epoch, so a key taken later "
                     "opens nothing recorded before (docs/PROTOCOL.md 3.3)")
        notes.append(f"copy {key_file} to the client as {CLIENT_KEY_FILE} (mode 0600), "
                     "where its config's key_file points")
    else:
        notes.append(f"key written inline in {path} (its other clients have inline keys); "
                     "no ratchet: that needs key files")
    if new_server_id is not None:
        notes.append(f"server_id = {new_server_id} (random) added to [server] of {path}: an id "
                     "of its own, so that this server's client keys are useless at any "
                     "other server; its clients' configs carry the same id")
    elif server_id == 0:
        notes.extend(configmod.warnings_for(cfg))
        notes.append(f"the new client gets server_id = 0 to match; to move {path} to an id "
                     "of its own, set server_id = N (vpncrypt genid) in its [server] and in "
                     "every one of its clients' configs, then restart all of them together")
    if server_comment:
        notes.append(f"edit 'server =' in the client config: {server_comment}")
    if inline:
        notes.append("the client config holds the key: install it on the client with mode 0600")
    reloaded = _reload(cfg, notes) if reload else False
    sock = control.socket_path(cfg.state_dir, cfg.interface)
    if reload and new_server_id is not None and os.path.exists(sock):
        # A reload keeps the running server id (it is restart-only in the daemon).
        notes.append(f"restart vpncryptd on {cfg.interface}: it uses the new server_id only "
                     "after a restart (it had no clients, so a restart disturbs nobody)")
    return Provisioned(name=name, id=client_id, addresses=addresses, allowed_ips=allowed,
                       key_file=key_file, client_config=client_text, notes=tuple(notes),
                       reloaded=reloaded)


def remove_client(config_path: str, name: str, *, reload=True) -> Removed:
    """Remove the ``[client NAME]`` section from the server config at ``config_path``.

    The removed span is the header line, the section's keys and any comment or blank
    lines between them, and the blank lines after its last key. Comment lines after its
    last key (typically introducing the next section) stay, and so do comments above
    its header. When the section is the last thing in the file, one blank line before
    its header goes too (the one :func:`add_client` puts there). The key file the
    section referenced is left in place and named in the notes.
    """
    path = _fspath(config_path)
    cfg, target, data, text, st = _load(path)
    peer = next((p for p in cfg.clients if p.name == name), None)
    if peer is None:
        known = ", ".join(p.name for p in cfg.clients) or "none"
        raise ProvisionError(f"{path}: no [client {name}] section (clients: {known})")

    lines = _split_lines(text)
    ctx = configmod.ini._Context(path, _normalise(text))
    first = _find_header(ctx, name)
    later = [n for n in ctx.section_lines.values() if n > first]
    stop = (min(later) - 1) if later else len(lines)  # index of the next header, 0-based
    start = first - 1
    end = start + 1  # exclusive
    for index in range(start + 1, stop):
        raw = lines[index].rstrip("\r\n")
        if raw[: configmod.ini._comment_start(raw)].strip():
            end = index + 1
    while end < stop and not lines[end].strip():
        end += 1
    if end == len(lines) and start > 0 and not lines[start - 1].strip():
        start -= 1
    new_text = "".join(lines[:start] + lines[end:])

    key_file = _client_sections(text, path)[name].get("key_file")
    if key_file is not None:
        key_file = key_file.strip()
    if key_file is not None and not os.path.isabs(key_file):
        key_file = os.path.join(os.path.dirname(path), key_file)
    try:
        configmod.parse(new_text, path)
    except configmod.ConfigError as e:
        raise ProvisionError(f"{path}: the new configuration would be invalid: {e}") from None
    _replace(target, path, data, new_text.encode("utf-8"), st)

    notes = [f"removed [client {name}] (id {peer.id}) from {path}; "
             f"the previous version is {target}.bak"]
    if key_file is not None:
        notes.append(f"the key file {key_file} was left in place; delete it if {name} "
                     "is not coming back (add-client never reuses it: move it away or delete "
                     f"it before adding {name} again)")
    reloaded = _reload(cfg, notes) if reload else False
    return Removed(name=name, id=peer.id, key_file=key_file, notes=tuple(notes),
                   reloaded=reloaded)


# --------------------------------------------------------------------------- choices


def generate_server_id(rng=os.urandom) -> int:
    """A random server id, 1..MAX_SERVER_ID: never 0, the id of every server without one."""
    for _ in range(64):
        value = int.from_bytes(rng(4), "big") & configmod.MAX_SERVER_ID
        if value:
            return value
    raise ProvisionError("the random number generator returned only zeros")


def _free_id(cfg, path) -> int:
    used = {p.id for p in cfg.clients}
    for candidate in range(1, configmod.MAX_CLIENT_ID + 1):
        if candidate not in used:
            return candidate
    raise ProvisionError(f"{path}: all client ids 1-{configmod.MAX_CLIENT_ID} are in use")


def _free_addresses(cfg, path) -> list:
    """[(ip, server network)] for the first server address of each family."""
    out = []
    seen_versions = set()
    own = {a.ip for a in cfg.addresses}
    for iface in cfg.addresses:
        if iface.version in seen_versions:
            continue
        seen_versions.add(iface.version)
        net = iface.network
        if net.num_addresses == 1:
            raise ProvisionError(f"{path}: [server] address {iface} leaves no address for clients")
        # Usable hosts: no network/broadcast address in IPv4 networks of /30 and larger,
        # no subnet-router anycast (the all-zero host) in IPv6.
        low, high = int(net.network_address), int(net.broadcast_address)
        if net.version == 4 and net.prefixlen <= 30:
            low, high = low + 1, high - 1
        elif net.version == 6 and net.prefixlen <= 126:
            low += 1
        blocked = sorted(
            [(int(ip), int(ip)) for ip in own if ip.version == net.version]
            + [(int(n.network_address), int(n.broadcast_address))
               for p in cfg.clients for n in p.allowed_ips if n.version == net.version]
        )
        candidate = low
        for first, last in blocked:  # sorted by start: one sweep finds the lowest free one
            if first > candidate:
                break
            if last >= candidate:
                candidate = last + 1
        if candidate > high:
            raise ProvisionError(f"{path}: no free address left in {net} ([server] address)")
        out.append((ipaddress.ip_address(candidate) if net.version == 4
                    else ipaddress.IPv6Address(candidate), net))
    return out


def _transport(cfg, transport, path) -> str:
    """udp or tcp for the new client: as asked, else udp where the server listens on UDP."""
    if transport is None:
        return "udp" if cfg.listen_host is not None else "tcp"
    if transport not in ("udp", "tcp"):
        raise ProvisionError(f"--transport: {transport!r} is not udp or tcp")
    if transport == "tcp" and cfg.listen_tcp_host is None:
        raise ProvisionError(f"{path}: --transport=tcp, but [server] has no listen_tcp")
    if transport == "udp" and cfg.listen_host is None:
        raise ProvisionError(f"{path}: --transport=udp, but [server] has no listen (TCP only)")
    return transport


def _server_value(cfg, endpoint, path, transport="udp") -> tuple[str, str | None]:
    """('host:port' for the client's `server =`, a comment to show, or None)."""
    listen_host, port = ((cfg.listen_tcp_host, cfg.listen_tcp_port) if transport == "tcp"
                         else (cfg.listen_host, cfg.listen_port))
    if endpoint is None:
        ip = ipaddress.ip_address(listen_host)
        if ip.is_unspecified:
            return (f"{PLACEHOLDER_HOST}:{port}",
                    "replace YOUR.SERVER.HOST with the server's public host name or address "
                    "(or use --endpoint)")
        host = f"[{ip}]" if ip.version == 6 else str(ip)
        return (f"{host}:{port}",
                "this is the server's listen address; use the address clients reach it at "
                "if that differs (or use --endpoint)")
    endpoint = endpoint.strip()
    if not endpoint or any(c.isspace() or not c.isprintable() or c in ";#" for c in endpoint):
        raise ProvisionError(f"--endpoint: {endpoint!r} is not host:port")
    try:
        ip = ipaddress.ip_address(endpoint)
    except ValueError:
        ip = None
    if ip is not None:  # an address alone: take the listen port
        return (f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"), None
    if endpoint.startswith("[") and endpoint.endswith("]"):
        return f"{endpoint}:{port}", None
    if ":" not in endpoint:
        return f"{endpoint}:{port}", None
    return endpoint, None


def _client_config(name, client_id, server_value, server_comment, cfg, key, addresses,
                   server_id, ratchet: bool = False, transport: str = "udp") -> str:
    server_line = f"server = {server_value}"
    if server_comment:
        server_line += f"  ; {server_comment}"
    keys = ([f"key_file = {CLIENT_KEY_FILE}", f"ratchet = {DEFAULT_RATCHET}"] if ratchet
            else [f"key = {key}"])
    return "\n".join([
        f"# vpncrypt client configuration for [client {name}] of {cfg.path}",
        "# (made by vpncrypt add-client). " + (
            f"Its key is the server's copy of {name}.key, in {CLIENT_KEY_FILE}."
            if ratchet else "It holds the key: keep it mode 0600."),
        "[client]",
        f"id = {client_id}",
        server_line,
        f"server_id = {server_id}",
        *(["transport = tcp"] if transport == "tcp" else []),
        *keys,
        f"interface = {CLIENT_INTERFACE}",
        "address = " + ", ".join(str(a) for a in addresses),
        f"keepalive = {configmod.DEFAULT_KEEPALIVE}",
        "",
    ])


def _key_dir(sections, path, target) -> str:
    for values in reversed(sections.values()):
        value = values.get("key_file")
        if value is not None:
            value = value.strip()
            full = value if os.path.isabs(value) else os.path.join(os.path.dirname(path), value)
            return os.path.dirname(os.path.abspath(full))
    return os.path.dirname(target)


# --------------------------------------------------------------------------- the file text


def _normalise(text: str) -> str:
    """The text as config.parse sees it (same line numbers as _split_lines)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text[1:] if text.startswith("\ufeff") else text


_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")


def _split_lines(text: str) -> list[str]:
    """Lines with their endings, split exactly where config.parse splits them."""
    return _LINE.findall(text)


def _find_header(ctx, name) -> int:
    """The 1-based line of the [client NAME] header."""
    for header, line in ctx.section_lines.items():
        mo = configmod.sections._CLIENT_HEADER.fullmatch(header.strip())
        if mo is not None and mo.group("name").strip() == name:
            return line
    raise ProvisionError(f"{ctx.path}: no [client {name}] section")  # parse found it: not reached


def _insert_server_id(text, path, server_id, newline) -> str:
    """text with ``server_id = N`` as a new line after the last value of [server].

    After the last line that holds a value (not after the header): a first key that is
    indented would otherwise become a continuation of the new line. Only blank and
    comment lines can follow it inside the section, so nothing else changes meaning."""
    lines = _split_lines(text)
    ctx = configmod.ini._Context(path, _normalise(text))
    header = next(line for h, line in ctx.section_lines.items() if h.strip() == "server")
    later = [n for n in ctx.section_lines.values() if n > header]
    stop = (min(later) - 1) if later else len(lines)  # index of the next header, 0-based
    last = header - 1
    for index in range(header, stop):
        raw = lines[index].rstrip("\r\n")
        if raw[: configmod.ini._comment_start(raw)].strip():
            last = index
    if not lines[last].endswith(("\n", "\r")):
        lines[last] += newline
    lines.insert(last + 1, f"server_id = {server_id}{newline}")
    return "".join(lines)


def _server_section(text, path) -> dict:
    """{key: raw value} of the [server] section."""
    cp = configmod.ini._new_parser()
    cp.read_string(_normalise(text), source=path)
    return next((dict(cp[h]) for h in cp.sections() if h.strip() == "server"), {})


def _client_sections(text, path) -> dict:
    """{client name: {key: raw value}} of the [client NAME] sections, in file order."""
    cp = configmod.ini._new_parser()
    cp.read_string(_normalise(text), source=path)
    out = {}
    for header in cp.sections():
        mo = configmod.sections._CLIENT_HEADER.fullmatch(header.strip())
        if mo is not None:
            out[mo.group("name").strip()] = dict(cp[header])
    return out


# --------------------------------------------------------------------------- files


def _fspath(path) -> str:
    path = os.fspath(path)
    return os.fsdecode(path) if isinstance(path, bytes) else path


def _load(path):
    """(config, real path, bytes, text, stat) of a valid server config, read once more
    after config.load so that the bytes edited are the bytes validated."""
    try:
        configmod.load(path)  # everything load checks: size, encoding, permissions, key files
        target = os.path.realpath(path)
        try:
            with open(target, "rb") as f:
                data, st = f.read(), os.fstat(f.fileno())
        except OSError as e:
            raise ProvisionError(f"{path}: cannot read: {_strerror(e)}") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ProvisionError(f"{path}: changed while it was being read; try again") from None
        cfg = configmod.parse(text, path)
    except configmod.ConfigError as e:
        raise ProvisionError(str(e)) from None
    if cfg.role != "server":
        raise ProvisionError(
            f"{path}: is a client configuration; clients are added to and removed from a "
            "server configuration ([server] with [client NAME] sections)"
        )
    return cfg, target, data, text, st


def _strerror(e: OSError) -> str:
    return e.strerror.lower() if e.strerror else type(e).__name__


def _chown_like(fd, st) -> None:
    """Give fd the owner and group of st, when they differ from the process's."""
    if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
        os.fchown(fd, st.st_uid, st.st_gid)


def _create_key_file(key_file, key, st) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(key_file, flags, 0o600)
    except FileExistsError:
        raise ProvisionError(
            f"{key_file}: already exists (a removed client's key, or a client's of another "
            "server?); add-client never reuses or overwrites a key file: move it away or "
            "delete it, or choose another client name"
        ) from None
    except OSError as e:
        raise ProvisionError(f"{key_file}: cannot create the key file: {_strerror(e)}") from None
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        _chown_like(fd, st)
        os.write(fd, (key + "\n").encode("ascii"))
        os.fsync(fd)
    except OSError as e:
        os.close(fd)
        _unlink_quietly(key_file)
        raise ProvisionError(f"{key_file}: cannot write the key file: {_strerror(e)}") from None
    os.close(fd)
    _fsync_dir(os.path.dirname(key_file))


def _write_new(file, data: bytes, mode: int, st=None, *, exclusive: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    flags |= os.O_EXCL if exclusive else os.O_TRUNC
    fd = os.open(file, flags, 0o600)
    try:
        if st is not None:
            _chown_like(fd, st)
        os.fchmod(fd, mode)  # after fchown, which may clear set-id bits
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace(target, path, old: bytes, new: bytes, st) -> None:
    """Atomically replace target (whose content was `old`) by `new`; keep target.bak."""
    tmp, bak = target + ".tmp", target + ".bak"
    try:
        _write_new(tmp, new, stat.S_IMODE(st.st_mode), st, exclusive=True)
    except FileExistsError:
        raise ProvisionError(
            f"{tmp}: already exists: another add-client/remove-client is running, or one was "
            "interrupted (then remove that file)"
        ) from None
    except OSError as e:
        _unlink_quietly(tmp)
        raise ProvisionError(f"{tmp}: cannot write: {_strerror(e)}") from None
    try:
        try:
            _write_new(bak, old, 0o600, exclusive=False)
        except OSError as e:
            raise ProvisionError(f"{bak}: cannot write the backup: {_strerror(e)}") from None
        try:
            with open(target, "rb") as f:
                current = f.read()
        except OSError as e:
            raise ProvisionError(f"{path}: cannot read: {_strerror(e)}") from None
        if current != old:
            raise ProvisionError(f"{path}: changed while it was being edited; nothing written "
                                 "(run the command again)")
        try:
            os.replace(tmp, target)
        except OSError as e:
            raise ProvisionError(f"{path}: cannot replace: {_strerror(e)}") from None
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _fsync_dir(os.path.dirname(target))


def _fsync_dir(directory) -> None:
    try:
        fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlink_quietly(path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# --------------------------------------------------------------------------- the daemon


def _reload(cfg, notes: list) -> bool:
    """Ask a running daemon to reload; append a note either way. True when it did."""
    sock = control.socket_path(cfg.state_dir, cfg.interface)
    if not os.path.exists(sock):
        notes.append(f"no vpncryptd is running for {cfg.interface} (no {sock}); the change "
                     "takes effect when it starts")
        return False
    try:
        reply = control.request(sock, {"command": "reload"})
    except control.ControlError as e:
        notes.append(f"the running vpncryptd was not reloaded ({e}); if one runs, reload it "
                     "with SIGHUP")
        return False
    if isinstance(reply, dict) and reply.get("ok") is True:
        notes.append(f"vpncryptd on {cfg.interface} reloaded its configuration")
        return True
    error = reply.get("error") if isinstance(reply, dict) else None
    notes.append(f"vpncryptd on {cfg.interface} did not reload: {error or 'unexpected answer'}; "
                 "it keeps its previous configuration")
    return False
