"""Reconstruction metrics accumulated over a whole evaluation set (never averaged per batch: METHOD §1), with the
per-window sums their confidence intervals resample (METHOD §13) and each feature's firing count."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

# Evaluation batches (SAE codes, whole-set metrics): rows are independent there, so only speed depends on it.
EVAL_BATCH_ROWS = 1024


class WindowSums:
    """Per-window, per-dimension sums of a stream of row batches whose rows come window after window, each window
    ``rows_per_window`` rows (the held-out rows of ``ActivationStream.val_rows``, in order)."""

    def __init__(self, rows_per_window: int) -> None:
        if rows_per_window < 1:
            raise ValueError(f"rows_per_window must be at least 1, got {rows_per_window}")
        self.rows_per_window = rows_per_window
        self.rows = 0
        self.sums: Tensor | None = None  # (W, columns, d) float64, grown as windows arrive

    def add(self, columns: list[Tensor]) -> None:
        """``columns``: (n, d) tensors of the batch's next n rows (e.g. x, x², e, e²), summed within each window."""
        n = columns[0].shape[0]
        window = (self.rows + torch.arange(n, device=columns[0].device)) // self.rows_per_window
        stacked = torch.stack([c.double() for c in columns], dim=1)  # (n, columns, d)
        needed = int(window[-1]) + 1 if n else 0
        if self.sums is None:
            self.sums = torch.zeros(0, *stacked.shape[1:], dtype=torch.float64, device=stacked.device)
        if needed > self.sums.shape[0]:
            grow = torch.zeros(needed - self.sums.shape[0], *stacked.shape[1:], dtype=torch.float64,
                               device=stacked.device)
            self.sums = torch.cat([self.sums, grow])
        self.sums.index_add_(0, window, stacked)
        self.rows += n

    def rows_per(self) -> np.ndarray:
        """(W,) rows in each window (the last one may be short)."""
        counts = np.full(self.sums.shape[0], self.rows_per_window, dtype=np.float64)
        counts[-1] = self.rows - self.rows_per_window * (len(counts) - 1)
        return counts


class ReconstructionMetrics:
    """Streams (x, x̂) batches and returns MSE, variance explained (the original's), FVU (Gao et al.) and L0/dead.

    Per-dimension sums are kept in float64 so the whole-set variances are exact up to rounding. With
    ``rows_per_window`` the same sums are also kept per window, so ``per_window`` gives each window's parts of the
    whole-set figures (their sums over windows are the whole-set numerators and denominators). With ``num_features``
    every feature's firing count (rows where its code is above ``dead_threshold``) is kept too.
    """

    def __init__(self, num_features: int | None = None, dead_threshold: float = 1e-6,
                 rows_per_window: int | None = None) -> None:
        self.num_features, self.dead_threshold = num_features, dead_threshold
        self.rows = 0
        self.sum_x = self.sum_x2 = self.sum_err = self.sum_err2 = None
        self.active_count = 0.0
        self.firing = None if num_features is None else torch.zeros(num_features, dtype=torch.int64)
        self.windows = None if rows_per_window is None else WindowSums(rows_per_window)

    def update(self, x: Tensor, recon: Tensor, top_acts: Tensor | None = None,
               top_indices: Tensor | None = None) -> None:
        x, err = x.double(), (x - recon).double()
        columns = [x, x * x, err, err * err]
        sums = tuple(c.sum(0) for c in columns)
        if self.sum_x is None:
            self.sum_x, self.sum_x2, self.sum_err, self.sum_err2 = sums
        else:
            for acc, s in zip((self.sum_x, self.sum_x2, self.sum_err, self.sum_err2), sums):
                acc += s
        if self.windows is not None:
            self.windows.add(columns)
        self.rows += x.shape[0]
        if top_acts is not None and top_indices is not None:
            active = top_acts > self.dead_threshold
            self.active_count += float(active.sum())
            if self.firing is not None:
                # TopK codes are distinct within a row, so a feature's count is its number of rows
                self.firing += torch.bincount(top_indices[active].cpu(), minlength=self.num_features)

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
        if self.firing is not None:
            out["dead_fraction"] = float((self.firing == 0).double().mean())
        return out

    def per_window(self) -> dict[str, list[float]]:
        """Each window's parts of the whole-set figures: ``rows``; ``sse`` = Σ‖x − x̂‖²; ``sst`` = Σ‖x − mean x‖²
        and ``sse_centred`` = Σ‖e − mean e‖², both about the whole set's means (so Σ sse_centred / Σ sst is
        1 − variance explained exactly, and Σ sse / Σ sst the FVU). The means are held fixed when windows are
        resampled: they are estimated from every row, and their own variance is of order 1/rows."""
        sums = self.windows.sums
        counts = torch.as_tensor(self.windows.rows_per(), dtype=torch.float64, device=sums.device)
        mean_x, mean_err = self.sum_x / self.rows, self.sum_err / self.rows

        def centred(first: int, mean: Tensor) -> Tensor:  # Σ_rows Σ_d (v − mean)² from Σv and Σv² per window
            return (sums[:, first + 1] - 2 * mean * sums[:, first] + counts[:, None] * mean**2).sum(1)

        return {"rows": counts.tolist(), "sse": sums[:, 3].sum(1).tolist(), "sst": centred(0, mean_x).tolist(),
                "sse_centred": centred(2, mean_err).tolist()}
