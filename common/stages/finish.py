"""The file a stage writes last, whose presence marks it finished: ``metrics.json`` (trained stages) or
``results.json`` (evaluations and analyses), each with what the stage cost and how many processes ran it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from common.runtime.distributed import world_size
from common.runtime.resources import usage
from common.store.savers import atomic_save_json
from common.store.stage_files import METRICS_FILE, RESULTS_FILE


def write_metrics(folder: Path, metrics: dict[str, Any]) -> None:
    """``metrics.json``, with ``resources`` (wall time, peak memory)."""
    atomic_save_json({**metrics, "resources": usage()}, Path(folder) / METRICS_FILE)


def write_results(folder: Path, results: dict[str, Any]) -> Path:
    """``results.json``, with ``resources`` and ``world_size`` (1 but for the KL tests under torchrun)."""
    path = Path(folder) / RESULTS_FILE
    atomic_save_json({"world_size": world_size(), **results, "resources": usage()}, path)
    return path
