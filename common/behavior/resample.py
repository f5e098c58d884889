"""A bootstrap over words and prompts at once for the 2×2 logit test (METHOD §10 decision 8): each draw resamples the
prompts, and the words within each cell, with replacement; the same draws serve every multiplier, so the difference
of differences at each multiplier, the word SD, the cell means and the dose-response slope all come from one set of
resampled designs. scipy's ``bootstrap`` resamples one axis (or paired axes), not two crossed ones, hence the
indices drawn here."""
from __future__ import annotations

from typing import Any

import numpy as np

from common.behavior.stimuli import CELLS

DRAWS = 2_000
LEVEL = 0.95


def _interval(values: np.ndarray, level: float = LEVEL) -> dict[str, float]:
    """The percentile interval of the finite draws (NaN where none is finite)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {"low": float("nan"), "high": float("nan"), "level": level}
    low, high = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
    return {"low": float(low), "high": float(high), "level": level}


def word_values(delta_by_value: np.ndarray, draws: int, seed: int) -> np.ndarray:
    """(draws, V, 4, W): each resampled design's word values (Δ averaged over its resampled prompts), its words
    resampled within each cell; ``delta_by_value`` is (V, P, 2, 2, W)."""
    d = np.asarray(delta_by_value, dtype=np.float64)
    values, prompts, words = d.shape[0], d.shape[1], d.shape[4]
    rng = np.random.default_rng(seed)
    prompt_draws = rng.integers(0, prompts, size=(draws, prompts))
    word_draws = rng.integers(0, words, size=(draws, 1, 4, words))
    weights = np.stack([np.bincount(row, minlength=prompts) for row in prompt_draws]) / prompts  # (draws, P)
    means = np.einsum("bp,vpw->bvw", weights, d.reshape(values, prompts, 4 * words)).reshape(draws, values, 4, words)
    return np.take_along_axis(means, np.broadcast_to(word_draws, means.shape), axis=3)


def _contrast(cell_means: np.ndarray) -> np.ndarray:
    """(..., 4) cell means in CELLS order → the difference of differences."""
    return (cell_means[..., 0] - cell_means[..., 1]) - (cell_means[..., 2] - cell_means[..., 3])


def _word_sd(values: np.ndarray) -> np.ndarray:
    """(..., 4, W) → the pooled within-cell SD of the word values (the by-word ANOVA's root mean square error)."""
    words = values.shape[-1]
    centred = values - values.mean(-1, keepdims=True)
    return np.sqrt((centred**2).sum(axis=(-2, -1)) / (4 * words - 4))


def _slope(multipliers: np.ndarray, contrasts: np.ndarray) -> np.ndarray:
    """Least-squares slope of the contrast (..., V) in the multiplier (V,)."""
    m = multipliers - multipliers.mean()
    return (contrasts - contrasts.mean(-1, keepdims=True)) @ m / (m @ m)


def crossed_bootstrap(delta_by_value: np.ndarray, multipliers: list[float], primary: int, draws: int = DRAWS,
                      seed: int = 0) -> dict[str, Any]:
    """The difference of differences (DoD) of each multiplier's Δ (V, P, 2, 2, W), and at the ``primary`` one its
    95% percentile CI in logits and in word SDs (each draw's DoD over that draw's word SD), each cell mean's CI, and
    the least-squares slope of the DoD in the multiplier with its CI (where there are two multipliers or more)."""
    d = np.asarray(delta_by_value, dtype=np.float64)
    observed = d.mean(axis=1).reshape(d.shape[0], 4, -1)  # (V, 4, W) word values of the design itself
    resampled = word_values(d, draws, seed)
    cell_draws = resampled.mean(-1)  # (draws, V, 4)
    dod, dod_draws = _contrast(observed.mean(-1)), _contrast(cell_draws)
    sd, sd_draws = float(_word_sd(observed[primary])), _word_sd(resampled[:, primary])
    with np.errstate(divide="ignore", invalid="ignore"):
        standardized = dod_draws[:, primary] / sd_draws
    result: dict[str, Any] = {
        "logits": float(dod[primary]), "ci": _interval(dod_draws[:, primary]), "word_sd": sd,
        "in_word_sds": float(dod[primary] / sd) if sd > 0 else float("nan"), "ci_in_word_sds": _interval(standardized),
        "by_multiplier": {f"{m:g}": float(value) for m, value in zip(multipliers, dod)},
        "ci_by_multiplier": {f"{m:g}": _interval(dod_draws[:, v]) for v, m in enumerate(multipliers)},
        "cell_mean_ci": {f"{m:g}": {cell: _interval(cell_draws[:, v, c]) for c, cell in enumerate(CELLS)}
                         for v, m in enumerate(multipliers)},
        "draws": draws, "seed": seed, "resampled": "the prompts, and the words within each cell, with replacement"}
    if len(multipliers) >= 2:
        m = np.asarray(multipliers, dtype=np.float64)
        result["dose_response"] = {"multipliers": list(map(float, m)), "slope": float(_slope(m, dod)),
                                   "ci": _interval(_slope(m, dod_draws)),
                                   "fit": "least squares of the DoD on m; CI from the same draws"}
    return result
