"""What the KL tests patch in (METHOD §4, §8): each condition's reconstruction of the raw residual.

By default every model runs as it was trained: z-scored input, the inference K and top-N it trained with, the
bi-interaction, de-normalized output. ``original_settings`` reproduces the original's evaluation: raw activations,
the SAE's trained K, every code into the NFM, and (sequential only) the plain sum ``Σ f_i v_i`` as interaction input.
"""
from __future__ import annotations

import torch
from torch import Tensor

from common.data.activations import NormStats
from common.kl.evaluator import Reconstruct
from common.models.codes import select_top_n
from common.models.joint import JointSAENFM
from common.models.nfm import NFM
from common.models.sae import TopKSAE
from common.models.settings import EvalSettings

SEQUENTIAL_CONDITIONS = {"sae": "SAE only", "sae_linear": "SAE + NFM linear",
                         "sae_interaction": "SAE + NFM interaction", "sae_nfm": "SAE + full NFM"}
JOINT_CONDITIONS = {"joint_sae": "joint SAE part", "joint_full": "joint full", "joint_linear": "joint linear only",
                    "joint_interaction": "joint interaction only"}


def _codec(norm: NormStats, settings: EvalSettings) -> tuple:
    if settings.normalize:
        return norm.normalize, norm.denormalize
    return (lambda raw: raw.float()), (lambda recon: recon.float())


def sequential_conditions(sae: TopKSAE, nfm: NFM, norm: NormStats, settings: EvalSettings, decode: str) -> Reconstruct:
    """SAE only, SAE + NFM linear, SAE + NFM interaction, SAE + full NFM (the NFM fed the SAE's codes)."""
    encode_input, to_raw = _codec(norm, settings)

    def reconstruct(raw: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            top_acts, top_indices = sae.encode(encode_input(raw), settings.k)
            sae_recon = sae.decode(top_acts, top_indices, decode).float()
            nfm_out = nfm(*select_top_n(top_acts, top_indices, settings.top_n), decode, settings.pooling)
            # Sums are formed in the space the models work in, then de-normalized once (the mean is added once).
            return {
                "sae": to_raw(sae_recon),
                "sae_linear": to_raw(sae_recon + nfm_out.linear),
                "sae_interaction": to_raw(sae_recon + nfm_out.interaction),
                "sae_nfm": to_raw(sae_recon + nfm_out.linear + nfm_out.interaction),
            }

    return reconstruct


def joint_conditions(joint: JointSAENFM, norm: NormStats, settings: EvalSettings, decode: str) -> Reconstruct:
    """The joint model's SAE part alone, the whole joint model, and its SAE part plus one NFM component."""
    encode_input, to_raw = _codec(norm, settings)
    top_n = settings.k if settings.top_n is None else settings.top_n

    def reconstruct(raw: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            out = joint(encode_input(raw), decode, settings.k, top_n, settings.pooling)
            sae_recon = out.sae_recon.float()
            return {
                "joint_sae": to_raw(sae_recon),
                "joint_full": to_raw(sae_recon + out.linear + out.interaction),
                "joint_linear": to_raw(sae_recon + out.linear),
                "joint_interaction": to_raw(sae_recon + out.interaction),
            }

    return reconstruct
