"""Power of the 2×2 logit test (METHOD §10 decision 8): the smallest difference of differences a design detects with
80% power, from a run's own variance components.

A design is P prompts × 4 cells × W words. Data are simulated as Δ = prompt + word + residual with the components'
variances, the by-word interaction F (the word values averaged over the prompts, df (1, 4W − 4); the prompt effects
cancel in it) is computed for each draw in closed form, and a planted DoD δ is added to one cell. Adding δ moves the
interaction contrast by δ and leaves the within-cell error alone, so one set of null draws gives the power at every δ
(common random numbers) and the smallest δ with 80% power is found by bisection. For a balanced design the mixed
model's test of the interaction rests on the same word-level error, so its power is this one's. The analytic power
(a noncentral F with λ = W·δ² / (4·(σ²_word + σ²_residual / P))) is printed beside it; the tests hold the two together.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy import optimize, stats

ALPHA, POWER, SIMULATIONS = 0.05, 0.80, 4_000
_CHUNK = 250  # simulated designs per batch of normal draws (P × 4W × 250 doubles)


def word_value_variance(components: dict[str, float], prompts: int) -> float:
    """The variance of one word's value (its Δ averaged over the prompts) within its cell."""
    return components["word"] + components["residual"] / prompts


def analytic_power(dod: float, components: dict[str, float], prompts: int, words: int, alpha: float = ALPHA) -> float:
    """Power of the by-word interaction F at ``dod``: a noncentral F(1, 4W − 4) with λ = W·δ²/(4σ²)."""
    variance = word_value_variance(components, prompts)
    critical = stats.f.isf(alpha, 1, 4 * words - 4)
    noncentrality = words * dod**2 / (4 * variance)
    if noncentrality == 0:  # scipy's ncf.sf is wrong at exactly 0 (−0.95 for 0.05 in scipy 1.17): the central F
        return float(stats.f.sf(critical, 1, 4 * words - 4))
    return float(stats.ncf.sf(critical, 1, 4 * words - 4, noncentrality))


def null_draws(components: dict[str, float], prompts: int, words: int, simulations: int,
               seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Simulated designs with no interaction: each one's interaction contrast of the word values and its within-cell
    mean square (the by-word F's error term), (simulations,) each."""
    rng = np.random.default_rng(seed)
    sd = {name: np.sqrt(max(components[name], 0.0)) for name in ("prompt", "word", "residual")}
    contrasts, errors = [], []
    for start in range(0, simulations, _CHUNK):
        n = min(_CHUNK, simulations - start)
        delta = (rng.normal(0.0, sd["prompt"], (n, prompts, 1, 1, 1)) + rng.normal(0.0, sd["word"], (n, 1, 2, 2, words))
                 + rng.normal(0.0, sd["residual"], (n, prompts, 2, 2, words)))
        values = delta.mean(axis=1)  # (n, 2, 2, W): the by-word test's data
        means = values.mean(-1)
        contrasts.append(means[:, 0, 0] - means[:, 0, 1] - means[:, 1, 0] + means[:, 1, 1])
        errors.append(((values - means[..., None]) ** 2).sum(axis=(1, 2, 3)) / (4 * words - 4))
    return np.concatenate(contrasts), np.concatenate(errors)


def simulated_power(dod: float, contrasts: np.ndarray, errors: np.ndarray, words: int, alpha: float = ALPHA) -> float:
    """The share of simulated designs whose by-word F rejects at ``alpha`` once ``dod`` is planted."""
    f = words * (contrasts + dod) ** 2 / (4 * errors)
    return float(np.mean(f > stats.f.isf(alpha, 1, 4 * words - 4)))


def _smallest(power_at, target: float, scale: float) -> float:
    """The smallest δ ≥ 0 whose power reaches ``target``: doubled until it does, then bisected."""
    high = scale
    while power_at(high) < target:
        high *= 2
        if high > 1e6 * scale:
            return float("nan")
    low = 0.0
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if power_at(middle) < target else (low, middle)
    return high


def detectable_effect(components: dict[str, float], prompts: int, words: int, alpha: float = ALPHA,
                      power: float = POWER, simulations: int = SIMULATIONS, seed: int = 0) -> dict[str, Any]:
    """The smallest DoD (logits, and in SDs of a word value) the by-word test detects with ``power`` at ``alpha`` in a
    design of ``prompts`` × 4 cells × ``words``, by simulation, with the analytic figure beside it."""
    sd = float(np.sqrt(word_value_variance(components, prompts)))
    record = {"prompts": prompts, "words_per_cell": words, "alpha": alpha, "power": power, "simulations": simulations,
              "seed": seed, "word_value_sd": sd, "test": "by-word interaction F, df (1, 4W − 4)"}
    if not np.isfinite(sd) or sd == 0:
        return {**record, "logits": float("nan"), "in_word_sds": float("nan"), "analytic_logits": float("nan")}
    contrasts, errors = null_draws(components, prompts, words, simulations, seed)
    simulated = _smallest(lambda dod: simulated_power(dod, contrasts, errors, words, alpha), power, sd)
    analytic = optimize.brentq(lambda dod: analytic_power(dod, components, prompts, words, alpha) - power, 0.0,
                               100 * sd)
    return {**record, "logits": simulated, "in_word_sds": simulated / sd, "analytic_logits": float(analytic)}

