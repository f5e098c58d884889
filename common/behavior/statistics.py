"""Statistics of the behavioral scripts (METHOD §10): the 2×2 logit test, multiple testing, null percentiles,
feature screens and the NFM weight-row statistics of part4.

Reported tests go through statsmodels (``ols`` + ``anova_lm(typ=2)``, ``AnovaRM``, ``multipletests``) and
scipy. Two closed forms exist only for speed, and the tests hold them equal to statsmodels: the balanced
2×2 interaction F, used by the permutation test (10,000 refits would take minutes) and by the screen over
thousands of features. Everything returned is plain Python numbers and dicts, except the per-feature and
per-row functions, which return NumPy arrays (one entry per feature or row).
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.formula.api import ols
from statsmodels.stats.anova import AnovaRM, anova_lm
from statsmodels.stats.multitest import multipletests
from statsmodels.tools.sm_exceptions import ValueWarning

from common.behavior.stimuli import CELLS, EMOTION, FORMALITY

FORMULA = "y ~ C(formality) * C(emotion)"
# The prompt enters the pooled model as a block: a per-prompt offset of every Δlogit (a clamp that moves all
# of one prompt's logits alike) is a nuisance, not an effect, and would otherwise inflate the residual.
POOLED_FORMULA = "y ~ C(prompt) + C(formality) * C(emotion)"
INTERACTION_TERM = "C(formality):C(emotion)"
PERMUTATIONS = 10_000
# A permuted F counts as "at least the observed" within this relative rounding margin: permutations that only
# move words inside their cells give the observed F exactly in arithmetic, but not always to the last bit.
_TIE_RTOL = 1e-9


# --- the 2×2 logit test -----------------------------------------------------------------------------------


def _check_delta(delta: np.ndarray) -> np.ndarray:
    d = np.asarray(delta, dtype=np.float64)
    if d.ndim != 4 or d.shape[1:3] != (2, 2):
        raise ValueError(f"delta must be (prompts, 2 formality, 2 emotion, words), got shape {d.shape}")
    if d.shape[0] < 2 or d.shape[3] < 2:
        raise ValueError(f"the 2×2 test needs at least 2 prompts and 2 words per cell, got shape {d.shape}")
    if not np.isfinite(d).all():
        raise ValueError("delta has non-finite values")
    return d


def _frame(d: np.ndarray) -> pd.DataFrame:
    idx = np.indices(d.shape).reshape(4, -1)
    cell = np.asarray(CELLS)[idx[1] * 2 + idx[2]]
    return pd.DataFrame({
        "prompt": idx[0],
        "formality": np.asarray(FORMALITY)[idx[1]],
        "emotion": np.asarray(EMOTION)[idx[2]],
        "word": [f"{c}_{j}" for c, j in zip(cell, idx[3])],
        "y": d.reshape(-1),
    })


def long_frame(delta: np.ndarray) -> pd.DataFrame:
    """One row per (prompt, formality, emotion, word position) of ``delta`` in C order: columns ``prompt``,
    ``formality``, ``emotion``, ``word`` (cell name and position, e.g. ``formal_high_3``: a word belongs to
    one cell) and ``y``. The pooled model's frame; the other two are built the same way from the averages."""
    return _frame(_check_delta(delta))


def _anova_row(table: pd.DataFrame, term: str, df_resid: float) -> dict:
    row = table.loc[term]
    return {"F": float(row["F"]), "p": float(row["PR(>F)"]), "df": [int(row["df"]), int(df_resid)]}


def _ols_2x2(frame: pd.DataFrame, formula: str, formality_diff: float, emotion_diff: float) -> dict:
    fit = ols(formula, data=frame).fit()
    with warnings.catch_warnings():
        # A Δ without residual variance (a clamp that changes nothing, e.g. a feature silent on every prompt clamped to
        # 0) has F = NaN, and statsmodels warns for each such feature × multiplier: hundreds of lines at the cpu
        # preset that say nothing the NaN does not.
        warnings.simplefilter("ignore", (ValueWarning, RuntimeWarning))
        table = anova_lm(fit, typ=2)
    result = _anova_row(table, INTERACTION_TERM, fit.df_resid)
    result["formality"] = {**_anova_row(table, "C(formality)", fit.df_resid), "mean_diff": formality_diff}
    result["emotion"] = {**_anova_row(table, "C(emotion)", fit.df_resid), "mean_diff": emotion_diff}
    return result


