"""Reconstruction metrics accumulated over a whole evaluation set (never averaged per batch: METHOD §1)."""
from __future__ import annotations

import torch
from torch import Tensor

# Evaluation batches (SAE codes, whole-set metrics): rows are independent there, so only speed depends on it.
EVAL_BATCH_ROWS = 1024


class ReconstructionMetrics:
    """Streams (x, x̂) batches and returns MSE, variance explained (the original's), FVU (Gao et al.) and L0/dead.

    Per-dimension sums are kept in float64 so the whole-set variances are exact up to rounding.
    """

    def __init__(self, num_features: int | None = None, dead_threshold: float = 1e-6) -> None:
        self.num_features, self.dead_threshold = num_features, dead_threshold
        self.rows = 0
        self.sum_x = self.sum_x2 = self.sum_err = self.sum_err2 = None
        self.active_count = 0.0
        self.ever_active = None if num_features is None else torch.zeros(num_features, dtype=torch.bool)

    def update(self, x: Tensor, recon: Tensor, top_acts: Tensor | None = None,
               top_indices: Tensor | None = None) -> None:
        x, err = x.double(), (x - recon).double()
        sums = (x.sum(0), (x * x).sum(0), err.sum(0), (err * err).sum(0))
        if self.sum_x is None:
            self.sum_x, self.sum_x2, self.sum_err, self.sum_err2 = sums
        else:
            for acc, s in zip((self.sum_x, self.sum_x2, self.sum_err, self.sum_err2), sums):
                acc += s
        self.rows += x.shape[0]
        if top_acts is not None and top_indices is not None:
            active = top_acts > self.dead_threshold
            self.active_count += float(active.sum())
            if self.ever_active is not None:
                fired = top_indices[active].unique().cpu()
                self.ever_active[fired] = True

    def compute(self) -> dict[str, float]:
        if self.rows == 0:
            raise ValueError("no rows were evaluated")
        n = self.rows
        mean_x, mean_err = self.sum_x / n, self.sum_err / n
        var_x = self.sum_x2 / n - mean_x**2  # per dimension
        var_err = self.sum_err2 / n - mean_err**2  # Var(e) with e = (x - mean x) - (x̂ - mean x̂)
        out = {
            "mse": float(self.sum_err2.sum() / (n * mean_x.numel())),
            "variance_explained": float(1 - var_err.sum() / var_x.sum()),
            # Gao et al.'s normalized MSE: error against the mean predictor's error.
            "fvu": float(self.sum_err2.sum() / (n * var_x.sum())),
            "rows": n,
        }
        if self.active_count:
            out["l0"] = self.active_count / n
        if self.ever_active is not None:
            out["dead_fraction"] = float(1 - self.ever_active.float().mean())
        return out
