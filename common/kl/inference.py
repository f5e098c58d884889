"""Inference by window for the KL and CE figures (METHOD §13.1).

Positions of one window share their text, so they are not independent measurements; windows are. Every series is
summed per window (``per_window.npz``), each ratio and reduction gets a percentile CI from a paired bootstrap over
windows (the same resampled windows for numerator and denominator), and each comparison a paired t-test on
per-window means, the primary p. The position-level tests stay beside them as named secondary figures.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from common.kl.evaluator import EPS_OWN, EPS_RANDOM, METRICS
from common.stats import ratio_of_sums, reduction_of_sums, window_bootstrap
from common.store.savers import atomic_save_npz

PER_WINDOW_FILE = "per_window.npz"
# "ci95" for every figure; "ci99" for the figures whose rule read "p < 0.01" (their interval must exclude the null).
LEVELS = {"ci95": 0.95, "ci99": 0.99}
MIN_WINDOWS = 3  # fewer windows give no interval worth the name


def per_window_sums(store: Path) -> dict[str, np.ndarray]:
    """``window`` (ascending), ``positions`` (measured in each) and, for every series and metric of the per-position
    store, its sum over each window's measured positions (an ε series averaged over its draws per position first)."""
    with np.load(store) as data:
        windows, index = np.unique(data["window"], return_inverse=True)
        sums = {"window": windows.astype(np.int64), "positions": np.bincount(index, minlength=windows.size)}
        for name in data.files:
            if name in ("window", "position") or name.endswith(".error_norm"):
                continue
            values = np.asarray(data[name], dtype=np.float64)
            per_position = values.mean(axis=1) if values.ndim == 2 else values
            sums[name] = np.bincount(index, weights=per_position, minlength=windows.size)
    return sums


def save_per_window(sums: dict[str, np.ndarray], path: Path) -> None:
    atomic_save_npz(sums.items(), path)


def window_test(a_sums: np.ndarray, b_sums: np.ndarray, positions: np.ndarray) -> dict[str, Any]:
    """Paired t-test (``ttest_rel``) of the per-window means of two series measured at the same positions."""
    result = stats.ttest_rel(a_sums / positions, b_sums / positions)
    return {"t": float(result.statistic), "p": float(result.pvalue), "windows": int(positions.size)}


def _figures(sums: dict[str, np.ndarray], name: str, reference: str, metric: str) -> dict[str, tuple]:
    """Each figure of one condition and metric: (its per-window columns, the statistic of their sums)."""
    values = sums[f"{name}.{metric}"]
    own = EPS_RANDOM if name == reference else f"{EPS_OWN}.{name}"
    figures = {f"{metric}_ratio_eps_random": ((values, sums[f"{EPS_RANDOM}.{metric}"]), ratio_of_sums),
               f"{metric}_ratio_eps_own_norm": ((values, sums[f"{own}.{metric}"]), ratio_of_sums)}
    if name != reference:
        figures[f"{metric}_reduction"] = ((values, sums[f"{reference}.{metric}"]), reduction_of_sums)
    return figures


def add_window_inference(results: dict[str, Any], sums: dict[str, np.ndarray], reference: str, seed: int) -> None:
    """Into each condition of ``results`` (``summarize``'s): ``ci95`` and ``ci99`` (figure → interval from
    ``common.stats.window_bootstrap``) and, in each test, ``by_window`` (the paired t on per-window means). Fewer
    than ``MIN_WINDOWS`` windows: no intervals."""
    positions = sums["positions"]
    enough = positions.size >= MIN_WINDOWS
    for name, entry in results["conditions"].items():
        for key in LEVELS:
            entry[key] = {}
        for metric in METRICS:
            if enough:
                for figure, (columns, statistic) in _figures(sums, name, reference, metric).items():
                    for key, level in LEVELS.items():
                        entry[key][figure] = window_bootstrap(columns, statistic, level=level, seed=seed)
            values = sums[f"{name}.{metric}"]
            tests = entry["tests"]
            tests[f"{metric}_vs_eps_random"]["by_window"] = window_test(values, sums[f"{EPS_RANDOM}.{metric}"],
                                                                         positions)
            if name != reference:
                tests[f"{metric}_vs_eps_own_norm"]["by_window"] = window_test(
                    values, sums[f"{EPS_OWN}.{name}.{metric}"], positions)
                tests[f"{metric}_reference_minus_condition"]["by_window"] = window_test(
                    sums[f"{reference}.{metric}"], values, positions)
