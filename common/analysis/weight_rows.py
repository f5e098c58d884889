"""Statistics of the NFM's weight rows (part4, METHOD §10): how unequal each embedding row is (Gini, entropy
effective rank), and what an untrained row gives."""
from __future__ import annotations

import numpy as np
from scipy import stats

L0_THRESHOLD = 1e-8  # an entry above this magnitude counts toward a row's L0

def gini(rows: np.ndarray) -> np.ndarray:
    """Gini coefficient of |w| per row of ``rows`` (n, k): Σᵢ (2i − k − 1)·xᵢ / (k·Σx) over the ascending |w|.
    A one-hot row gives (k − 1)/k, a constant row 0, an all-zero row NaN."""
    x = np.sort(np.abs(np.atleast_2d(np.asarray(rows, dtype=np.float64))), axis=1)
    k = x.shape[1]
    weights = 2.0 * np.arange(1, k + 1) - k - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        return (x @ weights) / (k * x.sum(axis=1))


def row_statistics(rows: np.ndarray) -> dict[str, np.ndarray]:
    """Per-row sparsity statistics of a weight matrix ``rows`` (n, k), one row per feature (part4).

    Returns arrays ``l0`` (count of |w| > 1e-8), ``l1``, ``l2``, ``max_abs``, ``std`` (ddof = 1), ``gini`` (of
    |w|, see ``gini``) and ``effective_rank``: the entropy effective rank exp(H(p)), p = |w| / Σ|w|, H the
    Shannon entropy in nats (``scipy.stats.entropy``, 0·log 0 = 0). It is k for a uniform |w| and 1 for a
    one-hot row: the number of equally used entries that would give the same entropy. All-zero rows give NaN.
    """
    w = np.atleast_2d(np.asarray(rows, dtype=np.float64))
    magnitude = np.abs(w)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = stats.entropy(magnitude, axis=1)
    return {
        "l0": np.count_nonzero(magnitude > L0_THRESHOLD, axis=1),
        "l1": magnitude.sum(axis=1),
        "l2": np.linalg.norm(w, axis=1),
        "max_abs": magnitude.max(axis=1),
        "std": w.std(axis=1, ddof=1),
        "gini": gini(w),
        "effective_rank": np.exp(entropy),
    }


def untrained_gini_reference(k: int, n_rows: int = 1000, seed: int = 0) -> dict:
    """Gini of rows of k values drawn |N(0, 1)|, the reference for an untrained embedding row (the scale σ
    cancels). The half-normal's population Gini is √2 − 1 ≈ 0.414, so a trained row at 0.49 is only mildly
    unequal. Returns ``mean``, ``std`` (over the rows), ``k``, ``n_rows``, ``seed`` and ``asymptotic``."""
    rows = np.abs(np.random.default_rng(seed).standard_normal((n_rows, k)))
    g = gini(rows)
    return {"mean": float(g.mean()), "std": float(g.std(ddof=1)), "k": k, "n_rows": n_rows, "seed": seed,
            "asymptotic": float(np.sqrt(2.0) - 1.0)}
