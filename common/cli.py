"""Entry-point wrapper shared by every numbered script: one clear line and a non-zero exit on bad input."""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from common.errors import UserError


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Run ``main(argv)``; turn a :class:`UserError` into ``error: <message>`` on stderr and exit code 2."""
    # Huge pages for PyTorch's large CPU buffers: faulting in each step's fresh 640 MB gradient was ~40% of an NFM
    # step here; PyTorch reads this at its first CPU allocation, and the scripts allocate nothing before this point.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        main(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted (resume with --resume)", file=sys.stderr)
        sys.exit(130)
