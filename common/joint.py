"""The joint model of stage 5 (SPEC §5): one SAE feeding one NFM, reconstruction = SAE + NFM linear + interaction."""
from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from common.nfm import NFM, select_top_n
from common.sae import TopKSAE


class JointOutput(NamedTuple):
    recon: Tensor  # (B, d) = sae_recon + linear + interaction
    sae_recon: Tensor  # (B, d): the joint model's own SAE path alone
    linear: Tensor  # (B, d)
    interaction: Tensor  # (B, d)
    top_acts: Tensor  # (B, K)
    top_indices: Tensor  # (B, K)


class JointSAENFM(nn.Module):
    """A stage-1-shaped SAE and a stage-2-shaped NFM fed the top ``top_n`` of the SAE's K codes, trained together."""

    def __init__(self, d_model: int, num_features: int, k: int, embed_dim: int, top_n: int,
                 dropout: float = 0.15, tied: bool = True) -> None:
        super().__init__()
        self.sae = TopKSAE(d_model, num_features, k, tied)
        self.nfm = NFM(num_features, d_model, embed_dim, dropout)
        self.top_n = top_n

    def forward(self, x: Tensor, decode: str = "sparse", k: int | None = None, top_n: int | None = None,
                pooling: str = "bi") -> JointOutput:
        """``k``/``top_n``/``pooling`` other than the trained ones exist only for the original's evaluation."""
        top_acts, top_indices = self.sae.encode(x, k)
        sae_recon = self.sae.decode(top_acts, top_indices, decode)
        nfm_acts, nfm_indices = select_top_n(top_acts, top_indices, self.top_n if top_n is None else top_n)
        nfm_out = self.nfm(nfm_acts, nfm_indices, decode, pooling)
        recon = sae_recon.to(nfm_out.linear.dtype) + nfm_out.linear + nfm_out.interaction
        return JointOutput(recon, sae_recon, nfm_out.linear, nfm_out.interaction, top_acts, top_indices)
