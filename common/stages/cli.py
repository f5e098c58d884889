"""Entry-point wrapper shared by every numbered script: one clear line and a non-zero exit on bad input."""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from common.errors import UserError
from common.runtime.distributed import rank
from common.runtime.resources import keep_freed_memory

# Set by reproduce.py for each stage it runs: where the stage leaves its error message instead of printing an
# ``error:`` line of its own, so that the user sees one error line, reproduce.py's, naming the stage.
ERROR_FILE_ENV = "FEATURE_INTEGRATION_ERROR_FILE"


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Run ``main(argv)``; turn a :class:`UserError` into ``error: <message>`` on stderr and exit code 2."""
    # Huge pages for PyTorch's large CPU buffers: faulting in each step's fresh 640 MB gradient was ~40% of an NFM
    # step here; PyTorch reads this at its first CPU allocation, and the scripts allocate nothing before this point.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    keep_freed_memory()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        main(argv)
    except UserError as err:
        report_to = os.environ.get(ERROR_FILE_ENV)
        if report_to:  # a stage run by reproduce.py: its one error line, naming the stage, says this
            _report_once(Path(report_to), str(err))
            print(f"{Path(sys.argv[0]).name} stopped: {err}", file=sys.stderr)
        elif rank() != 0:  # under torchrun rank 0 prints the one error line; the same error on the others is noted
            print(f"rank {rank()} stopped: {err}", file=sys.stderr)
        else:
            print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted (resume with --resume)", file=sys.stderr)
        sys.exit(130)


def _report_once(path: Path, message: str) -> None:
    """The first rank to fail leaves its message; a later one (often the same error) leaves the file as it is."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(message)
