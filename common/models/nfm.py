"""Neural Factorization Machine over a TopK SAE's codes (METHOD §2): a linear term plus an MLP on the bi-interaction.

The codes arrive as the SAE gives them, ``top_acts`` / ``top_indices`` of shape (B, N). Two decode paths compute
the same function (METHOD §9): ``sparse`` gathers the N active rows (fastest on the CPU), ``dense`` scatters the codes
into (B, F) and runs matmuls (fastest on a GPU under bf16 autocast). Neither ever builds the original's (B, F, k)
tensor. ``nfm_reference`` is the plain dense formula the tests hold both paths to.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.models.codes import scatter_codes, weighted_row_sum
from common.models.saves_itself import SavesItself

DECODES = ("sparse", "dense")
# "sum" pools Σ_i f_i v_i instead of the bi-interaction: the original's evaluation script (part14c) did that to a
# model trained with "bi"; only --original_eval asks for it (METHOD §4).
POOLINGS = ("bi", "sum")


@dataclass(frozen=True)
class NFMShape:
    """What an NFM is, apart from its weights (saved under ``model`` in its ``config.json``)."""

    num_features: int
    d_model: int
    embed_dim: int = 300
    dropout: float = 0.15


class NFMParts(NamedTuple):
    linear: Tensor  # (B, d)
    h: Tensor  # (B, k): the bi-interaction (or the original's plain sum) of the active embeddings
    hidden: Tensor  # (B, k): Linear1(Dropout(h)) before the ReLU, the secondary SAE's input
    interaction: Tensor  # (B, d): Linear2(ReLU(hidden))


class NFMOutput(NamedTuple):
    total: Tensor  # (B, d) = linear + interaction
    linear: Tensor  # (B, d)
    interaction: Tensor  # (B, d)


def bi_interaction(pooled: Tensor, pooled_sq: Tensor) -> Tensor:
    """0.5 * ((Σ f_i v_i)² − Σ (f_i v_i)²) = Σ_{i<j} (f_i v_i) ⊙ (f_j v_j), from its two sums."""
    return 0.5 * (pooled.square() - pooled_sq)


class NFM(SavesItself, nn.Module):
    """``linear(f) + mlp(h(f))`` with ``h`` the bi-interaction of the active features' embeddings."""

    Shape = NFMShape

    def __init__(self, num_features: int, d_model: int, embed_dim: int = 300, dropout: float = 0.15) -> None:
        super().__init__()
        self.num_features = num_features
        self.d_model = d_model
        self.embed_dim = embed_dim
        # Linear(F, d)'s weight stored transposed, (F, d), so that a feature's row is contiguous for the gather.
        self.linear_weight = nn.Parameter(torch.empty(num_features, d_model))
        self.linear_bias = nn.Parameter(torch.empty(d_model))
        self.embeddings = nn.Parameter(torch.empty(num_features, embed_dim))  # (F, k)
        self.mlp = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(embed_dim, embed_dim),
            nn.ReLU(),
            nn.Linear(embed_dim, d_model),
        )
        self.reset_parameters()

    @property
    def shape(self) -> NFMShape:
        return NFMShape(self.num_features, self.d_model, self.embed_dim, self.mlp[0].p)

    @classmethod
    def from_shape(cls, shape: NFMShape) -> NFM:
        return cls(shape.num_features, shape.d_model, shape.embed_dim, shape.dropout)

    def reset_parameters(self) -> None:
        """The original's init: embeddings N(0, 0.05), every weight N(0, 0.01), biases 0."""
        nn.init.normal_(self.embeddings, std=0.05)
        nn.init.normal_(self.linear_weight, std=0.01)
        nn.init.zeros_(self.linear_bias)
        for layer in (self.mlp[1], self.mlp[3]):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(
        self, top_acts: Tensor, top_indices: Tensor, decode: str = "sparse", pooling: str = "bi"
    ) -> NFMOutput:
        """Codes (B, N) -> the three (B, d) outputs, in the parameter dtype whatever the autocast."""
        acts, latent_acts = self._prepare(top_acts, top_indices, decode, pooling)
        linear = self._linear_term(acts, top_indices, latent_acts)
        interaction = self.mlp(self._pool(acts, top_indices, latent_acts, pooling))
        dtype = self.linear_weight.dtype
        linear, interaction = linear.to(dtype), interaction.to(dtype)
        return NFMOutput(linear + interaction, linear, interaction)

    def parts(self, top_acts: Tensor, top_indices: Tensor, decode: str = "sparse", pooling: str = "bi") -> NFMParts:
        """Every intermediate of ``forward`` by name (the behavioral scripts read and clamp them); the same ops in the
        same order, so ``parts(...).interaction`` is ``forward(...).interaction`` bit for bit."""
        acts, latent_acts = self._prepare(top_acts, top_indices, decode, pooling)
        linear = self._linear_term(acts, top_indices, latent_acts)
        h = self._pool(acts, top_indices, latent_acts, pooling)
        hidden = self.mlp[1](self.mlp[0](h))
        dtype = self.linear_weight.dtype
        return NFMParts(linear.to(dtype), h, hidden.to(dtype), self.readout(hidden))

    def readout(self, hidden: Tensor) -> Tensor:
        """The interaction output ``Linear2(ReLU(hidden))`` of a (possibly clamped) hidden vector, (B, d)."""
        return self.mlp[3](self.mlp[2](hidden)).to(self.linear_weight.dtype)

    def interaction_hidden(self, top_acts: Tensor, top_indices: Tensor, decode: str = "sparse") -> Tensor:
        """``Linear1(Dropout(h))`` before the ReLU, (B, k): the secondary SAE's input (METHOD §3)."""
        acts, latent_acts = self._prepare(top_acts, top_indices, decode, "bi")
        h = self._pool(acts, top_indices, latent_acts, "bi")
        return self.mlp[1](self.mlp[0](h)).to(self.linear_weight.dtype)

    def _prepare(
        self, top_acts: Tensor, top_indices: Tensor, decode: str, pooling: str
    ) -> tuple[Tensor, Tensor | None]:
        """Codes in the parameter dtype, plus the dense (B, F) matrix when decoding densely (``None`` when sparse)."""
        if decode not in DECODES:
            raise ValueError(f"decode must be one of {DECODES}, got {decode!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if top_acts.shape != top_indices.shape:
            raise ValueError(f"top_acts {tuple(top_acts.shape)} and top_indices {tuple(top_indices.shape)} differ")
        # The SAE may hand over bf16 codes from its own autocast; every path below starts from the master dtype.
        acts = top_acts.to(self.linear_weight.dtype)
        latent_acts = scatter_codes(acts, top_indices, self.num_features) if decode == "dense" else None
        return acts, latent_acts

    def _linear_term(self, acts: Tensor, top_indices: Tensor, latent_acts: Tensor | None) -> Tensor:
        if latent_acts is not None:
            return latent_acts @ self.linear_weight + self.linear_bias  # (B, d); bf16 under autocast
        return weighted_row_sum(acts, top_indices, self.linear_weight) + self.linear_bias

    def _pool(self, acts: Tensor, top_indices: Tensor, latent_acts: Tensor | None, pooling: str) -> Tensor:
        """The MLP's input ``h`` (B, k)."""
        if latent_acts is not None:
            pooled = latent_acts @ self.embeddings  # (B, k)
            if pooling == "sum":
                return pooled
            return bi_interaction(pooled, latent_acts.square() @ self.embeddings.square())
        if pooling == "sum":
            return weighted_row_sum(acts, top_indices, self.embeddings)
        return SparseBiInteraction.apply(acts, top_indices, self.embeddings)


class SparseBiInteraction(torch.autograd.Function):
    """The bi-interaction from the N gathered embedding rows, with a hand-written backward.

    Autograd through the plain formula keeps about eight (B, N, k) temporaries (80 MB each at the paper's shapes);
    on the CPU a fresh one costs more in page faults than in arithmetic. This keeps one in forward and two in
    backward, which gathers the rows again instead of saving them.
    """

    @staticmethod
    def forward(ctx, acts: Tensor, top_indices: Tensor, embeddings: Tensor) -> Tensor:
        weighted_rows = F.embedding(top_indices, embeddings).mul_(acts.unsqueeze(-1))  # (B, N, k)
        pooled = weighted_rows.sum(dim=-2)  # (B, k)
        pooled_sq = weighted_rows.square_().sum(dim=-2)
        ctx.save_for_backward(acts, top_indices, embeddings, pooled)
        return bi_interaction(pooled, pooled_sq)

    @staticmethod
    def backward(ctx, grad_h: Tensor) -> tuple[Tensor | None, None, Tensor | None]:
        acts, top_indices, embeddings, pooled = ctx.saved_tensors
        with torch.autocast(grad_h.device.type, enabled=False):  # vecdot would drop to bf16 under autocast
            rows = F.embedding(top_indices, embeddings)  # (B, N, k)
            scale = acts.unsqueeze(-1)  # (B, N, 1)
            # ∂h/∂(a_i v_i) = pooled − a_i v_i: the gradient of the i-th weighted row, (B, N, k)
            grad_weighted = rows.mul(scale).neg_().add_(pooled.unsqueeze(-2)).mul_(grad_h.unsqueeze(-2))
            grad_acts = torch.linalg.vecdot(rows, grad_weighted) if ctx.needs_input_grad[0] else None
            del rows
            grad_embeddings = None
            if ctx.needs_input_grad[2]:
                grad_rows = grad_weighted.mul_(scale).flatten(0, -2)  # (B·N, k)
                grad_embeddings = torch.zeros_like(embeddings).index_add_(0, top_indices.flatten(), grad_rows)
        return grad_acts, None, grad_embeddings


def nfm_reference(nfm: NFM, latent_acts: Tensor, pooling: str = "bi") -> NFMOutput:
    """The NFM's formula written out densely, in fp32 (or float64 for a float64 model), no autocast.

    Reads ``nfm``'s parameters (gradients flow to them) and uses its dropout module, so a train-mode call with the
    same RNG state draws the same mask as ``nfm.forward``.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    dtype = torch.promote_types(nfm.linear_weight.dtype, torch.float32)
    with torch.autocast(latent_acts.device.type, enabled=False):
        f = latent_acts.to(dtype)  # (B, F)
        weight, embeddings = nfm.linear_weight.to(dtype), nfm.embeddings.to(dtype)
        linear = f @ weight + nfm.linear_bias.to(dtype)
        pooled = f @ embeddings
        h = pooled if pooling == "sum" else 0.5 * (pooled.square() - f.square() @ embeddings.square())
        first, second = nfm.mlp[1], nfm.mlp[3]
        hidden = F.linear(nfm.mlp[0](h), first.weight.to(dtype), first.bias.to(dtype))
        interaction = F.linear(torch.relu(hidden), second.weight.to(dtype), second.bias.to(dtype))
    return NFMOutput(linear + interaction, linear, interaction)
