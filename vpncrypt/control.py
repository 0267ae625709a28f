"""The control socket: a Unix stream socket per interface, one JSON request and reply per line.

Path: `{state_dir}/{interface}.sock` (default state_dir /run/vpncrypt), mode 0600, owned
by the user that started the daemon (root); it stays after a stop, unanswered, until the
next start replaces it. A client connects, sends one JSON object and a newline, reads one
JSON object and a newline, and the daemon closes the connection. Requests:

    {"command": "show"}    -> the status document (docs/CONTROL.md describes its fields)
    {"command": "reload"}  -> {"ok": true} once the configuration was re-read, or
                              {"ok": false, "error": "<one line>"}

Any other request gets {"ok": false, "error": "..."}. This module holds the client side
and the names shared by both sides; the daemon side lives in daemon/runtime.py.
"""

import os
import socket

DEFAULT_STATE_DIR = "/run/vpncrypt"
MAX_REQUEST = 65536
SCHEMA_VERSION = 1


class ControlError(Exception):
    """A one-line reason why the daemon could not be asked."""


def socket_path(state_dir: str, interface: str) -> str:
    return os.path.join(state_dir, f"{interface}.sock")


def sockets(state_dir: str = DEFAULT_STATE_DIR) -> list[str]:
    try:
        names = os.listdir(state_dir)
    except OSError:
        return []
    return sorted(os.path.join(state_dir, n) for n in names if n.endswith(".sock"))


def request(path: str, message: dict, timeout: float = 5.0) -> dict:
    """Send one request to the daemon listening at `path` and return its reply."""
    import json  # the daemon imports this module at start-up; json only when used
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        sock.sendall(json.dumps(message).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            data += chunk
    except FileNotFoundError:
        raise ControlError(f"{path}: no such control socket (is vpncryptd running?)") from None
    except ConnectionRefusedError:
        raise ControlError(f"{path}: nobody listening (vpncryptd is not running; the socket "
                           "is left from its last run)") from None
    except PermissionError:
        raise ControlError(f"{path}: permission denied (run as root)") from None
    except socket.timeout:
        raise ControlError(f"{path}: the daemon did not answer within {timeout:.0f} s") from None
    except OSError as e:
        raise ControlError(f"{path}: {e.strerror or e}") from None
    finally:
        sock.close()
    try:
        return json.loads(data)
    except ValueError:
        raise ControlError(f"{path}: the daemon's answer is not JSON") from None
