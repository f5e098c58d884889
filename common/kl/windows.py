"""Per-window sums of a KL test's per-position columns (``per_position.npz``), for CIs over windows (METHOD §14)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def window_totals(store: Path, columns: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(the windows in order, {column: its sum over each window's positions}), float64."""
    with np.load(store) as data:
        windows, where = np.unique(data["window"], return_inverse=True)
        return windows, {name: np.bincount(where, weights=np.asarray(data[name], dtype=np.float64).ravel(),
                                           minlength=windows.size) for name in columns}
