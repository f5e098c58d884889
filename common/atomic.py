"""The one crash-safe write: a temp file in the same folder, then a rename. A kill never leaves a half-written file,
and a failed write (a full disk) leaves the previous file as it was and becomes one error line. Every file the
project writes goes through here (``common.store.savers`` for the formats, ``common.plots`` for the PNGs)."""
from __future__ import annotations

import errno
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path

from safetensors import SafetensorError

from common.errors import UserError
from common.seams import pause_before_rename

FULL_DISK_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """``write(tmp)`` fills a temp file beside ``path``, which then replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp_file(path)
    try:
        write(tmp)
        pause_before_rename(path)
        os.replace(tmp, path)
    except (OSError, RuntimeError, SafetensorError) as err:
        full = _full_disk(err)
        if full is None:
            raise
        raise UserError(f"cannot write {path}: {os.strerror(full.errno)}; the previous {path.name} is intact: free "
                        "space and re-run with --resume") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _new_temp_file(path: Path) -> str:
    """An empty temp file beside ``path``, created with mode 0666 so that the process's umask gives it the usual
    permissions (``tempfile.mkstemp`` would make it private)."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return str(tmp)
        except FileExistsError:
            continue


def _full_disk(err: BaseException | None) -> OSError | None:
    """The full-disk OSError behind ``err``, if any: torch's writer reports it as a RuntimeError raised while the
    file object's OSError is being handled."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in FULL_DISK_ERRNOS:
            return err
        reported = re.search(r"\(os error (\d+)\)", str(err))  # safetensors' Rust writer names the errno in its text
        if reported and int(reported.group(1)) in FULL_DISK_ERRNOS:
            return OSError(int(reported.group(1)), os.strerror(int(reported.group(1))))
        err = err.__cause__ or err.__context__
    return None
