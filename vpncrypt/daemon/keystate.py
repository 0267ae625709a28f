"""Ratcheting clients at run time: their key files rewritten as epochs pass, and their
epoch keys kept ready for both loops (protocol/ratchet.py, config/ratchetfile.py).

A key file is opened for writing by root before the privilege drop (like the replay
state) and rewritten in place through that descriptor: the copy holding the older
generation, then fsync, so a write cut short leaves the other copy whole. The first
save converts a plain key file: the second copy first (past the key's bytes), then the
first over the key itself, so the PSK is gone and no moment lacks a whole copy.
"""

import os
import time

from ..config import ratchetfile
from ..protocol.session import prepare_epochs
from .logs import kv, log


class RatchetFile:
    """One key file, open for rewriting (call before the privilege drop)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NOCTTY)
        data = os.pread(self.fd, 2 * ratchetfile.SLOT + 1, 0)
        got = ratchetfile.decode(data) if ratchetfile.is_ratchet_file(data) else None
        self.generation = got[0] if got else 0  # 0: still the plain key

    def save(self, ratchet) -> None:
        """Write `ratchet`'s state (OSError if that fails)."""
        if self.generation == 0:
            self._write(1, ratchet)
            self._write(2, ratchet)
            os.ftruncate(self.fd, 2 * ratchetfile.SLOT)  # anything of the old text past it
            os.fsync(self.fd)
        else:
            self._write(self.generation + 1, ratchet)

    def _write(self, generation: int, ratchet) -> None:
        data = ratchetfile.encode_slot(ratchet, generation)
        offset = (generation % 2) * ratchetfile.SLOT
        done = 0
        while done < len(data):
            done += os.pwrite(self.fd, data[done:], offset + done)
        os.fsync(self.fd)
        self.generation = generation

    def close(self) -> None:
        os.close(self.fd)


class Ratchets:
    """The daemon's ratcheting sides: steps them every tick, saves what moved, hands the
    native loop its epoch keys. `sides()` of the owner yields, per ratcheting client,
    (name, key file path or None, Sender, Receiver, engine index or None)."""

    def __init__(self, owner) -> None:
        self.owner = owner
        self.files: dict[str, RatchetFile] = {}
        self.unsaved: dict[str, object] = {}  # path -> Ratchet whose save is pending
        self.warned: set[str] = set()
        self.opened = False  # saves wait for open_files

    def open_files(self) -> None:
        """Before the privilege drop: every ratcheting client's key file, for rewriting."""
        for name, path, *_ in self.owner.ratchet_sides():
            if path is not None and path not in self.files:
                try:
                    self.files[path] = RatchetFile(path)
                except OSError as e:
                    log.warning(kv("ratchet", client=name, file=path,
                                   error=f"cannot open for rewriting: {e.strerror}"))
        self.opened = True
        self.flush()

    def step(self, now: float, trusted: bool) -> None:
        """Every tick (and when clients are set up): the epochs around `now`. The chain
        moves on (and forgets) only on a `trusted` clock: the server's own, a client's
        once synced, so a client that booted with a wrong clock erases nothing."""
        native = self.owner.native
        for name, path, sender, receiver, index in self.owner.ratchet_sides():
            moved, changed = prepare_epochs(sender, receiver, now, trusted)
            if moved and path is not None:
                self.unsaved[path] = (name, sender.epochs.ratchet)
            if changed and index is not None and native is not None:
                install(native.engine, index, sender, receiver)
        self.flush()

    def flush(self) -> None:
        if not self.opened:
            return
        for path, (name, ratchet) in list(self.unsaved.items()):
            writer = self.files.get(path)
            if writer is None:
                if path not in self.warned:
                    self.warned.add(path)
                    log.warning(kv("ratchet", client=name, file=path,
                                   action="kept in memory: the file is rewritten from the "
                                          "next restart on (added after the privilege drop)"))
                del self.unsaved[path]
                continue
            try:
                writer.save(ratchet)
            except OSError as e:
                if self.owner.limiter.allow(("ratchet", path), time.monotonic()) is not None:
                    log.warning(kv("ratchet", client=name, file=path, error=e.strerror))
                continue
            del self.unsaved[path]
            log.info(kv("ratchet", client=name, epoch=ratchet.epoch,
                        action="key file rewritten; earlier epochs' secrets erased"))

    def close(self) -> None:
        for writer in self.files.values():
            writer.close()
        self.files = {}


def install(engine, index: int, sender, receiver) -> None:
    """Give the engine's slot `index` the epoch keys its Python twin holds."""
    sealing, opening = sender.epochs.engine_keys(), receiver.epochs.engine_keys()
    if sealing is None or opening is None:
        return
    engine.set_epoch_keys(index, sealing[0], sealing[1], opening[1], sealing[2], opening[2])
