"""What SAEBench's core metrics need from a stage's held-out evaluation that ``metrics.json`` does not hold (METHOD
§15): reconstruction quality, shrinkage and L1 of a reconstruction in the LM's own (raw) units, and the mean over
features of the largest cosine to another feature's encoder and decoder direction.

SAEBench compares the unscaled hook activation with the unscaled reconstruction, so the terms are taken after
de-normalizing (our models work on z-scored rows). Explained variance is the conventional one, about the mean and as
a ratio of sums (SAELens's fix of the version that measured it against zero); the per-token "legacy" one is kept
beside it, over batches of ``LEGACY_BATCH_ROWS`` rows (SAEBench's 16 prompts × 128 tokens)."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from common.data.activations import NormStats
from common.models.codes import select_top_n
from common.models.joint import JointSAENFM
from common.models.nfm import NFM
from common.models.sae import TopKSAE

LEGACY_BATCH_ROWS = 2048
SMALL_NORM = 1e-4  # SAEBench's l2_ratio counts a row whose input norm is below this as norm 1
COSINE_BLOCK = 4096  # features per block of the Gram matrix (memory: block × F floats)
Reconstruct = Callable[[Tensor], tuple[Tensor, Tensor]]  # z-scored rows (n, d) -> (reconstruction (n, d), codes (n, K))


class CoreTerms:
    """Streams (x, x̂, codes) in raw units; every sum in float64."""

    def __init__(self) -> None:
        self.rows = 0
        self.sum_x: Tensor | None = None
        self.totals = torch.zeros(9, dtype=torch.float64)  # see ``update``
        self.legacy: list[Tensor] = []

    def update(self, x: Tensor, recon: Tensor, codes: Tensor) -> None:
        x, recon, codes = x.double().cpu(), recon.double().cpu(), codes.double().cpu()
        error = (x - recon).square().sum(-1)
        norm_in, norm_out = x.norm(dim=-1), recon.norm(dim=-1)
        safe_in = torch.where(norm_in < SMALL_NORM, torch.ones_like(norm_in), norm_in)
        cosine = (x * recon).sum(-1) / (norm_in * norm_out).clamp_min(1e-300)
        self.totals += torch.stack([x.square().sum(), error.sum(), norm_in.sum(), norm_out.sum(),
                                    (norm_out / safe_in).sum(), cosine.sum(), recon.square().sum(),
                                    (x * recon).sum(), codes.abs().sum()])
        self.sum_x = x.sum(0) if self.sum_x is None else self.sum_x + x.sum(0)
        self.legacy.append(1 - error / (x - x.mean(0)).square().sum(-1))
        self.rows += x.shape[0]

    def compute(self) -> dict[str, float]:
        if self.rows == 0 or self.sum_x is None:
            raise ValueError("no rows were evaluated")
        n = self.rows
        sum_x2, sum_error, norm_in, norm_out, ratio, cosine, sum_recon2, sum_dot, l1 = self.totals.tolist()
        total_variance = sum_x2 / n - float((self.sum_x / n).square().sum())
        return {
            "explained_variance": 1 - (sum_error / n) / total_variance,
            "explained_variance_legacy": float(torch.cat(self.legacy).mean()),
            "mse": sum_error / n,
            "cossim": cosine / n,
            "l2_norm_in": norm_in / n,
            "l2_norm_out": norm_out / n,
            "l2_ratio": ratio / n,
            "relative_reconstruction_bias": sum_recon2 / sum_dot,
            "l1": l1 / n,
            "rows": n,
        }


def core_terms(rows: Tensor, norm: NormStats, reconstruct: Reconstruct, device: torch.device) -> dict[str, float]:
    """The terms of a model's reconstruction of raw rows (n, d): z-scored in, de-normalized out, sums in float64 (the
    caller sets any autocast, as for the stage's own evaluation)."""
    terms = CoreTerms()
    norm = norm.to(device)
    with torch.no_grad():
        for start in range(0, rows.shape[0], LEGACY_BATCH_ROWS):
            raw = rows[start : start + LEGACY_BATCH_ROWS].to(device).float()
            recon, codes = reconstruct(norm.normalize(raw))
            terms.update(raw, norm.denormalize(recon.float()), codes)
    return {**terms.compute(), "units": "the model input's own (de-normalized)"}


def sae_terms(sae: TopKSAE, rows: Tensor, norm: NormStats, decode: str, k: int | None = None) -> dict[str, float]:
    """The SAE alone at ``k`` (default its trained K), with its features' largest cosines."""

    def reconstruct(x: Tensor) -> tuple[Tensor, Tensor]:
        out = sae(x.to(sae.W_dec.dtype), k=k, decode=decode)
        return out.recon, out.top_acts

    return {**core_terms(rows, norm, reconstruct, sae.W_dec.device), "k": k or sae.k, **sae_cosines(sae)}


def sae_nfm_terms(sae: TopKSAE, nfm: NFM, rows: Tensor, norm: NormStats, k: int, top_n: int,
                  decode: str) -> dict[str, float]:
    """The SAE at inference K plus the NFM fed its top-N codes (stage 2's model); sparsity is the SAE's."""

    def reconstruct(x: Tensor) -> tuple[Tensor, Tensor]:
        out = sae(x.to(sae.W_dec.dtype), k=k, decode=decode)
        prediction = nfm(*select_top_n(out.top_acts.float(), out.top_indices, top_n), decode=decode).total
        return out.recon.float() + prediction.float(), out.top_acts

    return {**core_terms(rows, norm, reconstruct, sae.W_dec.device), "k": k, "top_n": top_n, **sae_cosines(sae)}


def joint_terms(joint: JointSAENFM, rows: Tensor, norm: NormStats, decode: str) -> dict[str, float]:
    """The whole joint model (its SAE path plus both NFM paths); sparsity is its SAE part's."""

    def reconstruct(x: Tensor) -> tuple[Tensor, Tensor]:
        out = joint(x.to(joint.sae.W_dec.dtype), decode=decode)
        return out.recon, out.top_acts

    return {**core_terms(rows, norm, reconstruct, joint.sae.W_dec.device), "k": joint.sae.k, **sae_cosines(joint.sae)}


def sae_cosines(sae: TopKSAE) -> dict[str, float]:
    return {"average_max_encoder_cosine_sim": average_max_cosine(sae.encoder_weight),
            "average_max_decoder_cosine_sim": average_max_cosine(sae.W_dec)}


def average_max_cosine(directions: Tensor) -> float:
    """Mean over rows i of max_{j≠i} cos(row i, row j) of an (F, d) matrix, by blocks of the Gram matrix."""
    with torch.no_grad():
        unit = torch.nn.functional.normalize(directions.detach().float(), dim=-1)
        best = []
        for start in range(0, unit.shape[0], COSINE_BLOCK):
            gram = unit[start : start + COSINE_BLOCK] @ unit.T  # (block, F)
            rows = torch.arange(gram.shape[0], device=gram.device)
            gram[rows, rows + start] = -float("inf")
            best.append(gram.max(-1).values)
        return float(torch.cat(best).double().mean())
