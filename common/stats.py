"""Generic statistics for the analyses of METHOD §4, §6 and §7, all through scipy.stats and scikit-learn.

Every function except ``pathway_shares`` returns plain Python numbers, lists and dicts, ready for JSON.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import stats
from sklearn.mixture import GaussianMixture

MODE_BINS = 50
MIN_DELTA_BIC = 10.0
MIN_WEIGHT = 0.05
MIN_ASHMAN_D = 2.0
BIMODAL_RULE = (
    f"2-component BIC below 1-component BIC by > {MIN_DELTA_BIC:g}, both weights >= {MIN_WEIGHT:g}, "
    f"and Ashman's D = sqrt(2)*|mu1-mu2|/sqrt(s1^2+s2^2) > {MIN_ASHMAN_D:g}"
)


def _column(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(-1, 1)


def _fit_mixture(x: np.ndarray, n_components: int, seed: int) -> GaussianMixture:
    # Several initializations for two components: one k-means start can settle on a split that misses a
    # small mode; a single Gaussian has one solution.
    n_init = 10 if n_components > 1 else 1
    return GaussianMixture(n_components=n_components, n_init=n_init, random_state=seed).fit(x)


def bimodality(values: np.ndarray, seed: int = 0) -> dict:
    """Two- vs one-component Gaussian mixture, Sarle's coefficient, and one written rule for "bimodal".

    BIC alone calls any skewed sample "two components", so the rule also asks the two fitted modes
    to be separated (Ashman's D > 2) and each to hold a real share of the features. A flat, plateau
    -like sample (e.g. uniform) also passes: two separated Gaussians then fit it best.

    Returns ``n``; ``two_component`` (``means``, ``stds``, ``weights`` sorted by mean, ``bic``);
    ``one_component`` (``mean``, ``std``, ``bic``); ``delta_bic`` (one minus two); ``ashman_d``;
    ``sarle_bc`` (> 5/9 hints at bimodality; reported, not part of the rule); ``bimodal``; ``rule``.
    """
    x = _column(values)
    two, one = _fit_mixture(x, 2, seed), _fit_mixture(x, 1, seed)
    order = np.argsort(two.means_.ravel())
    means = two.means_.ravel()[order]
    stds = np.sqrt(two.covariances_.ravel()[order])
    weights = two.weights_[order]
    bic_two, bic_one = float(two.bic(x)), float(one.bic(x))
    ashman_d = float(np.sqrt(2.0) * abs(means[1] - means[0]) / np.sqrt(stds[0] ** 2 + stds[1] ** 2))

    n = len(x)
    skew = stats.skew(x.ravel(), bias=False)
    excess = stats.kurtosis(x.ravel(), fisher=True, bias=False)
    sarle = float((skew**2 + 1) / (excess + 3 * (n - 1) ** 2 / ((n - 2) * (n - 3))))

    bimodal = bic_one - bic_two > MIN_DELTA_BIC and weights.min() >= MIN_WEIGHT and ashman_d > MIN_ASHMAN_D
    return {
        "n": n,
        "two_component": {
            "means": means.tolist(),
            "stds": stds.tolist(),
            "weights": weights.tolist(),
            "bic": bic_two,
        },
        "one_component": {"mean": float(one.means_.ravel()[0]), "std": float(np.sqrt(one.covariances_.ravel()[0])),
                          "bic": bic_one},
        "delta_bic": bic_one - bic_two,
        "ashman_d": ashman_d,
        "sarle_bc": sarle,
        "bimodal": bool(bimodal),
        "rule": BIMODAL_RULE,
    }


def describe(values: np.ndarray, bins: int = MODE_BINS) -> dict:
    """Count, mean, median, std (ddof=1), min, max and the histogram mode.

    The mode is the centre of the fullest of ``bins`` equal bins over [min, max] (``mode_bins``
    says how many); an empty sample gives ``count`` 0 and ``None`` elsewhere.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        return {"count": 0, "mean": None, "median": None, "std": None, "min": None, "max": None, "mode": None,
                "mode_bins": bins}
    summary = stats.describe(x)
    counts, edges = np.histogram(x, bins=bins)
    fullest = int(np.argmax(counts))
    return {
        "count": int(summary.nobs),
        "mean": float(summary.mean),
        "median": float(np.median(x)),
        "std": float(np.sqrt(summary.variance)),
        "min": float(summary.minmax[0]),
        "max": float(summary.minmax[1]),
        "mode": float((edges[fullest] + edges[fullest + 1]) / 2),
        "mode_bins": bins,
    }


def _test(result) -> dict:
    return {"t": float(result.statistic), "p": float(result.pvalue)}


def paired_and_independent_tests(a: np.ndarray, b: np.ndarray, independent_b: np.ndarray | None = None) -> dict:
    """Paired t-test (``ttest_rel``, the main statistic) beside the original's independent ``ttest_ind``.

    ``a`` and ``b`` are aligned per measurement unit (e.g. per position). ``independent_b``, when given, is the
    second sample of the independent test instead of ``b`` (e.g. every ε draw, where ``b`` averages them per
    position). Returns ``n``, ``mean_a``, ``mean_b``, ``mean_diff`` (a − b), ``paired`` and ``independent``
    (each ``t``, ``p``).
    """
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    unpaired = b if independent_b is None else np.asarray(independent_b, dtype=np.float64).ravel()
    return {
        "n": len(a),
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "mean_diff": float((a - b).mean()),
        "paired": _test(stats.ttest_rel(a, b)),
        "independent": _test(stats.ttest_ind(a, unpaired)),
    }


def two_sample_tests(low: np.ndarray, high: np.ndarray) -> dict:
    """Student's ``ttest_ind`` (equal variances, the original's) beside Welch's.

    Returns ``n_low``, ``n_high``, ``mean_low``, ``mean_high``, ``student`` and ``welch`` (each ``t``, ``p``).
    """
    low, high = np.asarray(low, dtype=np.float64).ravel(), np.asarray(high, dtype=np.float64).ravel()
    return {
        "n_low": len(low),
        "n_high": len(high),
        "mean_low": float(low.mean()),
        "mean_high": float(high.mean()),
        "student": _test(stats.ttest_ind(low, high, equal_var=True)),
        "welch": _test(stats.ttest_ind(low, high, equal_var=False)),
    }


def spearman(x: np.ndarray, y: np.ndarray) -> dict:
    """Spearman rank correlation: ``n``, ``r``, ``p``."""
    result = stats.spearmanr(np.ravel(x), np.ravel(y))
    return {"n": int(np.size(x)), "r": float(result.statistic), "p": float(result.pvalue)}


def pathway_shares(decoder_norms: np.ndarray, linear_norms: np.ndarray,
                   nonlinear_norms: np.ndarray) -> dict[str, np.ndarray]:
    """Per-feature share of each pathway's norm in their sum (METHOD §7).

    Returns arrays ``residual``, ``linear``, ``nonlinear`` and ``interaction`` (linear + nonlinear,
    the paper's "interaction-pathway share", = 1 − residual by construction).
    """
    residual, linear, nonlinear = (np.asarray(v, dtype=np.float64)
                                   for v in (decoder_norms, linear_norms, nonlinear_norms))
    total = residual + linear + nonlinear
    shares = {"residual": residual / total, "linear": linear / total, "nonlinear": nonlinear / total}
    shares["interaction"] = shares["linear"] + shares["nonlinear"]
    return shares


def ratio(condition: np.ndarray, baseline: np.ndarray) -> float:
    """``mean(condition) / mean(baseline)``, e.g. KL(SAE) against KL(ε-random): the paper's "2.99x"."""
    return float(np.mean(condition) / np.mean(baseline))


def reduction(condition: np.ndarray, reference: np.ndarray) -> float:
    """``1 − mean(condition) / mean(reference)``, e.g. SAE+NFM against SAE: the paper's "29.8%" (as a fraction)."""
    return 1.0 - ratio(condition, reference)


DIP_ALPHA = 0.05


def dip_test(values: np.ndarray) -> dict:
    """Hartigan's dip test of unimodality (the ``diptest`` package; p from its interpolated null table)."""
    import diptest  # only the bimodality verdict needs it (common/analysis/modes.py)

    dip, p = diptest.diptest(np.asarray(values, dtype=np.float64).ravel())
    return {"dip": float(dip), "p": float(p), "bimodal": bool(p < DIP_ALPHA),
            "rule": f"Hartigan's dip test rejects unimodality with p < {DIP_ALPHA:g}"}


# ---- inference over windows (METHOD §13) ----------------------------------------------------------------------

BOOTSTRAP_DRAWS = 2_000


def window_bootstrap(columns: tuple[np.ndarray, ...], statistic: Callable[..., np.ndarray], level: float = 0.95,
                     draws: int = BOOTSTRAP_DRAWS, seed: int = 0) -> dict[str, Any]:
    """A statistic of per-window columns (each (W,), one entry per window) with its percentile CI from a paired
    bootstrap over windows (scipy.stats.bootstrap): every column is resampled with the same windows, so a ratio's
    numerator and denominator move together. ``statistic(*columns, axis)`` reduces along ``axis``."""
    columns = tuple(np.asarray(column, dtype=np.float64) for column in columns)
    estimate = float(statistic(*columns, axis=-1))
    result = stats.bootstrap(columns, statistic, paired=True, vectorized=True, n_resamples=draws,
                             confidence_level=level, method="percentile", rng=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return {"estimate": estimate, "low": float(low), "high": float(high), "level": level, "draws": draws,
            "windows": int(columns[0].shape[-1]), "method": "percentile bootstrap over windows, paired"}


def ratio_of_sums(numerator: np.ndarray, denominator: np.ndarray, axis: int = -1) -> np.ndarray:
    """Σ numerator / Σ denominator: a ratio of means over the same positions, from per-window sums."""
    return np.sum(numerator, axis=axis) / np.sum(denominator, axis=axis)


def reduction_of_sums(condition: np.ndarray, reference: np.ndarray, axis: int = -1) -> np.ndarray:
    """1 − Σ condition / Σ reference: the reduction of a mean against the reference's, from per-window sums."""
    return 1.0 - ratio_of_sums(condition, reference, axis)
