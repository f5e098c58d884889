"""Test seams: every environment variable through which a test reaches inside a running stage, in one place so that
none hides in the module it affects. Each is read where it acts; none is set by the project's own code."""
from __future__ import annotations

import os
import time
from pathlib import Path

# Set to a file name: every atomic write of that name pauses between writing its temp file and the rename, announced
# by a ".paused-<name>" file beside it holding the pid, so that a test can kill the process at that moment (under
# torchrun: the one rank that writes the file).
PAUSE_WRITE_ENV = "FEATURE_INTEGRATION_PAUSE_WRITE"
# Set to "1": reproduce.py starts each stage as a fresh interpreter instead of forking it (what a process that has
# already run torch ops must do, and what Windows does anyway).
SUBPROCESS_ENV = "FEATURE_INTEGRATION_SUBPROCESS"
PAUSE_SECONDS = 60


def pause_before_rename(path: Path) -> None:
    """The ``PAUSE_WRITE_ENV`` seam: called by the atomic write after the temp file is complete."""
    if os.environ.get(PAUSE_WRITE_ENV) == path.name:
        (path.parent / f".paused-{path.name}").write_text(str(os.getpid()))
        time.sleep(PAUSE_SECONDS)


def subprocess_requested() -> bool:
    return os.environ.get(SUBPROCESS_ENV) == "1"
