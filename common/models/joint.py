"""The joint model of stage 5 (METHOD §5): one SAE feeding one NFM, reconstruction = SAE + NFM linear + interaction.

Its parts are the stage-1 and stage-2 modules themselves, so the decode paths are theirs (METHOD §9): on the CPU the
K active decoder rows and the top-N linear rows are gathered, on CUDA dense matmuls run under bf16 autocast.
``joint_reference`` is the plain dense fp32 formula every path is tested against.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from torch import Tensor, nn

from common.models.codes import select_top_n
from common.models.nfm import NFM, NFMShape, nfm_reference
from common.models.sae import SAEShape, TopKSAE, dense_codes, sae_reference
from common.models.saves_itself import SavesItself


@dataclass(frozen=True)
class JointShape:
    """The joint model's two parts and how many of the SAE's codes feed the NFM (saved under ``model``)."""

    sae: SAEShape
    nfm: NFMShape
    top_n: int


class JointOutput(NamedTuple):
    recon: Tensor  # (B, d) = sae_recon + linear + interaction
    sae_recon: Tensor  # (B, d): the joint model's own SAE path alone
    linear: Tensor  # (B, d)
    interaction: Tensor  # (B, d)
    top_acts: Tensor  # (B, K)
    top_indices: Tensor  # (B, K)


class JointSAENFM(SavesItself, nn.Module):
    """A stage-1-shaped SAE and a stage-2-shaped NFM fed the top ``top_n`` of the SAE's K codes, trained together.

    Its weights are the two parts' under ``sae.`` and ``nfm.``, so ``TopKSAE.load(folder, part="sae")`` reads the SAE
    part alone wherever a stage-1 directory is accepted.
    """

    Shape = JointShape

    def __init__(self, d_model: int, num_features: int, k: int, embed_dim: int, top_n: int,
                 dropout: float = 0.15, tied: bool = True) -> None:
        super().__init__()
        self.sae = TopKSAE(d_model, num_features, k, tied)
        self.nfm = NFM(num_features, d_model, embed_dim, dropout)
        self.top_n = top_n

    @property
    def shape(self) -> JointShape:
        return JointShape(self.sae.shape, self.nfm.shape, self.top_n)

    @classmethod
    def from_shape(cls, shape: JointShape) -> JointSAENFM:
        sae, nfm = shape.sae, shape.nfm
        return cls(sae.d_model, sae.num_features, sae.k, nfm.embed_dim, shape.top_n, nfm.dropout, sae.tied)

    def record(self) -> dict[str, Any]:
        return {"class": type(self).__name__, "top_n": self.top_n, "sae": self.sae.record(), "nfm": self.nfm.record()}

    @classmethod
    def shape_from_record(cls, record: dict[str, Any]) -> JointShape:
        return JointShape(TopKSAE.shape_from_record(record["sae"]), NFM.shape_from_record(record["nfm"]),
                          record["top_n"])

    def forward(self, x: Tensor, decode: str = "sparse", k: int | None = None, top_n: int | None = None,
                pooling: str = "bi") -> JointOutput:
        """``k``/``top_n``/``pooling`` other than the trained ones exist only for the original's evaluation."""
        sae_recon, top_acts, top_indices = self.sae(x, k, decode)
        nfm_acts, nfm_indices = select_top_n(top_acts, top_indices, self.top_n if top_n is None else top_n)
        nfm_out = self.nfm(nfm_acts, nfm_indices, decode, pooling)
        recon = sae_recon.to(nfm_out.linear.dtype) + nfm_out.linear + nfm_out.interaction
        return JointOutput(recon, sae_recon, nfm_out.linear, nfm_out.interaction, top_acts, top_indices)


def joint_reference(joint: JointSAENFM, x: Tensor) -> JointOutput:
    """The joint formula written out densely in fp32 from ``sae_reference`` and ``nfm_reference`` (gradients flow).

    The NFM's input is the top ``top_n`` of the K codes, i.e. the top ``top_n`` pre-activations. Uses the NFM's dropout
    module, so a train-mode call under the same RNG state draws the same mask as ``joint.forward``.
    """
    sae_recon = sae_reference(joint.sae, x)
    nfm_out = nfm_reference(joint.nfm, dense_codes(joint.sae, x, min(joint.top_n, joint.sae.k)))
    top_acts, top_indices = dense_codes(joint.sae, x, joint.sae.k).topk(joint.sae.k, dim=-1)
    recon = sae_recon + nfm_out.linear + nfm_out.interaction
    return JointOutput(recon, sae_recon, nfm_out.linear, nfm_out.interaction, top_acts, top_indices)


def paper_parameter_counts(d_model: int, num_features: int, embed_dim: int) -> dict[str, int]:
    """Per component as the paper counts them, the SAE's encoder (with its bias) and decoder apart even when tied.

    At the paper's shapes: 496,106,700 in all; the NFM linear layer 160,003,200 (32.3%).
    """
    return {
        "sae_encoder": num_features * d_model + num_features,
        "sae_decoder": num_features * d_model,
        "nfm_linear": num_features * d_model + d_model,
        "nfm_embeddings": num_features * embed_dim,
        "nfm_mlp": embed_dim * embed_dim + embed_dim + embed_dim * d_model + d_model,
    }


def unique_parameter_counts(joint: JointSAENFM) -> dict[str, int]:
    """Per component, each parameter tensor once: a tied SAE's one F × d matrix is both encoder and decoder.

    At the paper's shapes, tied: 336,106,700 in all (the tensors the optimizer updates).
    """
    def count(params) -> int:
        return sum(p.numel() for p in params)

    counts = {
        "sae": count(joint.sae.parameters()),
        "nfm_linear": count((joint.nfm.linear_weight, joint.nfm.linear_bias)),
        "nfm_embeddings": joint.nfm.embeddings.numel(),
        "nfm_mlp": count(joint.nfm.mlp.parameters()),
    }
    if sum(counts.values()) != count(joint.parameters()):
        raise AssertionError("a parameter of the joint model belongs to no component")
    return counts


def with_shares(counts: dict[str, int]) -> dict:
    """``{"total", "counts", "shares"}``, shares as fractions of the total."""
    total = sum(counts.values())
    return {"total": total, "counts": counts, "shares": {name: value / total for name, value in counts.items()}}
