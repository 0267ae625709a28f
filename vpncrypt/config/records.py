"""What a valid configuration file becomes: frozen ServerConfig, ClientConfig and Peer
records (built by config.sections, read by the daemon)."""


# announce_routes (daemon/announce.py): a client's routes stay this long after its last
# authenticated packet; the default outlasts three of a client's default keepalives (25 s).
DEFAULT_ANNOUNCE_HOLD = 90  # seconds
# The routes' protocol number (rtm_protocol): unassigned in iproute2's rt_protos and not
# used by BIRD (12), FRR (11, 42, 186-198), keepalived (18) or Open/R (99).
DEFAULT_ANNOUNCE_PROTOCOL = 77


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
    """A ``[client NAME]`` section of a server config: name, id, key (32 bytes, or with
    ``ratchet`` a protocol.ratchet.Ratchet), allowed_ips (a tuple of
    ipaddress.IPv4Network / IPv6Network), key_file (its path; None for an inline key)."""

    # slots: a server holds thousands of these
    __slots__ = _fields = ("name", "id", "key", "allowed_ips", "key_file")
    _defaults = {"key_file": None}


class ServerConfig(_Record):
    """A server config. listen_host is an IP literal without brackets ('0.0.0.0', '::');
    addresses a tuple of ipaddress.IPv4Interface / IPv6Interface; mtu None means the path
    MTU minus the real overhead, decided by the daemon; clients a tuple of Peer in file
    order; offload: segmentation/checksum offloads in the native loop (Linux);
    configure_interface False: the daemon sets only the TUN's MTU, and addresses, routes
    and the link state are someone else's (netifd's `proto vpncrypt` on OpenWrt);
    announce_routes: kernel routes for active clients' allowed_ips (daemon/announce.py),
    withdrawn announce_hold seconds after a client's last authenticated packet, with
    rtm_protocol announce_protocol. listen_host/listen_port are None without a UDP
    `listen`; listen_tcp_host/listen_tcp_port None without `listen_tcp`."""

    _fields = ("path", "listen_host", "listen_port", "interface", "addresses", "server_id",
               "mtu", "clients", "user", "state_dir", "offload", "configure_interface",
               "announce_routes", "announce_hold", "announce_protocol", "listen_tcp_host",
               "listen_tcp_port")
    _defaults = {"offload": True, "configure_interface": True, "announce_routes": False,
                 "listen_tcp_host": None, "listen_tcp_port": None,
                 "announce_hold": DEFAULT_ANNOUNCE_HOLD,
                 "announce_protocol": DEFAULT_ANNOUNCE_PROTOCOL}
    role = "server"


class ClientConfig(_Record):
    """A client config. server_host is a host name or IP literal (brackets stripped);
    addresses a tuple of ipaddress.IPv4Interface / IPv6Interface; routes a tuple of
    ipaddress.IPv4Network / IPv6Network; keepalive in seconds, 0 = off; key and key_file
    as for Peer. servers: every configured server as (host, port, server_id) in file
    order (`server = A, B` with `server_id = 1, 2`); server_host, server_port and
    server_id are the first of them (the only one of a single-server config)."""

    _fields = ("path", "id", "server_host", "server_port", "server_id", "key", "interface",
               "addresses", "routes", "keepalive", "mtu", "user", "state_dir", "offload",
               "configure_interface", "key_file", "transport", "servers")
    _defaults = {"offload": True, "configure_interface": True, "key_file": None,
                 "transport": "udp", "servers": ()}
    role = "client"

    def server_list(self) -> tuple:
        """((host, port, server_id), ...): `servers`, or the one server of a record made
        without it."""
        return self.servers or ((self.server_host, self.server_port, self.server_id),)
