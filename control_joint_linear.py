"""Control: stage 5 trained the same way with the NFM's interaction pathway removed, beside the joint model on the
same held-out rows: the interaction pathway's own contribution to the joint reconstruction, with its 95% CI over
held-out windows (METHOD §14).

    python control_joint_linear.py --preset cpu --sae1_model_path runs/cpu/sae1 --nfm_model_path runs/cpu/nfm \\
        --joint_model_path runs/cpu/joint --checkpoint_dir runs/cpu/joint_linear
"""
from __future__ import annotations

from pathlib import Path

from common.config.stages import JointLinearConfig
from common.errors import UserError
from common.models.ablations import remove_interaction
from common.models.joint import JointSAENFM
from common.models.loading import StageInput
from common.stages.cli import run_cli
from common.stages.controls import load_reference, reference_errors, verdict_text
from common.stages.trained import StageData, StageRun
from common.training.metrics import EVAL_BATCH_ROWS
from common.training.window_cis import mse_ci, reduction_ci, rows_per_window
from common.training.window_errors import joint_row_errors, window_sums
from part15_joint_SAENFM import Stage5

RULE = "1 − MSE(joint) / MSE(linear-only joint): 95% CI above 0"


class JointLinear(Stage5):
    config_class, description = JointLinearConfig, __doc__

    def load_inputs(self) -> list[StageInput]:
        sources = super().load_inputs()
        self.reference, reference = load_reference(self, self.cfg.joint_model_path)
        shape = self.reference.shape
        cfg = self.cfg
        if (shape.sae.num_features, shape.sae.k, shape.top_n, shape.nfm.embed_dim) != \
                (cfg.features, cfg.k, cfg.top_n_features, cfg.nfm_embed_dim):
            raise UserError(f"{reference.what} has another shape (F, K, top-N, k) than this control's settings")
        return [*sources, reference]

    def build(self, run: StageRun) -> JointSAENFM:
        joint = super().build(run)
        remove_interaction(joint.nfm)
        return joint

    def prepare(self, run: StageRun) -> StageData:
        data = super().prepare(run)
        data.extra.update(compared_with=run.inputs[-1].record(), control="interaction pathway removed")
        return data

    def evaluate(self, run: StageRun, data: StageData, best: JointSAENFM) -> dict:
        metrics = super().evaluate(run, data, best)
        mine = joint_row_errors(best, self.val_rows, self.norm, run.rt.decode, EVAL_BATCH_ROWS)
        rows, width = rows_per_window(self.cfg), self.val_rows.shape[1]
        linear_only = window_sums(mine["full"], rows)
        reference = reference_errors(self, self.reference, run.rt)
        verdict = reduction_ci(reference["full"], linear_only, seed=self.cfg.seed)
        metrics["control"] = {
            "rule": RULE, "verdict": verdict, "holds": bool(verdict["low"] > 0),
            "linear_only_mse": mse_ci(linear_only, rows, width, seed=self.cfg.seed),
            "joint_mse": mse_ci(reference["full"], rows, width, seed=self.cfg.seed),
            "joint_interaction_contribution": reduction_ci(reference["full"], reference["sae_plus_linear"],
                                                           seed=self.cfg.seed),
        }
        return metrics

    def print_table(self, metrics: dict, out: Path) -> None:
        super().print_table(metrics, out)
        control = metrics["control"]
        verdict = control["verdict"]
        print(f"joint without its interaction pathway: MSE {control['linear_only_mse']['estimate']:.4f}, joint "
              f"{control['joint_mse']['estimate']:.4f}: {verdict_text(verdict, RULE, control['holds'])}")


def main(argv: list[str] | None = None) -> dict:
    return JointLinear(argv).run()


if __name__ == "__main__":
    run_cli(main)
