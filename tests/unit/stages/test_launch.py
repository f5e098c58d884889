"""common/stages/launch.py: a stage is forked unless the subprocess seam (or a platform without fork) says
otherwise, and either way ``run_script`` runs a script as ``__main__`` with its arguments and extra environment and
returns its exit code. The promise is about a process, so here a tiny throwaway script really runs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from common.seams import SUBPROCESS_ENV
from common.stages import launch

SCRIPT = """\
import os
import sys

if __name__ != "__main__":
    raise SystemExit(40)
what = sys.argv[1]
with open(sys.argv[2], "w") as out:
    out.write(f"{os.getpid()} {os.environ.get('STAGE_EXTRA')} {' '.join(sys.argv[3:])}")
if what == "add":
    sys.exit(int(sys.argv[3]) + int(os.environ["STAGE_EXTRA"]))
if what == "raise":
    raise ValueError("a bug in the stage")
if what == "message":
    sys.exit("error: one line")
if what == "none":
    sys.exit(None)
"""


@pytest.fixture(params=["fork", "subprocess"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "fork":
        monkeypatch.delenv(SUBPROCESS_ENV, raising=False)
    else:
        monkeypatch.setenv(SUBPROCESS_ENV, "1")
    return request.param


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "stage.py"
    path.write_text(SCRIPT)
    return path


def test_forking_honours_the_seam_and_the_platform(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(SUBPROCESS_ENV, raising=False)
    assert launch.forking() is hasattr(os, "fork")
    monkeypatch.setenv(SUBPROCESS_ENV, "1")
    assert launch.forking() is False
    monkeypatch.delenv(SUBPROCESS_ENV)
    monkeypatch.delattr(os, "fork")
    assert launch.forking() is False


def test_run_script_returns_the_scripts_exit_code_with_its_arguments_and_environment(
        mode: str, script: Path, tmp_path: Path):
    seen = tmp_path / "seen.txt"
    assert launch.run_script(script, ["add", str(seen), "3"], {"STAGE_EXTRA": "4"}) == 7
    pid, extra, rest = seen.read_text().split(" ", 2)
    assert int(pid) != os.getpid() and (extra, rest) == ("4", "3")  # its own process, given what we passed
    assert "STAGE_EXTRA" not in os.environ  # added for the child only


@pytest.mark.parametrize("what, code", [("end", 0), ("none", 0), ("message", 1), ("raise", 1)])
def test_each_way_a_script_ends_gives_the_exit_code_a_fresh_interpreter_would(
        mode: str, script: Path, tmp_path: Path, capfd: pytest.CaptureFixture, what: str, code: int):
    assert launch.run_script(script, [what, str(tmp_path / "seen.txt")], {}) == code
    err = capfd.readouterr().err
    if what == "raise":
        assert "Traceback" in err and "ValueError: a bug in the stage" in err


def test_a_string_exit_message_reaches_stderr(mode: str, script: Path, tmp_path: Path, capfd: pytest.CaptureFixture):
    assert launch.run_script(script, ["message", str(tmp_path / "seen.txt")], {}) == 1
    assert "error: one line" in capfd.readouterr().err


def test_preload_imports_the_heavy_libraries_only_when_stages_are_forked(monkeypatch: pytest.MonkeyPatch):
    imported: list[str] = []

    def record(name: str) -> None:
        imported.append(name)
        if name == "statsmodels.formula.api":
            raise ImportError("an optional extra")

    monkeypatch.setattr(launch.importlib, "import_module", record)
    monkeypatch.setenv(SUBPROCESS_ENV, "1")
    launch.preload()
    assert imported == []
    monkeypatch.delenv(SUBPROCESS_ENV)
    launch.preload()  # a missing optional library is the stage's to report, not the launcher's
    assert imported == (list(launch.PRELOAD) if hasattr(os, "fork") else [])
    assert {"torch", "transformers"} <= set(launch.PRELOAD)
