"""The NFM on a TopK SAE's residual (METHOD §2): the codes and residual it is fed, its loss and its evaluation.

Stage 2 trains on these; stage 3 feeds the NFM the same codes to collect its interaction vectors.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from common.data.activations import NormStats
from common.models.codes import select_top_n
from common.models.nfm import NFM
from common.models.sae import TopKSAE
from common.training.metrics import WindowSums


class SAECodes(NamedTuple):
    """What the NFM sees for a set of rows, all on the SAE's device."""

    top_acts: Tensor  # (n, N) fp32, the top N of the SAE's inference-K codes
    top_indices: Tensor  # (n, N) int64
    residual: Tensor  # (n, d) fp32, x - SAE_K(x) in normalized units


def sae_codes(sae: TopKSAE, rows: Tensor, norm: NormStats, k: int, top_n: int, decode: str,
              batch_size: int) -> SAECodes:
    """Run the SAE at inference K on raw LM rows (n, d) and keep the top N codes.

    Always in fp32 and eval mode, whatever the training regime: the codes and the residual are the NFM's fixed data,
    so they are computed once, exactly. The residual is against the reconstruction from all K codes.
    """
    device = sae.W_dec.device
    norm = norm.to(device)
    parts: list[tuple[Tensor, Tensor, Tensor]] = []
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        for start in range(0, rows.shape[0], batch_size):
            x = norm.normalize(rows[start : start + batch_size].to(device))
            out = sae(x.to(sae.W_dec.dtype), k=k, decode=decode)
            top_acts, top_indices = select_top_n(out.top_acts.float(), out.top_indices, top_n)
            parts.append((top_acts, top_indices, x - out.recon.float()))
    return SAECodes(*(torch.cat(tensors) for tensors in zip(*parts)))


def subset(codes: SAECodes, rows: Tensor) -> SAECodes:
    return SAECodes(*(t[rows.to(t.device)] for t in codes))


def concat(parts: list[SAECodes]) -> SAECodes:
    return SAECodes(*(torch.cat(tensors) for tensors in zip(*parts)))


def nfm_loss(nfm: NFM, batch: tuple[Tensor, ...], decode: str) -> tuple[Tensor, dict[str, Tensor]]:
    """MSE of the NFM's prediction of the residual, the only training signal (METHOD §2)."""
    top_acts, top_indices, residual = batch
    prediction = nfm(top_acts, top_indices, decode=decode).total
    return F.mse_loss(prediction.float(), residual), {}


def evaluate_nfm(nfm: NFM, codes: SAECodes, decode: str, batch_size: int,
                 rows_per_window: int | None = None) -> dict[str, Any]:
    """Whole-set figures: residual MSE before and after, error reduction, and the two components' magnitudes.

    ``mean_abs_*`` are the mean |output| of each pathway over every row and dimension; the shares are each over their
    sum (the paper's 95.5% / 4.5%). Sums run in float64. The caller sets eval mode and any autocast. With
    ``rows_per_window`` (the rows come window after window) ``per_window`` holds each window's ``rows`` and its
    squared residual ``sse_before`` and ``sse_after`` (METHOD §13).
    """
    totals = torch.zeros(4, dtype=torch.float64, device=codes.residual.device)  # before, after, |linear|, |interaction|
    windows = None if rows_per_window is None else WindowSums(rows_per_window)
    with torch.no_grad():
        for start in range(0, codes.residual.shape[0], batch_size):
            top_acts, top_indices, residual = (t[start : start + batch_size] for t in codes)
            out = nfm(top_acts, top_indices, decode=decode)
            before = residual.double().square().sum(1, keepdim=True)
            after = (residual - out.total.float()).double().square().sum(1, keepdim=True)
            totals += torch.stack([before.sum(), after.sum(), out.linear.double().abs().sum(),
                                   out.interaction.double().abs().sum()])
            if windows is not None:
                windows.add([before, after])
    before, after, linear, interaction = (totals / codes.residual.numel()).tolist()
    figures: dict[str, Any] = {
        "loss": after,
        "residual_mse_before": before,
        "residual_mse_after": after,
        "error_reduction": 1.0 - after / before,
        "mean_abs_linear": linear,
        "mean_abs_interaction": interaction,
        "linear_share": linear / (linear + interaction),
        "interaction_share": interaction / (linear + interaction),
    }
    if windows is not None:
        figures["per_window"] = {"rows": windows.rows_per().tolist(), "sse_before": windows.sums[:, 0, 0].tolist(),
                                 "sse_after": windows.sums[:, 1, 0].tolist()}
    return figures


def interaction_vectors(nfm: NFM, sae: TopKSAE, rows: Tensor, norm: NormStats, sae_k: int, top_n: int, decode: str,
                        batch_size: int) -> Tensor:
    """(n, k) fp32 NFM interaction vectors ``Linear1(h)`` before the ReLU of raw LM rows, the SAE fed exactly as in
    stage 2 (its inference K and top-N): the secondary SAE's input (METHOD §3)."""
    codes = sae_codes(sae, rows, norm, sae_k, top_n, decode, batch_size)
    with torch.no_grad(), torch.autocast(codes.top_acts.device.type, enabled=False):
        vectors = [nfm.interaction_hidden(codes.top_acts[start : start + batch_size],
                                          codes.top_indices[start : start + batch_size], decode)
                   for start in range(0, codes.top_acts.shape[0], batch_size)]
    return torch.cat(vectors).float().cpu()
