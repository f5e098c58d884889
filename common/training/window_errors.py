"""Per-row squared errors of the models on held-out rows, summed per held-out window, and the controls' figures with
their confidence intervals from a paired bootstrap over those windows (METHOD §14, §13).

A held-out set is the rows of consecutive whole windows (``ActivationStream.val_rows``), so the window of row ``r`` is
``r // rows_per_window``. Every figure here is a ratio of sums over the same rows, so a window's sums are all the
bootstrap needs, and two models' errors on the same windows are resampled together.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from common.data.activations import NormStats
from common.models.joint import JointSAENFM
from common.models.nfm import NFM
from common.models.sae import TopKSAE
from common.stats import window_bootstrap
from common.training.nfm_objective import SAECodes


def window_sums(per_row: Tensor | np.ndarray, rows_per_window: int) -> np.ndarray:
    """(n,) per-row values → (n / rows_per_window,) float64 sums, one per window, in order."""
    values = np.asarray(per_row.cpu() if isinstance(per_row, Tensor) else per_row, dtype=np.float64).ravel()
    if rows_per_window < 1 or values.size % rows_per_window:
        raise ValueError(f"{values.size} rows are not whole windows of {rows_per_window} rows")
    return values.reshape(-1, rows_per_window).sum(axis=1)


def row_sse(target: Tensor, prediction: Tensor) -> Tensor:
    """Σ over dimensions of the squared error, per row, float64."""
    return (target.double() - prediction.double()).square().sum(dim=-1)


def sae_row_errors(sae: TopKSAE, rows: Tensor, norm: NormStats, decode: str, batch_size: int) -> Tensor:
    """(n,) squared error of the SAE's reconstruction of raw LM rows, in normalized units."""
    device, norm = sae.W_dec.device, norm.to(sae.W_dec.device)
    parts = []
    with torch.no_grad():
        for start in range(0, rows.shape[0], batch_size):
            x = norm.normalize(rows[start : start + batch_size].to(device))
            parts.append(row_sse(x, sae(x.to(sae.W_dec.dtype), decode=decode).recon).cpu())
    return torch.cat(parts)


def joint_row_errors(joint: JointSAENFM, rows: Tensor, norm: NormStats, decode: str,
                     batch_size: int) -> dict[str, Tensor]:
    """(n,) squared errors of the joint model's full reconstruction, of its SAE path alone and of SAE + linear."""
    device, norm = joint.sae.W_dec.device, norm.to(joint.sae.W_dec.device)
    parts: dict[str, list[Tensor]] = {"full": [], "sae_part": [], "sae_plus_linear": []}
    with torch.no_grad():
        for start in range(0, rows.shape[0], batch_size):
            x = norm.normalize(rows[start : start + batch_size].to(device))
            out = joint(x.to(joint.sae.W_dec.dtype), decode=decode)
            sae_recon = out.sae_recon.float()
            for name, recon in (("full", out.recon), ("sae_part", sae_recon),
                                ("sae_plus_linear", sae_recon + out.linear.float())):
                parts[name].append(row_sse(x, recon).cpu())
    return {name: torch.cat(values) for name, values in parts.items()}


def nfm_row_errors(nfm: NFM, codes: SAECodes, decode: str, batch_size: int) -> dict[str, Tensor]:
    """(n,) squared errors of the NFM's target: ``before`` (the target itself), ``after`` (minus the NFM's output) and
    ``linear_only`` (minus its linear pathway alone)."""
    parts: dict[str, list[Tensor]] = {"before": [], "after": [], "linear_only": []}
    with torch.no_grad():
        for start in range(0, codes.residual.shape[0], batch_size):
            top_acts, top_indices, target = (t[start : start + batch_size] for t in codes)
            out = nfm(top_acts, top_indices, decode=decode)
            parts["before"].append(row_sse(target, torch.zeros_like(target)).cpu())
            parts["after"].append(row_sse(target, out.total.float()).cpu())
            parts["linear_only"].append(row_sse(target, out.linear.float()).cpu())
    return {name: torch.cat(values) for name, values in parts.items()}


# ---- the figures, each with its CI over windows -----------------------------------------------------------------


def _gain_difference(after_a: np.ndarray, after_b: np.ndarray, before: np.ndarray, axis: int = -1) -> np.ndarray:
    """(Σ after_b − Σ after_a) / Σ before: how much more of ``before`` model a removes than model b."""
    return (np.sum(after_b, axis=axis) - np.sum(after_a, axis=axis)) / np.sum(before, axis=axis)


def gain_difference_ci(after_a: np.ndarray, after_b: np.ndarray, before: np.ndarray, level: float = 0.95,
                       seed: int = 0) -> dict[str, Any]:
    """reduction(a) − reduction(b) of the same ``before`` on the same windows, with its CI."""
    return window_bootstrap((after_a, after_b, before), _gain_difference, level=level, seed=seed)


def mse_ci(sums: np.ndarray, values_per_window: int, level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """The mean squared error (per value) from per-window sums of squared errors, with its CI."""
    return window_bootstrap((sums,), lambda s, axis=-1: np.mean(s, axis=axis) / values_per_window, level=level,
                            seed=seed)


def excludes_zero_above(ci: dict[str, Any]) -> bool:
    return ci["low"] > 0


def contains_zero(ci: dict[str, Any]) -> bool:
    return ci["low"] <= 0 <= ci["high"]
