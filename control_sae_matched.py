"""Control: an SAE that had the joint model's chances, trained like stage 5 (its data, batch size, steps and schedule,
from the same fresh start) without the NFM, beside the joint model on the same held-out rows (METHOD §14).

    python control_sae_matched.py --preset cpu --sae1_model_path runs/cpu/sae1 --joint_model_path runs/cpu/joint \\
        --checkpoint_dir runs/cpu/sae_matched                      # stage 1's tied SAE
    python control_sae_matched.py ... --no-tied                     # untied (Gao et al.)
    python control_sae_matched.py ... --match_parameters            # tied, same K, as many parameters as the joint
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch.nn.functional as F

from common.config.stages import SAEControlConfig
from common.models.joint import JointSAENFM, unique_parameter_counts
from common.models.loading import StageInput
from common.models.sae import TopKSAE
from common.stages.cli import run_cli
from common.stages.controls import load_reference, reference_errors, verdict_text
from common.stages.trained import StageData, StageRun
from common.training.metrics import EVAL_BATCH_ROWS
from common.training.sae_objective import FINAL_KEYS, evaluate_sae
from common.training.window_cis import mse_ci, reduction_ci, rows_per_window
from common.training.window_errors import sae_row_errors, window_sums
from part15_joint_SAENFM import Stage5

RULE = "1 − MSE(joint) / MSE(this SAE) on the same held-out rows: 95% CI above 0 (the joint model beats it)"


def matched_features(joint: JointSAENFM, tied: bool) -> int:
    """Features that give a TopK SAE the joint model's trainable parameters (each tensor once): a feature costs its
    decoder row, its encoder row when untied, and its encoder bias."""
    total = sum(unique_parameter_counts(joint).values())
    return math.floor(total / (joint.sae.d_model * (1 if tied else 2) + 1))


class SAEControl(Stage5):
    config_class, description = SAEControlConfig, __doc__

    def load_inputs(self) -> list[StageInput]:
        sources = super().load_inputs()
        self.reference, reference = load_reference(self, self.cfg.joint_model_path)
        if self.cfg.match_parameters:
            self.cfg.features = matched_features(self.reference, self.cfg.tied)
        return [*sources, reference]

    def prepare(self, run: StageRun) -> StageData:
        data = super().prepare(run)
        rt, norm = run.rt, self.norm.to(run.rt.device)

        def loss_fn(sae: TopKSAE, batch: tuple) -> tuple:
            x = norm.normalize(batch[0])
            return F.mse_loss(sae(x.to(sae.W_dec.dtype), decode=rt.decode).recon.float(), x), {}

        data.loss_fn = loss_fn
        data.validate = lambda sae: evaluate_sae(sae, self.val_rows, self.norm, rt, EVAL_BATCH_ROWS,
                                                 self.cfg.dead_threshold)
        for key in ("parts", "top_n_features"):  # the joint model's, not this SAE's
            data.extra.pop(key, None)
        data.extra.update(num_features=self.cfg.features, compared_with=run.inputs[-1].record(),
                          control="parameter-matched" if self.cfg.match_parameters else
                          "tied" if self.cfg.tied else "untied")
        return data

    def build(self, run: StageRun) -> TopKSAE:
        return TopKSAE(run.lm.d_model, self.cfg.features, self.cfg.k, self.cfg.tied)

    def title(self) -> str:
        cfg = self.cfg
        return f"SAE on the joint schedule (F={cfg.features}, K={cfg.k}, {'tied' if cfg.tied else 'untied'})"

    def evaluate(self, run: StageRun, data: StageData, best: TopKSAE) -> dict[str, Any]:
        cfg = self.cfg
        final = evaluate_sae(best, self.val_rows, self.norm, run.rt, EVAL_BATCH_ROWS, cfg.dead_threshold)
        rows, width = rows_per_window(cfg), self.val_rows.shape[1]
        mine = window_sums(sae_row_errors(best, self.val_rows, self.norm, run.rt.decode, EVAL_BATCH_ROWS), rows)
        joint = reference_errors(self, self.reference, run.rt)["full"]
        verdict = reduction_ci(joint, mine, seed=cfg.seed)
        parameters = {"this_sae": sum(p.numel() for p in best.parameters()),
                      "joint": sum(unique_parameter_counts(self.reference).values())}
        return {**{key: final[key] for key in FINAL_KEYS}, "evaluated_rows": final["rows"],
                "num_features": cfg.features, "tied": cfg.tied, "parameters": parameters,
                "control": {"rule": RULE, "verdict": verdict, "holds": bool(verdict["low"] > 0),
                            "mse": mse_ci(mine, rows, width, seed=cfg.seed),
                            "joint_mse": mse_ci(joint, rows, width, seed=cfg.seed)},
                "evaluated_on": f"{final['rows']} rows of held-out windows (normalized units), as the joint model"}

    def print_table(self, metrics: dict, out: Path) -> None:
        control, verdict = metrics["control"], metrics["control"]["verdict"]
        print(f"{self.title()}: variance explained {metrics['variance_explained']:.4f}, MSE "
              f"{control['mse']['estimate']:.4f} (joint {control['joint_mse']['estimate']:.4f}); "
              f"{metrics['parameters']['this_sae']:,} parameters (joint {metrics['parameters']['joint']:,}); "
              f"joint's gain {verdict_text(verdict, RULE, control['holds'])} -> {out}")


def main(argv: list[str] | None = None) -> dict:
    return SAEControl(argv).run()


if __name__ == "__main__":
    run_cli(main)
