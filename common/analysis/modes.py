"""The one bimodality verdict on a decoder's squared norms (METHOD §13.3), used by part16's results, REPORT.md's rows
and the study alike.

Features that never moved (no firing on the held-out rows and a squared norm within 25% of their own initial one)
are counted apart: an untrained column keeps its initial norm, and a crowd of them makes a spike that any test
reads as a mode. On the moved features a decoder is bimodal when Hartigan's dip test rejects unimodality (p < 0.05)
AND a Gaussian KDE (Scott's bandwidth) of the squared norm itself (the paper's scale, not its log) dips, between its
two highest modes wherever they are, below 0.9 times the lower of the two. The two-component mixture fit stays beside
it as a description.

The scale matters: on the log scale a crowd of features that fired a little but stayed near their initial norm
(d/(3F), the smallest norms a trained decoder has) becomes a mode of its own, and the cpu preset's fp32 decoders,
unimodal on the paper's scale (dip p 0.9), would read as bimodal.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

from common.analysis.decoders import NEAR_INIT_TOLERANCE
from common.stats import DIP_ALPHA, dip_test

SCALE = "squared norm"
BANDWIDTH = "scott"  # scipy.stats.gaussian_kde's rule: n^(-1/5) times the sample's std
VALLEY_RATIO = 0.9
GRID_POINTS = 1024
GRID_MARGIN = 3.0  # bandwidths beyond the sample's range, so a mode at either end is an interior maximum
MIN_MOVED = 10  # fewer moved features than this give no verdict (not bimodal)
NEVER_MOVED_RULE = (f"never moved: no firing on the held-out rows and a squared norm within {NEAR_INIT_TOLERANCE:.0%} "
                    "of its own initial one (the initial decoder re-created from the run's seed)")
VERDICT_RULE = (f"on the moved features: Hartigan's dip test p < {DIP_ALPHA:g} and a Gaussian KDE ({BANDWIDTH}'s "
                f"bandwidth) of the {SCALE} that falls, between its two highest modes, below {VALLEY_RATIO:g}x the "
                "lower mode's density")


def never_moved(squared: np.ndarray, initial: np.ndarray, firing: np.ndarray) -> np.ndarray:
    """Bool mask (F,): zero firings AND |squared − initial| ≤ 25% of initial, feature by feature."""
    squared, initial = np.asarray(squared, dtype=np.float64), np.asarray(initial, dtype=np.float64)
    return (np.asarray(firing) == 0) & (np.abs(squared - initial) <= NEAR_INIT_TOLERANCE * initial)


def _local_maxima(curve: np.ndarray) -> np.ndarray:
    inner = (curve[1:-1] > curve[:-2]) & (curve[1:-1] >= curve[2:])
    return np.flatnonzero(inner) + 1


def kde_valley(values: np.ndarray) -> dict[str, Any]:
    """The KDE of ``values`` (already on the verdict's scale) on a grid reaching 3 bandwidths past the sample: its
    modes (local maxima, highest first), and between the two highest the lowest density and its ratio to the lower
    of the two. ``valley`` is that ratio < 0.9; one mode gives no valley (ratio None)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    density = stats.gaussian_kde(x, bw_method=BANDWIDTH)
    bandwidth = float(np.sqrt(density.covariance[0, 0]))
    grid = np.linspace(x.min() - GRID_MARGIN * bandwidth, x.max() + GRID_MARGIN * bandwidth, GRID_POINTS)
    curve = density(grid)
    peaks = _local_maxima(curve)
    peaks = peaks[np.argsort(curve[peaks])[::-1]]
    result: dict[str, Any] = {"bandwidth_rule": BANDWIDTH, "bandwidth": bandwidth,
                              "modes": grid[peaks].tolist(), "mode_densities": curve[peaks].tolist(),
                              "valley_location": None, "valley_density": None, "ratio": None, "valley": False}
    if len(peaks) < 2:
        return result
    left, right = sorted(peaks[:2])
    floor = left + int(np.argmin(curve[left : right + 1]))
    ratio = float(curve[floor] / min(curve[left], curve[right]))
    return {**result, "valley_location": float(grid[floor]), "valley_density": float(curve[floor]), "ratio": ratio,
            "valley": ratio < VALLEY_RATIO}


def verdict(squared: np.ndarray, initial: np.ndarray | None = None, firing: np.ndarray | None = None,
            held_out_rows: int | None = None) -> dict[str, Any]:
    """The verdict on one decoder's squared norms (F,) (all > 0), given each feature's initial squared norm and its
    firing count on ``held_out_rows`` held-out rows; without them the never-moved features cannot be told apart
    (``known`` False) and every feature counts as moved.

    Returns ``n``; ``never_moved`` (``known``, ``count``, ``fraction``, ``rule``); ``moved`` (``n``, ``dip``,
    ``kde``, ``low_mode_below``: the valley's squared norm, below which a moved feature is in the low mode, and
    ``by_firing``: ``low_mode_shares`` of the moved features); ``bimodal``; ``reason``; ``rule``; ``scale``. The
    two-component mixture, a description, is part16's ``bimodality`` beside it.
    """
    squared = np.asarray(squared, dtype=np.float64)
    known = initial is not None and firing is not None
    still = never_moved(squared, initial, firing) if known else np.zeros(len(squared), dtype=bool)
    moved_values = squared[~still]
    out: dict[str, Any] = {
        "n": int(len(squared)),
        "never_moved": {"known": known, "count": int(still.sum()) if known else None,
                        "fraction": float(still.mean()) if known else None, "rule": NEVER_MOVED_RULE},
        "rule": VERDICT_RULE, "scale": SCALE,
    }
    if len(moved_values) < MIN_MOVED or np.ptp(moved_values) == 0:
        return {**out, "moved": {"n": int(len(moved_values))}, "bimodal": False,
                "reason": f"fewer than {MIN_MOVED} moved features with distinct norms"}
    dip, kde = dip_test(moved_values), kde_valley(moved_values)
    bimodal = bool(dip["bimodal"] and kde["valley"])
    low_mode_below = kde["valley_location"]
    reason = ("dip test rejects and a valley lies between the two highest modes" if bimodal else
              "; ".join(part for part, failed in ((f"dip p = {dip['p']:.3g} (not < {DIP_ALPHA:g})", not dip["bimodal"]),
                                                  ("no valley between the two highest modes", not kde["valley"]))
                        if failed))
    moved = {"n": int(len(moved_values)), "dip": dip, "kde": kde, "low_mode_below": low_mode_below}
    if known and held_out_rows:
        moved["by_firing"] = low_mode_shares(moved_values, np.asarray(firing)[~still], held_out_rows, low_mode_below)
    return {**out, "moved": moved, "bimodal": bimodal, "reason": reason}


def low_mode_shares(squared: np.ndarray, firing: np.ndarray, held_out_rows: int, low_mode_below: float | None,
                    rare_below: float = 1e-3) -> dict[str, Any]:
    """Among the given (moved) features, those firing on fewer than ``rare_below`` of the held-out rows and the rest:
    how many, and the share of each whose squared norm is below the valley (the low mode; None without a valley)."""
    squared, firing = np.asarray(squared, dtype=np.float64), np.asarray(firing)
    rare = firing / held_out_rows < rare_below
    if low_mode_below is None:
        return {"rare_below": rare_below, "rare": int(rare.sum()), "rest": int((~rare).sum()),
                "low_share_rare": None, "low_share_rest": None}
    low = squared < low_mode_below
    share = lambda mask: float(low[mask].mean()) if mask.any() else None  # noqa: E731
    return {"rare_below": rare_below, "rare": int(rare.sum()), "rest": int((~rare).sum()),
            "low_share_rare": share(rare), "low_share_rest": share(~rare)}
