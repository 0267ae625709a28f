"""Key files: one base64 256-bit key, or a ratcheting client's evolving state
(config/ratchetfile.py), refused when group or others may access it, the way ssh
refuses a private key."""

import os
import stat

from ..protocol.keys import KeyFormatError, decode_key
from ..protocol.ratchet import Ratchet
from . import ratchetfile
from .errors import ConfigError

MAX_KEY_FILE_SIZE = 4096


def load_key_file(path, ratchet: int | None = None):
    """Read a key file: the 32-byte key, or with `ratchet` (the period, seconds) the
    client's Ratchet, from the file's ratchet state or, before the daemon converted it,
    from the key it holds. Raise ConfigError naming the file.

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
    if ratchetfile.is_ratchet_file(data):
        return _ratchet_state(path, data, ratchet)
    key = _plain_key(path, data)
    return key if ratchet is None else Ratchet.from_psk(key, ratchet)


def _ratchet_state(path: str, data: bytes, ratchet: int | None) -> Ratchet:
    if ratchet is None:
        raise ConfigError(path, "is a ratcheting key file (its key changes every epoch): the "
                          "section needs ratchet = its period, as when it was made")
    got = ratchetfile.decode(data)
    if got is None:
        raise ConfigError(path, "ratchet state is damaged: neither copy in the file is complete")
    state = got[1]
    if state.period != ratchet:
        raise ConfigError(path, f"ratchets every {state.period} s, but ratchet = {ratchet} s: "
                          "the period cannot change for a key (make a new key to change it)")
    return state


def _plain_key(path: str, data: bytes) -> bytes:
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