def _anova_rm_2x2(frame: pd.DataFrame, formality_diff: float, emotion_diff: float) -> dict:
    table = AnovaRM(frame, depvar="y", subject="prompt", within=["formality", "emotion"]).fit().anova_table

    def row(term: str) -> dict:
        r = table.loc[term]
        return {"F": float(r["F Value"]), "p": float(r["Pr > F"]), "df": [int(r["Num DF"]), int(r["Den DF"])]}

    result = row("formality:emotion")
    result["formality"] = {**row("formality"), "mean_diff": formality_diff}
    result["emotion"] = {**row("emotion"), "mean_diff": emotion_diff}
    return result


def interaction_f_balanced(cells: np.ndarray) -> np.ndarray:
    """Two-way interaction F of balanced 2×2 data ``cells`` (..., 2, 2, n), vectorized over leading axes.

    With n values per cell the interaction sum of squares is n·c²/4, c the interaction contrast of the cell
    means (m₀₀ − m₀₁ − m₁₀ + m₁₁); the error is the within-cell sum of squares on 4n − 4 df. For balanced
    data types 1, 2 and 3 agree, so this is ``anova_lm(typ=2)``'s F (tested). 0/0 (a constant input) is NaN.
    """
    x = np.asarray(cells, dtype=np.float64)
    n = x.shape[-1]
    means = x.mean(axis=-1)
    contrast = means[..., 0, 0] - means[..., 0, 1] - means[..., 1, 0] + means[..., 1, 1]
    ss_interaction = n * contrast**2 / 4.0
    ss_error = ((x - means[..., None]) ** 2).sum(axis=(-3, -2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return ss_interaction / (ss_error / (4 * n - 4))


def word_permutation_p(word_values: np.ndarray, permutations: int = PERMUTATIONS, seed: int = 0) -> dict:
    """Word-label permutation p of the by-word interaction F: ``word_values`` (2, 2, W) are shuffled over the 4W
    cell slots (cell sizes kept), ``permutations`` seeded draws, p = (1 + #{F_perm ≥ F_obs}) / (1 + draws).

    The words, not the prompts, carry the factors, so exchanging words between cells is the null of "no
    formality × emotion structure"; the +1 keeps p above zero (the observed labelling is one of the draws).
    Returns ``p``, ``F`` (closed form, = anova_lm), ``permutations`` and ``seed``.
    """
    y = np.asarray(word_values, dtype=np.float64)
    if y.ndim != 3 or y.shape[:2] != (2, 2):
        raise ValueError(f"word_values must be (2, 2, words), got shape {y.shape}")
    flat = y.reshape(-1)
    observed = float(interaction_f_balanced(y))
    rng = np.random.default_rng(seed)
    order = rng.permuted(np.broadcast_to(np.arange(flat.size), (permutations, flat.size)), axis=1)
    null = interaction_f_balanced(flat[order].reshape(permutations, *y.shape))
    at_least = int(np.count_nonzero(null >= observed * (1.0 - _TIE_RTOL)))
    # No F (values with no variance, e.g. a clamp that changed nothing): no p either, rather than 1 / (1 + draws).
    p = (1 + at_least) / (1 + permutations) if np.isfinite(observed) else float("nan")
    return {"p": p, "F": observed, "permutations": permutations, "seed": seed}


def _main_differences(d: np.ndarray) -> tuple[np.ndarray, float, float]:
    cell_means = d.mean(axis=(0, 3))
    return (cell_means, float(cell_means[0].mean() - cell_means[1].mean()),
            float(cell_means[:, 0].mean() - cell_means[:, 1].mean()))


def by_word(delta: np.ndarray) -> dict:
    """The main test: Δ averaged over prompts → 4W word values; ``ols(FORMULA)`` + ``anova_lm(typ=2)``.

    Returns the interaction's ``F``, ``p``, ``df`` (1, 4W − 4), and ``formality`` / ``emotion``: ``F``, ``p``,
    ``df`` and ``mean_diff`` (formal − casual, high − low, in logits)."""
    d = _check_delta(delta)
    _, formality_diff, emotion_diff = _main_differences(d)
    return _ols_2x2(_frame(d.mean(axis=0, keepdims=True)), FORMULA, formality_diff, emotion_diff)


def by_prompt(delta: np.ndarray) -> dict:
    """Repeated-measures 2×2 over prompts: ``AnovaRM`` with subject = prompt, within = formality, emotion, the
    cell value = mean of that cell's words; df (1, P − 1); the keys of ``by_word``."""
    d = _check_delta(delta)
    _, formality_diff, emotion_diff = _main_differences(d)
    return _anova_rm_2x2(_frame(d.mean(axis=3, keepdims=True)), formality_diff, emotion_diff)


def pooled(delta: np.ndarray, block_prompts: bool = True) -> dict:
    """OLS over all 4PW (prompt, word) rows, ``anova_lm(typ=2)``; the keys of ``by_word``.

    With ``block_prompts`` (the default) the prompt is a block (``POOLED_FORMULA``), df (1, 4PW − 4 − (P − 1)),
    and a per-prompt constant leaves every F unchanged. Without, ``FORMULA`` alone, df (1, 4PW − 4): the
    per-prompt offsets then land in the residual and shrink F."""
    d = _check_delta(delta)
    _, formality_diff, emotion_diff = _main_differences(d)
    return _ols_2x2(_frame(d), POOLED_FORMULA if block_prompts else FORMULA, formality_diff, emotion_diff)


def original_pseudo_interaction(delta: np.ndarray) -> dict:
    """The original part13 statistic under its own name: ``f_oneway`` of formal_high[i] − formal_low[i] against
    casual_high[i] − casual_low[i], i over (prompt, word position) in list order. The pairing is by row order
    only, so this is a two-sample t² on arbitrary word pairs, not an interaction test. df (1, 2PW − 2)."""
    d = _check_delta(delta)
    formal = (d[:, 0, 0] - d[:, 0, 1]).reshape(-1)
    casual = (d[:, 1, 0] - d[:, 1, 1]).reshape(-1)
    result = stats.f_oneway(formal, casual)
    return {"F": float(result.statistic), "p": float(result.pvalue), "df": [1, formal.size + casual.size - 2]}


def difference_of_differences(delta: np.ndarray) -> float:
    """(formal_high − formal_low) − (casual_high − casual_low) of the cell means, signed, in logits."""
    cell_means, _, _ = _main_differences(_check_delta(delta))
    return float((cell_means[0, 0] - cell_means[0, 1]) - (cell_means[1, 0] - cell_means[1, 1]))


def logit_2x2(delta: np.ndarray, permutations: int = PERMUTATIONS, seed: int = 0) -> dict:
    """The 2×2 logit test of one feature at one multiplier (METHOD §10, decision 1).

    ``delta`` is (P prompts, 2 formality [formal, casual], 2 emotion [high, low], W words per cell) of
    Δlogit. The factors belong to the target words, so the main test is by word. Returns ``by_word`` (the
    primary test), ``permutation_p`` (with ``permutations``, ``seed``: ``word_permutation_p`` of the
    prompt-averaged words), ``by_prompt``, ``pooled`` (prompt-blocked), ``pooled_unblocked``,
    ``original_pseudo_interaction`` (see each function), ``difference_of_differences``: (formal_high −
    formal_low) − (casual_high − casual_low) of the cell means, signed, in logits; ``cell_means`` by cell name;
    ``n_prompts`` and ``n_words`` (per cell).
    """
    d = _check_delta(delta)
    cell_means, _, _ = _main_differences(d)
    return {
        "by_word": by_word(d),
        "permutation_p": word_permutation_p(d.mean(axis=0), permutations=permutations, seed=seed)["p"],
        "permutations": permutations,
        "seed": seed,
        "by_prompt": by_prompt(d),
        "pooled": pooled(d),
        "pooled_unblocked": pooled(d, block_prompts=False),
        "original_pseudo_interaction": original_pseudo_interaction(d),
        "difference_of_differences": difference_of_differences(d),
        "cell_means": {name: float(v) for name, v in zip(CELLS, cell_means.reshape(-1))},
        "n_prompts": int(d.shape[0]),
        "n_words": int(d.shape[3]),
    }


# --- multiple testing and the empirical null ----------------------------------------------------------------


def _adjust(pvalues, method: str) -> np.ndarray:
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        out[finite] = multipletests(p[finite], method=method)[1]
    return out


def holm(pvalues) -> np.ndarray:
    """Holm-adjusted p (``multipletests(method="holm")``), same shape; NaN stays NaN and is not in the family."""
    return _adjust(pvalues, "holm")


def bh_fdr(pvalues) -> np.ndarray:
    """Benjamini–Hochberg q (``multipletests(method="fdr_bh")``), same shape; NaN stays NaN, outside the family."""
    return _adjust(pvalues, "fdr_bh")


def null_percentile(value: float, null_values) -> dict:
    """Percentile (0–100) of ``value`` among the finite ``null_values``: the share strictly below plus half the
    ties, so a value equal to every null draw sits at 50, not 100. Returns ``percentile`` (NaN for an empty
    null or a NaN value) and ``n`` (finite null values used)."""
    null = np.asarray(null_values, dtype=np.float64).ravel()
    null = null[np.isfinite(null)]
    if null.size == 0 or not np.isfinite(value):
        return {"percentile": float("nan"), "n": int(null.size)}
    below = np.count_nonzero(null < value)
    ties = np.count_nonzero(null == value)
    return {"percentile": float(100.0 * (below + 0.5 * ties) / null.size), "n": int(null.size)}
