"""common/atomic.py: a temp file beside the target, then one rename; a failing writer leaves the previous file as it
was and no temp file behind; a full disk, however the writer reports it, is one error line; the file's mode follows
the umask, which the write leaves alone."""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
from safetensors import SafetensorError

from common.atomic import atomic_write
from common.errors import UserError


def write_bytes(data: bytes):
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            handle.write(data)

    return write


def failing(error: BaseException, partial: bytes = b"half a fi"):
    """A writer that writes part of its file, then fails."""

    def write(tmp: str) -> None:
        Path(tmp).write_bytes(partial)
        raise error

    return write


@pytest.fixture
def previous(tmp_path: Path) -> Path:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"the previous file")
    return path


def test_the_writer_fills_a_temp_file_beside_the_target_and_a_rename_replaces_it(previous: Path):
    seen = {}

    def write(tmp: str) -> None:
        seen["tmp"] = Path(tmp)
        seen["exists_empty"] = Path(tmp).is_file() and Path(tmp).stat().st_size == 0
        seen["target_during_write"] = previous.read_bytes()
        Path(tmp).write_bytes(b"new contents")

    atomic_write(previous, write)
    tmp = seen["tmp"]
    assert tmp.parent == previous.parent and tmp != previous  # same folder, so the rename is atomic
    assert tmp.name.startswith(f".{previous.name}.") and tmp.name.endswith(".tmp")
    assert seen["exists_empty"]
    assert seen["target_during_write"] == b"the previous file"  # untouched until the rename
    assert previous.read_bytes() == b"new contents"
    assert sorted(p.name for p in previous.parent.iterdir()) == [previous.name]  # no temp file left


def test_missing_parent_folders_are_created(tmp_path: Path):
    path = tmp_path / "a" / "b" / "c.txt"
    atomic_write(path, write_bytes(b"x"))
    assert path.read_bytes() == b"x"


@pytest.mark.parametrize("error", [ValueError("a bug in the writer"), OSError(errno.EACCES, "Permission denied"),
                                   KeyboardInterrupt()], ids=["bug", "not-full-disk", "interrupt"])
def test_a_failing_writer_leaves_the_previous_file_and_no_temp_file(previous: Path, error: BaseException):
    with pytest.raises(type(error)):  # anything but a full disk is not the user's to fix: it is raised as it was
        atomic_write(previous, failing(error))
    assert previous.read_bytes() == b"the previous file"
    assert sorted(p.name for p in previous.parent.iterdir()) == [previous.name]


def _torch_style() -> RuntimeError:
    """torch's writer: a RuntimeError raised while the file object's OSError is handled."""
    err = RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 4096 vs 2048")
    err.__context__ = OSError(errno.ENOSPC, "No space left on device")
    return err


FULL_DISKS = {
    "ENOSPC": (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
    "EFBIG": (OSError(errno.EFBIG, "File too large"), "File too large"),
    "EDQUOT": (OSError(errno.EDQUOT, "Disk quota exceeded"), "Disk quota exceeded"),
    "torch": (_torch_style(), "No space left on device"),
    "safetensors": (SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                                    "\"No space left on device\" }) (os error 28)"), "No space left on device"),
    "safetensors-efbig": (SafetensorError("I/O error: File too large (os error 27)"), "File too large"),
}


@pytest.mark.parametrize("name", FULL_DISKS)
def test_a_full_disk_is_one_error_line_and_the_previous_file_is_intact(previous: Path, name: str):
    error, reason = FULL_DISKS[name]
    with pytest.raises(UserError) as caught:
        atomic_write(previous, failing(error))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"cannot write {previous}: {reason}; the previous weights.bin is intact")
    assert "--resume" in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # no traceback chain to print
    assert previous.read_bytes() == b"the previous file"
    assert sorted(p.name for p in previous.parent.iterdir()) == [previous.name]


def test_an_os_error_number_in_another_errors_text_is_not_a_full_disk(previous: Path):
    with pytest.raises(SafetensorError):
        atomic_write(previous, failing(SafetensorError("header too large (os error 2)")))
    assert previous.read_bytes() == b"the previous file"


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_the_files_mode_follows_the_umask_which_is_left_alone(tmp_path: Path, umask: int, mode: int):
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "out.json", write_bytes(b"{}"))
        after = os.umask(umask)
    finally:
        os.umask(old)
    assert after == umask
    assert stat.S_IMODE((tmp_path / "out.json").stat().st_mode) == mode
