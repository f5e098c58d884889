"""The joint model's loss and its evaluation (SPEC §5): the stage-5 script trains on these and benchmarks time them."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from common.activations import NormStats
from common.joint import JointSAENFM
from common.metrics import ReconstructionMetrics


def joint_loss(joint: JointSAENFM, x: Tensor, decode: str) -> tuple[Tensor, dict[str, Tensor]]:
    """MSE of the joint reconstruction against the normalized input, the only training signal (no other term).

    The SAE path's own error is logged beside it, so the curves show what the NFM adds.
    """
    out = joint(x.to(joint.sae.W_dec.dtype), decode=decode)
    loss = F.mse_loss(out.recon.float(), x)
    return loss, {"sae_part_mse": F.mse_loss(out.sae_recon.detach().float(), x)}


def evaluate_joint(joint: JointSAENFM, rows: Tensor, norm: NormStats, decode: str, batch_size: int,
                   dead_threshold: float = 1e-6) -> dict[str, float]:
    """Whole-set figures on raw LM rows (n, d), in normalized units. The caller sets eval mode and any autocast.

    ``joint_*`` is the full reconstruction, ``sae_part_*`` the joint model's own SAE path alone (the paper's 0.275),
    ``sae_plus_linear_mse`` / ``sae_plus_interaction_mse`` leave one NFM path out. ``mean_abs_*`` are each path's
    mean |output| over every row and dimension, the shares over the linear + interaction sum (the paper's
    94.0% / 6.0%). Sums run in float64.
    """
    device = joint.sae.W_dec.device
    norm = norm.to(device)
    joint_metrics, sae_metrics = ReconstructionMetrics(), ReconstructionMetrics(joint.sae.num_features, dead_threshold)
    totals = torch.zeros(5, dtype=torch.float64, device=device)  # SAE+linear, SAE+interaction errors; |sae|, |lin|, |int|
    with torch.no_grad():
        for start in range(0, rows.shape[0], batch_size):
            x = norm.normalize(rows[start : start + batch_size].to(device))
            out = joint(x.to(joint.sae.W_dec.dtype), decode=decode)
            sae_recon, linear, interaction = out.sae_recon.float(), out.linear.float(), out.interaction.float()
            joint_metrics.update(x, out.recon.float())
            sae_metrics.update(x, sae_recon, out.top_acts, out.top_indices)
            totals += torch.stack([
                (x - sae_recon - linear).double().square().sum(),
                (x - sae_recon - interaction).double().square().sum(),
                sae_recon.double().abs().sum(),
                linear.double().abs().sum(),
                interaction.double().abs().sum(),
            ])
    whole, sae_part = joint_metrics.compute(), sae_metrics.compute()
    sae_plus_linear, sae_plus_interaction, mean_abs_sae, mean_abs_linear, mean_abs_interaction = (
        totals / (rows.shape[0] * rows.shape[1])
    ).tolist()
    return {
        "loss": whole["mse"],
        "joint_mse": whole["mse"],
        "sae_part_mse": sae_part["mse"],
        "improvement": 1.0 - whole["mse"] / sae_part["mse"],
        "joint_variance_explained": whole["variance_explained"],
        "sae_part_variance_explained": sae_part["variance_explained"],
        "joint_fvu": whole["fvu"],
        "sae_part_fvu": sae_part["fvu"],
        "sae_plus_linear_mse": sae_plus_linear,
        "sae_plus_interaction_mse": sae_plus_interaction,
        "linear_contribution": 1.0 - sae_plus_linear / sae_part["mse"],
        "interaction_contribution": 1.0 - whole["mse"] / sae_plus_linear,
        "mean_abs_sae": mean_abs_sae,
        "mean_abs_linear": mean_abs_linear,
        "mean_abs_interaction": mean_abs_interaction,
        "linear_share": mean_abs_linear / (mean_abs_linear + mean_abs_interaction),
        "interaction_share": mean_abs_interaction / (mean_abs_linear + mean_abs_interaction),
        "l0": sae_part.get("l0", 0.0),
        "dead_fraction": sae_part["dead_fraction"],
        "rows": whole["rows"],
    }
