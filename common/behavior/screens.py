"""Screens over every feature of a behavioral script (METHOD §10): the same test on each feature's per-text values
at once, in closed form (a t, a one-way F and the 2×2 interaction F per column), and which features are active
enough to be ranked."""
from __future__ import annotations

import warnings

import numpy as np
from scipy import stats

from common.behavior.statistics import interaction_f_balanced


def _values(values: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"values must be (texts, features), got shape {x.shape}")
    labels = np.asarray(labels).ravel()
    if labels.size != x.shape[0]:
        raise ValueError(f"{labels.size} labels for {x.shape[0]} texts")
    # A constant feature is NaN by decree: 0/0 in exact arithmetic, but rounding in the means can leave a
    # tiny non-zero variance and a meaningless finite statistic.
    constant = x.max(axis=0) == x.min(axis=0) if x.shape[0] else np.ones(x.shape[1], dtype=bool)
    return x, labels, constant


def screen_t(values: np.ndarray, high_mask: np.ndarray) -> dict:
    """Student two-sample t (high − low) and two-sided p per feature: ``scipy.stats.ttest_ind(equal_var=True,
    axis=0)``. ``values`` is (n_texts, n_features). Returns ``t``, ``p`` (arrays; NaN for a constant feature)
    and ``df``."""
    x, high, constant = _values(values, high_mask)
    high = high.astype(bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_ind(x[high], x[~high], axis=0, equal_var=True)
    t, p = np.array(result.statistic, dtype=np.float64), np.array(result.pvalue, dtype=np.float64)
    t[constant], p[constant] = np.nan, np.nan
    return {"t": t, "p": p, "df": int(x.shape[0] - 2)}


def screen_oneway(values: np.ndarray, condition_labels: np.ndarray) -> dict:
    """One-way F over the conditions and its p per feature: ``scipy.stats.f_oneway(axis=0)``, the original's
    omnibus statistic. Returns ``F``, ``p`` (arrays; NaN for a constant feature) and ``df`` (k − 1, n − k)."""
    x, labels, constant = _values(values, condition_labels)
    levels = np.unique(labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on constant features; they are set to NaN below
        result = stats.f_oneway(*(x[labels == level] for level in levels), axis=0)
    f, p = np.array(result.statistic, dtype=np.float64), np.array(result.pvalue, dtype=np.float64)
    f[constant], p[constant] = np.nan, np.nan
    return {"F": f, "p": p, "df": [int(levels.size - 1), int(x.shape[0] - levels.size)]}


def screen_interaction(values: np.ndarray, formality: np.ndarray, emotion: np.ndarray) -> dict:
    """Two-way formality × emotion interaction F and p per feature for a balanced 2×2 of texts: the closed form
    of ``interaction_f_balanced``, equal to ``anova_lm(typ=2)`` of ``FORMULA`` on each feature (tested).
    ``formality`` and ``emotion`` are per-text labels of two levels each, with equal cell sizes. Returns ``F``,
    ``p`` (arrays; NaN for a constant feature) and ``df`` (1, n − 4)."""
    x, f_labels, constant = _values(values, formality)
    e_labels = np.asarray(emotion).ravel()
    if e_labels.size != x.shape[0]:
        raise ValueError(f"{e_labels.size} emotion labels for {x.shape[0]} texts")
    f_levels, f_code = np.unique(f_labels, return_inverse=True)
    e_levels, e_code = np.unique(e_labels, return_inverse=True)
    if f_levels.size != 2 or e_levels.size != 2:
        raise ValueError("formality and emotion must have two levels each")
    cell = f_code * 2 + e_code
    sizes = np.bincount(cell, minlength=4)
    if sizes.min() != sizes.max() or sizes[0] < 2:
        raise ValueError(f"the interaction screen needs a balanced 2×2 with ≥ 2 texts per cell, got sizes {sizes}")
    n = int(sizes[0])
    cells = x[np.argsort(cell, kind="stable")].reshape(2, 2, n, -1)
    f = interaction_f_balanced(np.moveaxis(cells, -1, 0))
    df_error = 4 * n - 4
    p = stats.f.sf(f, 1, df_error)
    f[constant], p[constant] = np.nan, np.nan
    return {"F": f, "p": p, "df": [1, df_error]}


def active_in(values: np.ndarray, min_texts: int = 5) -> np.ndarray:
    """Mask of the features non-zero in at least ``min_texts`` texts (rows of ``values``): the scripts drop the
    rest, whose statistics rest on a handful of texts (decision 2)."""
    return np.count_nonzero(np.asarray(values), axis=0) >= min_texts


