"""Per-row squared errors of the models on held-out rows, summed per held-out window: what the controls' figures and
their confidence intervals (``common.training.window_cis``, METHOD §14, §13) are computed from.

A held-out set is the rows of consecutive whole windows (``ActivationStream.val_rows``), so the window of row ``r`` is
``r // rows_per_window``. Each control's figure is a ratio of sums over the same rows, so a window's sums are all its
bootstrap needs.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from common.data.activations import NormStats
from common.models.joint import JointSAENFM
from common.models.nfm import NFM
from common.models.sae import TopKSAE
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
