"""An output directory that no stage can clobber by mistake: refused before anything is written when it holds a run
(without --resume or --overwrite), when it is, lies inside or contains one of the stage's inputs, or when another
live process is writing it; locked while this process writes it."""
from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common.errors import UserError
from common.runtime.distributed import rank

log = logging.getLogger(__name__)
LOCK_FILE = ".lock"
_HELD: set[Path] = set()  # locks this process holds, released at exit whatever happens


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _overlap(out: Path, given: str, kind: str) -> str | None:
    """How ``out`` collides with an input path, or None. A "dir" input (a stage directory, or a file inside one) must
    be neither ``out``, nor above it, nor below it; a "file" input (a text) must not sit in ``out`` or below it."""
    target, place = Path(given).resolve(), out.resolve()
    if kind == "dir":
        target = target.parent if target.suffix and not target.is_dir() else target
        if place == target:
            return "is"
        if target in place.parents:
            return "is inside"
    if place in target.parents:
        return "contains"
    return None


class OutputDir:
    """``OutputDir(path, ...)`` checks; ``with out.writing():`` locks, clears on --overwrite, and unlocks at the end."""

    def __init__(self, path: str | Path, resume: bool = False, overwrite: bool = False,
                 inputs: list[tuple[str, str, str]] = ()) -> None:
        self.path, self.resume, self.overwrite = Path(path), resume, overwrite
        out = self.path
        if out.exists() and not out.is_dir():
            raise UserError(f"output path {out} exists and is not a directory")
        for flag, given, kind in inputs:
            relation = _overlap(out, given, kind)
            if relation:
                raise UserError(f"the output directory {out} {relation} the input {flag} {given}: write the outputs "
                                "somewhere apart from the inputs")
        if rank() != 0:  # the lock and the folder's state are rank 0's to check: rank 0 may hold the lock already
            return
        holder = self.writer()
        if holder is not None:
            raise UserError(f"{out} is being written by another process (pid {holder['pid']} on {holder['host']}, "
                            f"since {holder['since']}): wait for it to finish, or delete {out / LOCK_FILE} if it is "
                            "gone")
        busy = out.is_dir() and any(entry.name != LOCK_FILE for entry in out.iterdir())
        if busy and not (resume or overwrite):
            raise UserError(f"{out} already holds a run: pass --resume to continue it or --overwrite to replace it")

    @property
    def lock(self) -> Path:
        return self.path / LOCK_FILE

    def writer(self) -> dict[str, Any] | None:
        """The live process (other than this one's own lock) that holds the lock, or None; a stale lock left by a
        killed process on this host does not count."""
        try:
            holder = json.loads(self.lock.read_text())
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None  # no lock, or one torn by a kill while it was written: nobody holds it
        if holder.get("host") != socket.gethostname():
            return holder  # on another machine: its liveness cannot be checked from here
        pid = int(holder.get("pid", -1))
        if pid == os.getpid() and self.path.resolve() not in _HELD:
            return None  # left by an earlier stage run in this same process
        return holder if pid != os.getpid() and _alive(pid) else None

    def acquire(self) -> None:
        if rank() != 0:  # under torchrun only rank 0 locks (and writes, but for the KL tests' parts) a directory
            return
        self.path.mkdir(parents=True, exist_ok=True)
        if self.lock.exists():
            if self.writer() is not None:
                raise UserError(f"{self.path} was locked by another process meanwhile: run one writer at a time")
            log.info("taking over the stale lock %s (its process is gone)", self.lock)
            self.lock.unlink()
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        try:
            fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            raise UserError(f"{self.path} was locked by another process meanwhile: run one writer at a time") from None
        with os.fdopen(fd, "w") as handle:
            json.dump(holder, handle)
        _HELD.add(self.path.resolve())
        for leftover in self.path.glob(".*.tmp"):  # temp files of a writer killed mid-write; ours now to remove
            leftover.unlink()

    def release(self) -> None:
        if self.path.resolve() in _HELD:
            _HELD.discard(self.path.resolve())
            self.lock.unlink(missing_ok=True)

    def clear(self) -> None:
        """--overwrite: everything but the lock goes."""
        for entry in self.path.iterdir():
            if entry.name == LOCK_FILE:
                continue
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()

    @contextlib.contextmanager
    def writing(self, clear: bool = False) -> Iterator[OutputDir]:
        """Hold the lock while the block writes (after clearing the folder if asked); released however the block ends
        (a kill -9 leaves a stale lock, which the next run on this host takes over)."""
        self.acquire()
        try:
            if clear:
                self.clear()
            yield self
        finally:
            self.release()


@atexit.register
def release_all() -> None:
    for path in list(_HELD):
        (path / LOCK_FILE).unlink(missing_ok=True)
    _HELD.clear()


# A forked child holds none of its parent's locks (reproduce.py forks each stage while it holds the run's lock).
os.register_at_fork(after_in_child=_HELD.clear)
