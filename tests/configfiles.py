"""What the config tests share: keys, config texts and the helpers that write them to
disk with a mode, or read them as an unprivileged user."""

import base64
import os

import pytest

from vpncrypt.config import ConfigError

RAW1 = bytes(range(32))


RAW2 = bytes(range(100, 132))


RAW3 = bytes(range(200, 232))


K1 = base64.b64encode(RAW1).decode()


K2 = base64.b64encode(RAW2).decode()


K3 = base64.b64encode(RAW3).decode()


SHORT = base64.b64encode(bytes(16)).decode()


ALL_KEY_TEXTS = (K1, K2, K3, SHORT)


NOBODY = 65534


def error_as_unprivileged_user(func, *args):
    """str() of the ConfigError func(*args) raises, run without root's power to read anything."""
    if os.geteuid() != 0:
        with pytest.raises(ConfigError) as e:
            func(*args)
        return str(e.value)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop to nobody, report, never return into pytest
        status = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                func(*args)
                out = "NO ERROR"
            except ConfigError as e:
                out, status = str(e), 0
            except BaseException as e:  # noqa: BLE001 - reported to the parent
                out = f"UNEXPECTED {type(e).__name__}: {e}"
            os.write(write_end, out.encode())
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        out = f.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out
    return out


def write_key(path, text, mode=0o600):
    path.write_text(text)
    os.chmod(path, mode)
    return path


def write_conf(tmp_path, text, name="vpncrypt.conf", mode=0o600):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    os.chmod(path, mode)
    return path


SERVER_GOOD = f"""\
# vpncrypt server
[server]
listen = [::]:51900          ; dual stack
interface = vpn0
address = 10.77.0.1/24, fd77::1/64

[client laptop]
id = 1
key = {K1}
allowed_ips = 10.77.0.2/32, fd77::2/128

[client phone]
id = 2
key_file = phone.key   # relative to the config file
allowed_ips = 10.77.0.3/32,
    fd77::3/128,
    192.168.50.0/24
"""


HEAD = """\
[server]
listen = 0.0.0.0:51900
interface = vpn0
address = 10.77.0.1/24, fd77::1/64
"""  # lines 1-4


def laptop(key_line=f"key = {K1}", allowed="10.77.0.2/32, fd77::2/128", id_="1"):
    # line 5 blank, 6 header, 7 id, 8 key, 9 allowed_ips
    return f"\n[client laptop]\nid = {id_}\n{key_line}\nallowed_ips = {allowed}\n"


def phone(key_line=f"key = {K2}", allowed="10.77.0.3/32, fd77::3/128", id_="2", header="client phone"):
    # line 10 blank, 11 header, 12 id, 13 key, 14 allowed_ips
    return f"\n[{header}]\nid = {id_}\n{key_line}\nallowed_ips = {allowed}\n"


def client(**override):
    keys = {
        "id": "1",
        "server": "vpn.example.org:51900",
        "key": K1,
        "interface": "vpn0",
        "address": "10.77.0.2/24, fd77::2/64",
    }
    keys.update(override)
    lines = ["[client]"] + [f"{k} = {v}" for k, v in keys.items() if v is not None]
    return "\n".join(lines) + "\n"  # lines: 1 [client], 2 id, 3 server, 4 key, 5 interface, 6 address, 7+ extras


TOO_OPEN = (
    "permissions 0644 are too open; the key file must not be accessible by group or others (chmod 600)"
)
