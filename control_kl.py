"""Control: part14's KL test of an SAE that had the joint model's chances (control_sae_matched.py), with the joint
model on the same windows, as each was trained (METHOD §14, §4).

    python control_kl.py --preset cpu --sae_model_path runs/cpu/sae_matched --joint_model_path runs/cpu/joint \\
        --output_dir runs/cpu/kl_sae_matched
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from common.config.stages import KLControlConfig
from common.data.activations import NormStats
from common.errors import UserError
from common.kl.windows import window_totals
from common.models.joint import JointSAENFM
from common.models.loading import load_joint, load_sae
from common.models.sae import TopKSAE
from common.models.settings import trained_settings
from common.stages.cli import run_cli
from common.stages.kl import KLStage, check_kl_settings, run_kl_stage
from common.stages.opening import stage_config
from common.training.window_cis import reduction_ci

CONDITIONS = {"sae": "control SAE", "joint_full": "joint full", "joint_sae": "joint SAE part"}
RULE = "1 − KL(joint full) / KL(control SAE) on the same windows: 95% CI above 0 (the joint model beats it)"


def reconstructions(sae: TopKSAE, joint: JointSAENFM, norm: NormStats, decode: str):
    def reconstruct(raw: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            x = norm.normalize(raw)
            out = joint(x, decode)
            return {"sae": norm.denormalize(sae(x, decode=decode).recon),
                    "joint_full": norm.denormalize(out.recon), "joint_sae": norm.denormalize(out.sae_recon)}

    return reconstruct


def verdict(store: Path, seed: int) -> dict[str, Any]:
    """The joint model's KL against the control SAE's, per window, with its CI."""
    _, sums = window_totals(store, ["sae.kl", "joint_full.kl"])
    ci = reduction_ci(sums["joint_full.kl"], sums["sae.kl"], seed=seed)
    return {"control": {"rule": RULE, "verdict": ci, "holds": bool(ci["low"] > 0)}}


def main(argv: list[str] | None = None) -> dict:
    cfg = stage_config(KLControlConfig, __doc__, argv)
    if cfg.original_eval:
        raise UserError("the controls are evaluated as trained: --original_eval does not apply")

    def read_inputs() -> KLStage:
        sae, norm, sae_source = load_sae(cfg.sae_model_path, "--sae_model_path")
        joint, joint_norm, joint_source = load_joint(cfg.joint_model_path)
        if not (torch.equal(norm.mean, joint_norm.mean) and torch.equal(norm.std, joint_norm.std)):
            raise UserError(f"{sae_source.what} and {joint_source.what} were trained with other normalization "
                            "statistics")
        check_kl_settings(cfg, sae_source.config["layer"], "--sae_model_path")
        return KLStage(
            stage="kl_control", sources=[sae_source, joint_source], modules=[sae, joint], norm=norm,
            conditions=lambda norm_on_device, decode: reconstructions(sae, joint, norm_on_device, decode),
            labels=CONDITIONS, reference="sae", settings=trained_settings(sae.k, joint.top_n),
            title="control SAE beside the joint model", paper="", figures=lambda store: verdict(store, cfg.seed),
            extra={"sae_model_path": str(cfg.sae_model_path), "joint_model_path": str(cfg.joint_model_path)})

    results = run_kl_stage(cfg, read_inputs)
    if results:
        control = results["control"]
        print(f"joint full against the control SAE: KL reduction {100 * control['verdict']['estimate']:.1f}% "
              f"[{100 * control['verdict']['low']:.1f}, {100 * control['verdict']['high']:.1f}] 95% CI: {RULE}: "
              f"{'holds' if control['holds'] else 'fails'}")
    return results


if __name__ == "__main__":
    run_cli(main)
