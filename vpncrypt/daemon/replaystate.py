"""The replay state kept across daemon restarts: the newest timestamp accepted from each
sender, saved every tick and at exit, restored at start (docs/PROTOCOL.md §14).

The daemon runs as a user that other services may share (`nobody`), so nothing it writes
may lie where that user could write too: the state directory stays root's, and root opens
both files before privileges are dropped; the daemon then writes through those
descriptors. The two files (`<interface>.replay` and `<interface>.replay.1`) take turns:
each save goes to the one holding the older generation and ends with a line
`end <generation> <crc32>` (of everything before it and the generation), so a save cut
short by `kill -9` leaves the other one whole.
"""

import binascii
import os

MAX_SIZE = 16 << 20  # far more than 5 000 senders need (~25 bytes each)


class ReplayStateError(Exception):
    """A one-line reason why the state files cannot be used."""


def _crc(body_crc: int, generation: bytes) -> int:
    """The `end` line's CRC, from the running CRC of the body: the generation is checked too."""
    return binascii.crc32(b"end " + generation, body_crc)


def encode(state: dict, generation: int) -> bytes:
    body = "".join(f"{key} {newest}\n" for key, newest in sorted(state.items())).encode()
    return body + f"end {generation} {_crc(binascii.crc32(body), str(generation).encode())}\n".encode()


def decode(data: bytes):
    """(generation, {key: newest}) of a complete save, or None (empty, torn or foreign).
    One pass with a running CRC, so a file of many `end` lines costs no more than its size."""
    body_crc, pos = 0, 0
    for line in data.split(b"\n"):
        fields = line.split()
        if len(fields) == 3 and fields[0] == b"end" and fields[1].isdigit() \
                and len(fields[1]) <= 20 and len(fields[2]) <= 10 and fields[2].isdigit() \
                and _crc(body_crc, fields[1]) == int(fields[2]):
            state = {}
            for entry in data[:pos].split(b"\n")[:-1]:
                key, _, newest = entry.partition(b" ")
                if newest.isdigit() and len(newest) <= 20:   # ASCII digits, a 64-bit value
                    state[key.decode(errors="replace")] = int(newest)
            return int(fields[1]), state
        body_crc = binascii.crc32(line + b"\n", body_crc)
        pos += len(line) + 1
    return None


class ReplayStateFiles:
    """Both files, opened (created 0600) by the caller's current user: call before the
    privilege drop."""

    def __init__(self, path: str) -> None:
        self.paths = (path, path + ".1")
        self.fds: list[int] = []
        self.generation = 0
        try:
            for p in self.paths:
                self.fds.append(os.open(p, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                                        0o600))
        except OSError as e:
            self.close()
            raise ReplayStateError(f"replay state {e.filename}: {e.strerror}") from None

    def load(self) -> tuple[dict, str | None]:
        """The newest complete save ({} if none), and what was wrong if a file that is not
        empty could not be used while neither held a complete save."""
        best, problem = None, None
        for fd in self.fds:
            try:
                data = os.pread(fd, min(os.fstat(fd).st_size, MAX_SIZE), 0)
            except OSError as e:
                problem = e.strerror
                continue
            got = decode(data)
            if got is None:
                problem = problem or ("no complete save" if data.strip() else None)
            elif best is None or got[0] > best[0]:
                best = got
        if best is None:
            return {}, problem
        self.generation = best[0]
        return best[1], None

    def save(self, state: dict) -> None:
        """Write `state` over the older of the two saves (OSError if that fails)."""
        generation = self.generation + 1
        data = encode(state, generation)
        fd = self.fds[generation % 2]
        done = 0
        while done < len(data):
            done += os.pwrite(fd, data[done:], done)
        os.ftruncate(fd, len(data))
        self.generation = generation

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []
