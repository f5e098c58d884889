"""common/seams.py: the pause seam acts only on the file it names, and only between the temp file and the rename;
the subprocess seam only for "1". No test here sleeps: ``time.sleep`` is replaced by a recorder."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from common import seams
from common.atomic import atomic_write


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    recorded: list[float] = []
    monkeypatch.setattr(time, "sleep", recorded.append)
    return recorded


def test_without_the_variable_nothing_pauses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sleeps: list[float]):
    monkeypatch.delenv(seams.PAUSE_WRITE_ENV, raising=False)
    seams.pause_before_rename(tmp_path / "resume.pt")
    assert sleeps == [] and list(tmp_path.iterdir()) == []


def test_another_files_name_does_not_pause(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sleeps: list[float]):
    monkeypatch.setenv(seams.PAUSE_WRITE_ENV, "resume.pt")
    for name in ("best_model.safetensors", "resume.pt.tmp", "resume", "RESUME.PT"):
        seams.pause_before_rename(tmp_path / name)
    assert sleeps == [] and list(tmp_path.iterdir()) == []


def test_the_named_file_pauses_announced_by_a_file_holding_the_pid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  sleeps: list[float]):
    monkeypatch.setenv(seams.PAUSE_WRITE_ENV, "resume.pt")
    monkeypatch.setattr(seams, "PAUSE_SECONDS", 7)
    seams.pause_before_rename(tmp_path / "resume.pt")
    assert sleeps == [7]
    assert (tmp_path / ".paused-resume.pt").read_text() == str(os.getpid())


def test_an_atomic_write_pauses_after_its_temp_file_is_complete_and_before_the_rename(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    target = tmp_path / "resume.pt"
    target.write_bytes(b"old")
    during: dict[str, object] = {}

    def look(seconds: float) -> None:  # what a test killing the process at this moment would leave
        during["target"] = target.read_bytes()
        during["temps"] = [p.read_bytes() for p in tmp_path.glob(".resume.pt.*.tmp")]

    monkeypatch.setenv(seams.PAUSE_WRITE_ENV, "resume.pt")
    monkeypatch.setattr(time, "sleep", look)
    atomic_write(target, lambda tmp: Path(tmp).write_bytes(b"new"))
    assert during == {"target": b"old", "temps": [b"new"]}
    assert target.read_bytes() == b"new"


@pytest.mark.parametrize("value, requested", [(None, False), ("1", True), ("0", False), ("", False), ("yes", False)])
def test_the_subprocess_seam_is_on_only_for_1(monkeypatch: pytest.MonkeyPatch, value: str | None, requested: bool):
    if value is None:
        monkeypatch.delenv(seams.SUBPROCESS_ENV, raising=False)
    else:
        monkeypatch.setenv(seams.SUBPROCESS_ENV, value)
    assert seams.subprocess_requested() is requested
