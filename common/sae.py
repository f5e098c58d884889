"""The TopK sparse autoencoder (SPEC §1) with a gather decode for the CPU and a dense decode for CUDA (SPEC §9)."""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.errors import UserError


class SAEOutput(NamedTuple):
    recon: Tensor  # (B, d)
    top_acts: Tensor  # (B, K), post-ReLU, sorted descending
    top_indices: Tensor  # (B, K) int64


def check_sae_shape(d_model: int, num_features: int, k: int) -> None:
    """K must fit the dictionary: a TopK over fewer features than K is meaningless."""
    if num_features < 1 or d_model < 1:
        raise UserError(f"SAE needs a positive width and dictionary size (got d={d_model}, F={num_features})")
    if not 1 <= k <= num_features:
        raise UserError(f"K={k} must be between 1 and the number of features F={num_features}")


def sparse_decode(top_acts: Tensor, top_indices: Tensor, rows: Tensor) -> Tensor:
    """``Σ_i acts_i · rows[idx_i]`` by embedding-bag, in the weights' dtype.

    Autocast is switched off because CUDA has no bf16 backward for ``embedding_bag`` with per-sample weights.
    """
    with torch.autocast(device_type=rows.device.type, enabled=False):
        return F.embedding_bag(top_indices, rows, per_sample_weights=top_acts.to(rows.dtype), mode="sum")


def scatter_codes(top_acts: Tensor, top_indices: Tensor, num_features: int) -> Tensor:
    """The dense (B, F) code matrix that the sparse codes stand for."""
    latent_acts = top_acts.new_zeros(top_acts.shape[0], num_features)
    return latent_acts.scatter_(1, top_indices, top_acts)


class TopKSAE(nn.Module):
    """``encoder = Linear(d, F) + ReLU``, keep the top K per row, ``decoder = Linear(F, d, bias=False)``.

    ``W_dec`` is stored (F, d), rows = features, so a gather reads contiguous rows. Tied (the default, as the
    original's shared storage made it) means the encoder weight *is* ``W_dec``: one parameter, one Adam update.
    """

    def __init__(self, d_model: int, num_features: int, k: int, tied: bool = True) -> None:
        super().__init__()
        check_sae_shape(d_model, num_features, k)
        self.d_model, self.num_features, self.k, self.tied = d_model, num_features, k, tied
        # PyTorch's default init of a Linear(F, d) weight (d, F), transposed into our (F, d) layout.
        decoder_weight = torch.empty(d_model, num_features)
        nn.init.kaiming_uniform_(decoder_weight, a=math.sqrt(5))
        self.W_dec = nn.Parameter(decoder_weight.t().contiguous())
        self.b_enc = nn.Parameter(torch.zeros(num_features))
        self.W_enc = None if tied else nn.Parameter(self.W_dec.detach().clone())

    @property
    def encoder_weight(self) -> Tensor:
        return self.W_dec if self.W_enc is None else self.W_enc

    def encode(self, x: Tensor, k: int | None = None) -> tuple[Tensor, Tensor]:
        """Top-k of ReLU(x W_encᵀ + b); ``k`` below the trained K is the inference-time K of stage 2."""
        k = self.k if k is None else k
        check_sae_shape(self.d_model, self.num_features, k)
        pre_acts = F.relu(F.linear(x, self.encoder_weight, self.b_enc))  # (B, F)
        top_acts, top_indices = pre_acts.topk(k, dim=-1, sorted=True)
        return top_acts, top_indices

    def decode(self, top_acts: Tensor, top_indices: Tensor, mode: str = "sparse") -> Tensor:
        if mode == "sparse":
            return sparse_decode(top_acts, top_indices, self.W_dec)
        return scatter_codes(top_acts, top_indices, self.num_features) @ self.W_dec

    def forward(self, x: Tensor, k: int | None = None, decode: str = "sparse") -> SAEOutput:
        top_acts, top_indices = self.encode(x, k)
        return SAEOutput(self.decode(top_acts, top_indices, decode), top_acts, top_indices)


def sae_reference(sae: TopKSAE, x: Tensor, k: int | None = None) -> Tensor:
    """Plain dense fp32 reconstruction that every fast path is tested against."""
    k = sae.k if k is None else k
    pre_acts = torch.relu(x.float() @ sae.encoder_weight.float().t() + sae.b_enc.float())
    kth_value = pre_acts.topk(k, dim=-1).values[:, -1:]
    latent_acts = torch.where(pre_acts >= kth_value, pre_acts, torch.zeros_like(pre_acts))
    return latent_acts @ sae.W_dec.float()
