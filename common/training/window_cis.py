"""Confidence intervals of the held-out figures of the trained stages and of the controls (METHOD §13, §14): each
figure is a ratio of sums over held-out rows, the rows come in windows of consecutive tokens, so the unit resampled is
a window (a paired percentile bootstrap over windows, ``common.stats.window_bootstrap``): one window's rows rise and
fall together. Every function takes per-window sums (one entry per window, in order); two models' sums on the same
windows are resampled together."""
from __future__ import annotations

from typing import Any

import numpy as np

from common.config.concepts import LMConfig
from common.stats import ratio_of_sums, reduction_of_sums, window_bootstrap

CI_LEVEL = 0.95  # the stage rows have no p-value rule: 95%


def rows_per_window(cfg: LMConfig) -> int:
    """Held-out rows per window: the window's positions, less the first where ``--exclude_first_position`` drops it
    (``common.data.activations.flatten_positions``)."""
    return cfg.window - int(cfg.exclude_first_position)


Sums = list[float] | np.ndarray  # (W,) one entry per held-out window


def _columns(*parts: Sums) -> tuple[np.ndarray, ...]:
    return tuple(np.asarray(part, dtype=np.float64) for part in parts)


def _enough(column: np.ndarray) -> bool:
    return column.shape[-1] >= 2  # one window has no spread to resample


def variance_explained_ci(window: dict[str, list[float]], level: float = CI_LEVEL) -> dict[str, Any] | None:
    """1 − Σ sse_centred / Σ sst over the resampled windows (``ReconstructionMetrics.per_window``)."""
    columns = _columns(window["sse_centred"], window["sst"])
    return window_bootstrap(columns, reduction_of_sums, level) if _enough(columns[0]) else None


def mse_ci(sse: Sums, rows: Sums | int, width: int, level: float = CI_LEVEL, seed: int = 0) -> dict[str, Any] | None:
    """Σ sse / (Σ rows · width): the mean squared error per entry over the resampled windows. ``rows`` is each
    window's row count, or one count for windows of equal length."""
    (sse_column,) = _columns(sse)
    entries = np.broadcast_to(np.asarray(rows, dtype=np.float64), sse_column.shape) * width
    return window_bootstrap((sse_column, entries), ratio_of_sums, level, seed=seed) if _enough(sse_column) else None


def reduction_ci(condition_sse: Sums, reference_sse: Sums, level: float = CI_LEVEL,
                 seed: int = 0) -> dict[str, Any] | None:
    """1 − Σ condition / Σ reference over the same resampled windows: an error reduction against a reference (or one
    model's gain over another's error)."""
    columns = _columns(condition_sse, reference_sse)
    return window_bootstrap(columns, reduction_of_sums, level, seed=seed) if _enough(columns[0]) else None


def _gain_difference(after_a: np.ndarray, after_b: np.ndarray, before: np.ndarray, axis: int = -1) -> np.ndarray:
    """(Σ after_b − Σ after_a) / Σ before: how much more of ``before`` model a removes than model b."""
    return (np.sum(after_b, axis=axis) - np.sum(after_a, axis=axis)) / np.sum(before, axis=axis)


def gain_difference_ci(after_a: Sums, after_b: Sums, before: Sums, level: float = CI_LEVEL,
                       seed: int = 0) -> dict[str, Any] | None:
    """reduction(a) − reduction(b) of the same ``before`` on the same windows: a control against the model it
    replaces."""
    columns = _columns(after_a, after_b, before)
    return window_bootstrap(columns, _gain_difference, level, seed=seed) if _enough(columns[0]) else None


def sae_cis(window: dict[str, list[float]], width: int) -> dict[str, Any]:
    """Stage 1's and stage 3's intervals: variance explained and MSE."""
    return {"variance_explained": variance_explained_ci(window), "mse": mse_ci(window["sse"], window["rows"], width)}


def nfm_cis(window: dict[str, list[float]], width: int) -> dict[str, Any]:
    """Stage 2's intervals on validation rows: the error reduction and the residual MSE before and after."""
    return {"error_reduction_val": reduction_ci(window["sse_after"], window["sse_before"]),
            **{f"residual_mse_{side}_val": mse_ci(window[f"sse_{side}"], window["rows"], width)
               for side in ("before", "after")}}


def joint_cis(window: dict[str, list[float]], width: int) -> dict[str, Any]:
    """Stage 5's intervals on held-out rows: the MSEs, variance explained and every improvement, each over the same
    resampled windows as its reference (``JointPass.per_window``, plus ``standalone_sse`` when there is one)."""
    mse = lambda key: mse_ci(window[key], window["rows"], width)  # noqa: E731
    cis = {
        "joint_mse": mse("joint_sse"),
        "sae_part_mse": mse("sae_part_sse"),
        "joint_variance_explained": variance_explained_ci(window),
        "sae_part_variance_explained": variance_explained_ci({"sse_centred": window["sae_part_sse_centred"],
                                                              "sst": window["sae_part_sst"]}),
        "improvement": reduction_ci(window["joint_sse"], window["sae_part_sse"]),
        "linear_contribution": reduction_ci(window["sae_plus_linear_sse"], window["sae_part_sse"]),
        "interaction_contribution": reduction_ci(window["joint_sse"], window["sae_plus_linear_sse"]),
    }
    if "standalone_sse" in window:
        cis["standalone_sae_mse"] = mse("standalone_sse")
        cis["improvement_vs_standalone"] = reduction_ci(window["joint_sse"], window["standalone_sse"])
    return cis
