"""Stage 8: KL / cross-entropy pathology tests of the joint SAE + NFM (METHOD §8).

    python part18_joint_kl.py                                    # the paper's run, the model evaluated as trained
    python part18_joint_kl.py --preset cpu --joint_model_path runs/cpu/joint
    python part18_joint_kl.py --preset cpu ... --original_eval   # the original's evaluation (the paper's figures)
"""
from __future__ import annotations

from common.config.stages import KL18Config
from common.kl.conditions import JOINT_CONDITIONS, joint_conditions
from common.models.loading import load_joint
from common.models.settings import original_settings, trained_settings
from common.paper import BANNERS
from common.stages.cli import run_cli
from common.stages.kl import KLStage, check_kl_settings, run_kl_stage
from common.stages.opening import stage_config

PAPER = BANNERS["kl18"]


def main(argv: list[str] | None = None) -> dict:
    cfg = stage_config(KL18Config, __doc__, argv)

    def read_inputs() -> KLStage:
        joint, norm, source = load_joint(cfg.joint_model_path)
        check_kl_settings(cfg, source.config["layer"], "--joint_model_path")
        if cfg.original_eval:
            settings = original_settings(joint.sae.k, pooling="bi")
        else:
            settings = trained_settings(joint.sae.k, joint.top_n)

        return KLStage(
            stage="kl18",
            sources=[source],
            modules=[joint],
            norm=norm,
            conditions=lambda norm_on_device, decode: joint_conditions(joint, norm_on_device, settings, decode),
            labels=JOINT_CONDITIONS,
            reference="joint_sae",
            settings=settings,
            title="part18 joint SAE + NFM",
            paper=PAPER,
            extra={"joint_model_path": str(cfg.joint_model_path)},
        )

    return run_kl_stage(cfg, read_inputs)


if __name__ == "__main__":
    run_cli(main)
