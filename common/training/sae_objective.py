"""A TopK SAE's objective and evaluation on a fixed set of rows, and the one SAE training recipe that stage 1 (LM
activations) and stage 3 (the NFM's interaction vectors) share (METHOD §1, §3)."""
from __future__ import annotations

import torch
from torch import Tensor

from common.data.activations import NormStats
from common.models.sae import TopKSAE
from common.runtime.context import Runtime
from common.training.metrics import ReconstructionMetrics

FINAL_KEYS = ("variance_explained", "mse", "fvu", "l0", "dead_fraction")


def sae_metrics(sae: TopKSAE, rows: Tensor, norm: NormStats, rt: Runtime, batch_size: int,
                dead_threshold: float = 1e-6, k: int | None = None,
                rows_per_window: int | None = None) -> ReconstructionMetrics:
    """The SAE's reconstruction of every row, accumulated (per window too, given ``rows_per_window``)."""
    metrics = ReconstructionMetrics(sae.num_features, dead_threshold, rows_per_window)
    norm = norm.to(rt.device)
    dtype = sae.W_dec.dtype
    with torch.no_grad():
        for start in range(0, rows.shape[0], batch_size):
            x = norm.normalize(rows[start : start + batch_size].to(rt.device))
            out = sae(x.to(dtype), k=k, decode=rt.decode)
            metrics.update(x, out.recon.float(), out.top_acts, out.top_indices)
    return metrics


def evaluate_sae(sae: TopKSAE, rows: Tensor, norm: NormStats, rt: Runtime, batch_size: int,
                 dead_threshold: float = 1e-6, k: int | None = None) -> dict[str, float]:
    """Whole-set metrics in normalized units: mse, variance_explained, fvu, l0, dead_fraction."""
    result = sae_metrics(sae, rows, norm, rt, batch_size, dead_threshold, k).compute()
    result["loss"] = result["mse"]
    return result
