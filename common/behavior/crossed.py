"""The crossed analysis of the 2×2 logit test (METHOD §10 decision 8): every Δlogit belongs to one word and one prompt
at once, so the primary test is a mixed model with the 2×2 fixed and random intercepts for word and for prompt
(statsmodels ``MixedLM``), with min F′ (Clark 1973) beside it, and the fp32 noise floor the effect is read against.

The design is balanced and fully crossed (P prompts × 4 cells × W words, each word in one cell), so the ANOVA
(expected mean squares) estimators of the variance components are REML's whenever they are positive; the fit starts
there, which takes statsmodels' single-group crossed fit from a dozen optimizer steps to one or two.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.formula.api import ols
from statsmodels.regression.mixed_linear_model import MixedLM, MixedLMParams
from threadpoolctl import threadpool_limits

from common.behavior.statistics import difference_of_differences
from common.behavior.stimuli import CELLS

# ±½ coding: the coefficient of f:e is the difference of differences (formal_high − formal_low) − (casual_high −
# casual_low) of the cell means, in logits, and f and e are the main effects (formal − casual, high − low).
FIXED = "y ~ f * e"
INTERACTION = "f:e"
RANDOM = {"prompt": "0 + C(prompt)", "word": "0 + C(word)"}
LEVEL = 0.95


def _check(delta: np.ndarray) -> np.ndarray:
    d = np.asarray(delta, dtype=np.float64)
    if d.ndim != 4 or d.shape[1:3] != (2, 2) or d.shape[0] < 2 or d.shape[3] < 2:
        raise ValueError(f"delta must be (prompts ≥ 2, 2, 2, words ≥ 2), got shape {d.shape}")
    if not np.isfinite(d).all():
        raise ValueError("delta has non-finite values")
    return d


def crossed_frame(delta: np.ndarray) -> pd.DataFrame:
    """One row per (prompt, formality, emotion, word) of ``delta`` (P, 2, 2, W) in C order: ``y``, ``f`` (+½ formal,
    −½ casual), ``e`` (+½ high, −½ low), ``prompt``, ``word`` (cell and position: a word belongs to one cell) and
    ``group`` (one group: prompts and words are crossed, not nested)."""
    d = _check(delta)
    idx = np.indices(d.shape).reshape(4, -1)
    return pd.DataFrame({"y": d.reshape(-1), "f": 0.5 - idx[1], "e": 0.5 - idx[2], "prompt": idx[0],
                         "word": [f"{CELLS[2 * a + b]}_{j}" for a, b, j in zip(idx[1], idx[2], idx[3])],
                         "group": 0})


def anova_components(delta: np.ndarray) -> dict[str, float]:
    """Variance components of the balanced crossed design by expected mean squares, each truncated at 0: residual
    (word × prompt) MS_e from the additive prompt + word fit; word (within cell) (MS_w − MS_e) / P; prompt
    (MS_p − MS_e) / 4W."""
    d = _check(delta)
    prompts, words = d.shape[0], 4 * d.shape[3]
    y = d.reshape(prompts, words)
    word_means, prompt_means = y.mean(0), y.mean(1)
    residual = y - word_means - prompt_means[:, None] + y.mean()
    ms_e = float((residual**2).sum() / ((prompts - 1) * (words - 1)))
    cell_means = word_means.reshape(4, -1).mean(1, keepdims=True)
    ms_w = float(prompts * ((word_means.reshape(4, -1) - cell_means) ** 2).sum() / (words - 4))
    ms_p = float(words * ((prompt_means - prompt_means.mean()) ** 2).sum() / (prompts - 1))
    return {"word": max((ms_w - ms_e) / prompts, 0.0), "prompt": max((ms_p - ms_e) / words, 0.0), "residual": ms_e}


def _nan_fit(reason: str) -> dict[str, Any]:
    nan = float("nan")
    return {"coefficient": nan, "se": nan, "z": nan, "p": nan, "ci": {"low": nan, "high": nan, "level": LEVEL},
            "variance_components": {"word": nan, "prompt": nan, "residual": nan}, "converged": False,
            "error": reason}


def _fit(frame: pd.DataFrame, components: dict[str, float]) -> tuple[Any, list[str]]:
    """The REML fit, started at the ANOVA estimates. A component estimated at 0 is on the boundary, where REML's
    constrained optimum for a balanced design is the fit without it (the optimizer crawls there otherwise); with
    none left the model is OLS."""
    kept = [name for name in RANDOM if components[name] > 0]
    if not kept:
        return ols(FIXED, data=frame).fit(), kept
    model = MixedLM.from_formula(FIXED, groups="group", re_formula="0", data=frame,
                                 vc_formula={name: RANDOM[name] for name in kept})
    start = MixedLMParams.from_components(fe_params=np.zeros(4), cov_re=np.zeros((0, 0)), vcomp=np.array(
        [components[name] / components["residual"] for name in model.exog_vc.names]))
    # One BLAS thread: the fit's many small solves run several times slower when OpenBLAS threads share the cores
    # with the LM's.
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = model.fit(reml=True, start_params=start, method=["lbfgs"])
    return fit, list(model.exog_vc.names)


def mixed_model(delta: np.ndarray) -> dict[str, Any]:
    """``MixedLM`` (REML) of ``FIXED`` with random intercepts for prompt and for word (crossed: one group, the two as
    variance components), on ``delta`` (P, 2, 2, W). Returns the interaction's ``coefficient`` (= the difference of
    differences, logits), ``se``, ``z`` (Wald), ``p`` and 95% ``ci``; the main effects; the ``variance_components``
    (word, prompt, residual) and ``converged``. Data with no variance give NaN and the reason (``error``)."""
    frame = crossed_frame(delta)
    unit = float(frame["y"].std())
    if not unit > 0:
        return _nan_fit("Δlogit has no variance (the clamp changed nothing)")
    # Fitted in units of Δ's own SD (Δlogit can be 1e-8 on a tiny model, far below the optimizer's tolerances) and
    # scaled back: z and p do not depend on the unit.
    frame["y"] /= unit
    components = anova_components(delta / unit)
    if not components["residual"] > 0:
        return _nan_fit("no word × prompt variation: every prompt moves every word alike")
    try:
        fit, kept = _fit(frame, components)
    except (np.linalg.LinAlgError, ValueError) as err:
        return _nan_fit(f"MixedLM failed: {err}")
    vcomp = dict(zip(kept, np.asarray(fit.vcomp, dtype=float) * unit**2)) if kept else {}
    low, high = fit.conf_int(alpha=1 - LEVEL).loc[INTERACTION] * unit
    return {"coefficient": float(fit.params[INTERACTION] * unit), "se": float(fit.bse[INTERACTION] * unit),
            "z": float(fit.tvalues[INTERACTION]), "p": float(fit.pvalues[INTERACTION]),
            "ci": {"low": float(low), "high": float(high), "level": LEVEL},
            "formality": float(fit.params["f"] * unit), "emotion": float(fit.params["e"] * unit),
            "variance_components": {"word": float(vcomp.get("word", 0.0)), "prompt": float(vcomp.get("prompt", 0.0)),
                                    "residual": float(fit.scale * unit**2)},
            "at_zero": [name for name in RANDOM if name not in kept],
            "converged": bool(getattr(fit, "converged", True)), "method": "REML", "n_obs": int(fit.nobs),
            "model": f"{FIXED} + (1 | prompt) + (1 | word), ±½ coded"}


def min_f_prime(by_prompt: dict[str, Any], by_word: dict[str, Any]) -> dict[str, Any]:
    """min F′ (Clark 1973) of the interaction from F1 (by prompt: prompts are the "subjects", df (1, n1)) and F2 (by
    word: the items, df (1, n2)): F1·F2 / (F1 + F2) on (1, (F1 + F2)² / (F1²/n2 + F2²/n1)) df. It is a lower bound
    of the quasi-F that treats both prompts and words as random."""
    f1, n1 = by_prompt["F"], by_prompt["df"][1]
    f2, n2 = by_word["F"], by_word["df"][1]
    if not (np.isfinite(f1) and np.isfinite(f2)) or f1 + f2 <= 0:
        return {"F": float("nan"), "df": [1, float("nan")], "p": float("nan")}
    value = f1 * f2 / (f1 + f2)
    df2 = (f1 + f2) ** 2 / (f1**2 / n2 + f2**2 / n1)
    return {"F": float(value), "df": [1, float(df2)], "p": float(stats.f.sf(value, 1, df2))}


def noise_floor(noise: np.ndarray) -> dict[str, Any]:
    """The fp32 noise floor: ``noise`` (P, 2, 2, W) is the difference between two computations of the same clean
    logits that differ only in floating-point order (a prompt's pass alone and in a batch). Its spread, its largest
    value and the difference of differences it alone makes."""
    d = np.asarray(noise, dtype=np.float64)
    return {"sd_dlogit": float(d.std()), "max_abs_dlogit": float(np.abs(d).max()),
            "difference_of_differences": difference_of_differences(d),
            "computation": "the reference pass of each prompt alone minus the same pass in a batch of clamps"}
