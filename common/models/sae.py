"""The TopK sparse autoencoder (METHOD §1) with a gather decode for the CPU and a dense decode for CUDA (METHOD §9)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.errors import UserError
from common.models.codes import keep_top_n_dense, scatter_codes, weighted_row_sum
from common.models.saves_itself import SavesItself


@dataclass(frozen=True)
class SAEShape:
    """What a TopK SAE is, apart from its weights (saved under ``model`` in its ``config.json``)."""

    d_model: int
    num_features: int
    k: int
    tied: bool = True
    # SAELens' and sparsify's b_dec: subtracted from the input before the encoder, added to the reconstruction. Only
    # imported SAEs have one; ours are z-scored instead, so they carry no such tensor and their files stay as they were.
    decoder_bias: bool = False


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


class TopKSAE(SavesItself, nn.Module):
    """``encoder = Linear(d, F) + ReLU``, keep the top K per row, ``decoder = Linear(F, d, bias=False)``.

    ``W_dec`` is stored (F, d), rows = features, so a gather reads contiguous rows. Tied (the default, as the
    original's shared storage made it) means the encoder weight *is* ``W_dec``: one parameter, one Adam update.
    With ``decoder_bias`` (imported SAEs) the input is centred on ``b_dec`` before the encoder and ``b_dec`` is added
    back to the reconstruction, as SAELens (``apply_b_dec_to_input``) and sparsify do.
    """

    Shape = SAEShape

    def __init__(self, d_model: int, num_features: int, k: int, tied: bool = True, decoder_bias: bool = False) -> None:
        super().__init__()
        check_sae_shape(d_model, num_features, k)
        self.d_model, self.num_features, self.k, self.tied = d_model, num_features, k, tied
        self.decoder_bias = decoder_bias
        # PyTorch's default init of a Linear(F, d) weight (d, F), transposed into our (F, d) layout.
        decoder_weight = torch.empty(d_model, num_features)
        nn.init.kaiming_uniform_(decoder_weight, a=math.sqrt(5))
        self.W_dec = nn.Parameter(decoder_weight.t().contiguous())
        self.b_enc = nn.Parameter(torch.zeros(num_features))
        self.W_enc = None if tied else nn.Parameter(self.W_dec.detach().clone())
        self.b_dec = nn.Parameter(torch.zeros(d_model)) if decoder_bias else None

    @property
    def shape(self) -> SAEShape:
        return SAEShape(self.d_model, self.num_features, self.k, self.tied, self.decoder_bias)

    @classmethod
    def from_shape(cls, shape: SAEShape) -> TopKSAE:
        return cls(shape.d_model, shape.num_features, shape.k, shape.tied, shape.decoder_bias)

    def record(self) -> dict[str, Any]:
        record = super().record()
        if not self.decoder_bias:  # our own SAEs' config.json stays as every earlier version wrote it
            del record["decoder_bias"]
        return record

    def center(self, x: Tensor) -> Tensor:
        """The encoder's input: ``x − b_dec`` (``x`` itself without a decoder bias)."""
        return x if self.b_dec is None else x - self.b_dec.to(x.dtype)

    def _add_bias(self, recon: Tensor) -> Tensor:
        return recon if self.b_dec is None else recon + self.b_dec.to(recon.dtype)

    @property
    def encoder_weight(self) -> Tensor:
        return self.W_dec if self.W_enc is None else self.W_enc

    def encode(self, x: Tensor, k: int | None = None) -> tuple[Tensor, Tensor]:
        """Top-k of ReLU(x W_encᵀ + b); ``k`` below the trained K is the inference-time K of stage 2."""
        k = self.k if k is None else k
        check_sae_shape(self.d_model, self.num_features, k)
        pre_acts = F.relu(F.linear(self.center(x), self.encoder_weight, self.b_enc))  # (B, F)
        top_acts, top_indices = pre_acts.topk(k, dim=-1, sorted=True)
        return top_acts, top_indices

    def decode(self, top_acts: Tensor, top_indices: Tensor, mode: str = "sparse") -> Tensor:
        if mode == "sparse":
            return self._add_bias(weighted_row_sum(top_acts, top_indices, self.W_dec))
        return self._add_bias(scatter_codes(top_acts, top_indices, self.num_features) @ self.W_dec)

    def forward(self, x: Tensor, k: int | None = None, decode: str = "sparse") -> SAEOutput:
        if decode == "sparse":
            k = self.k if k is None else k
            check_sae_shape(self.d_model, self.num_features, k)
            recon, top_acts, top_indices = SparseTopKSAE.apply(self.center(x), self.encoder_weight, self.b_enc,
                                                               self.W_dec, k)
            return SAEOutput(self._add_bias(recon), top_acts, top_indices)
        top_acts, top_indices = self.encode(x, k)
        return SAEOutput(self.decode(top_acts, top_indices, decode), top_acts, top_indices)


def bag_weight_grad(top_indices: Tensor, weight: Tensor, per_sample_weights: Tensor, grad_out: Tensor) -> Tensor:
    """Gradient of ``weighted_row_sum`` with respect to its rows: ``Σ_k per_sample_weights[b, k] · grad_out[b]`` added
    into row ``top_indices[b, k]``, through embedding-bag's own backward (sorted, parallel, one F × d buffer)."""
    with torch.enable_grad():
        rows = weight.detach().requires_grad_()
        bag = F.embedding_bag(top_indices, rows, per_sample_weights=per_sample_weights.detach(), mode="sum")
    return torch.autograd.grad(bag, rows, grad_out)[0]


class SparseTopKSAE(torch.autograd.Function):
    """The SAE's step on the gather path: top-k of ReLU(x W_encᵀ + b), decoded by embedding-bag, with a backward
    that touches only the K active rows of each input row.

    Autograd through the plain ops computes the encoder's weight gradient as the dense (B, F)ᵀ(B, d) product and,
    tied, adds it to the decoder's as a second F × d buffer. Here both weight gradients are one gather-and-scatter:
    ``Σ acts·g`` (decoder) and ``Σ g_pre·x`` (encoder) land in one buffer when the weights are tied. On the CPU at the
    paper's shapes that halves the F × d buffers a step allocates and skips a product of 10 billion multiply-adds.
    """

    @staticmethod
    def forward(ctx, x: Tensor, encoder_weight: Tensor, b_enc: Tensor, decoder_weight: Tensor, k: int):
        pre_acts = F.relu(F.linear(x, encoder_weight, b_enc))  # (B, F)
        top_acts, top_indices = pre_acts.topk(k, dim=-1, sorted=True)
        recon = weighted_row_sum(top_acts, top_indices, decoder_weight)
        ctx.tied = encoder_weight is decoder_weight
        ctx.save_for_backward(x, encoder_weight, decoder_weight, top_acts, top_indices)
        ctx.mark_non_differentiable(top_indices)
        return recon, top_acts, top_indices

    @staticmethod
    def backward(ctx, grad_recon: Tensor, grad_acts: Tensor, _: Tensor):
        x, encoder_weight, decoder_weight, top_acts, top_indices = ctx.saved_tensors
        dtype = decoder_weight.dtype
        with torch.autocast(x.device.type, enabled=False):
            acts, grad_recon = top_acts.to(dtype), grad_recon.to(dtype)
            with torch.enable_grad():  # ∂recon[b]/∂acts[b, k] = W_dec[idx[b, k]]: the bag's per-sample-weight gradient
                leaf_acts = acts.detach().requires_grad_()
                gathered = F.embedding_bag(top_indices, decoder_weight.detach(), per_sample_weights=leaf_acts,
                                           mode="sum")
            decoder_dots = torch.autograd.grad(gathered, leaf_acts, grad_recon)[0]  # (B, K)
            grad_pre = (grad_acts.to(dtype) + decoder_dots) * (acts > 0)  # ReLU passes only positive codes
            grad_x = grad_encoder = grad_bias = grad_decoder = None
            if ctx.needs_input_grad[0]:
                grad_x = weighted_row_sum(grad_pre, top_indices, encoder_weight).to(x.dtype)
            if ctx.tied and (ctx.needs_input_grad[1] or ctx.needs_input_grad[3]):
                both = torch.cat([top_indices, top_indices])  # (2B, K): decoder bags, then encoder bags
                grad_decoder = bag_weight_grad(both, decoder_weight, torch.cat([acts, grad_pre]),
                                               torch.cat([grad_recon, x.to(dtype)]))
            else:
                if ctx.needs_input_grad[1]:
                    grad_encoder = bag_weight_grad(top_indices, encoder_weight, grad_pre.to(encoder_weight.dtype),
                                                   x.to(encoder_weight.dtype))
                if ctx.needs_input_grad[3]:
                    grad_decoder = bag_weight_grad(top_indices, decoder_weight, acts, grad_recon)
            if ctx.needs_input_grad[2]:
                grad_bias = grad_pre.new_zeros(encoder_weight.shape[0]).index_add_(0, top_indices.flatten(),
                                                                                   grad_pre.flatten())
        return grad_x, grad_encoder, grad_bias, grad_decoder, None


def dense_codes(sae: TopKSAE, x: Tensor, n: int) -> Tensor:
    """(B, F) fp32 codes keeping the ``n`` largest ReLU pre-activations per row, zero elsewhere, written densely."""
    centred = x.float() if sae.b_dec is None else x.float() - sae.b_dec.float()
    pre_acts = torch.relu(centred @ sae.encoder_weight.float().t() + sae.b_enc.float())
    return keep_top_n_dense(pre_acts, n)


def sae_reference(sae: TopKSAE, x: Tensor, k: int | None = None) -> Tensor:
    """Plain dense fp32 reconstruction that every fast path is tested against."""
    recon = dense_codes(sae, x, sae.k if k is None else k) @ sae.W_dec.float()
    return recon if sae.b_dec is None else recon + sae.b_dec.float()
