"""Control NFMs (METHOD §14): stage 2 trained the same way with one thing changed, compared with the stage-2 NFM
(or an intercept) on the same held-out rows, each figure with its 95% CI over held-out windows.

    python control_nfm.py --preset cpu --sae1_model_path runs/cpu/sae1 --nfm_model_path runs/cpu/nfm \\
        --pathways linear --checkpoint_dir runs/cpu/nfm_linear           # no interaction pathway
    python control_nfm.py ... --target shuffled --checkpoint_dir runs/cpu/nfm_shuffled
    python control_nfm.py ... --target beyond_ridge --ridge_path runs/cpu/ridge \\
        --checkpoint_dir runs/cpu/nfm_beyond_ridge
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from common.config.stages import NFMControlConfig
from common.errors import UserError
from common.models.ablations import remove_interaction
from common.models.loading import StageInput, check_nfm_on_sae, load_nfm
from common.models.nfm import NFM
from common.stages.cli import run_cli
from common.stages.controls import verdict_text
from common.stages.trained import StageData, StageRun
from common.store.reads import load_json
from common.store.stage_files import RESULTS_FILE
from common.training.metrics import EVAL_BATCH_ROWS
from common.training.nfm_objective import SAECodes, evaluate_nfm
from common.training.ridge_map import RIDGE_FILE, RidgeMap
from common.training.window_cis import gain_difference_ci, reduction_ci
from common.training.window_errors import nfm_row_errors, row_sse, window_sums
from part2d_residual_NFM_streaming import Stage2

SHUFFLE_SEED = 7_919  # + 1,000 x --seed + chunk: the generator of each chunk's permutation (−1: the held-out rows)
RULES = {"residual": "the interaction pathway's own contribution (full − linear-only reduction): 95% CI above 0",
         "shuffled": "shuffled − intercept-only gain: 95% CI not above 0 (the shuffled NFM adds nothing)",
         "beyond_ridge": "the NFM's reduction of what the ridge map leaves: 95% CI above 0"}


def permutation(rows: int, seed: int, chunk: int) -> torch.Tensor:
    return torch.randperm(rows, generator=torch.Generator().manual_seed(SHUFFLE_SEED + 1_000 * seed + chunk))


class NFMControl(Stage2):
    config_class, description = NFMControlConfig, __doc__

    def check(self) -> None:
        cfg = self.cfg
        if (cfg.target == "beyond_ridge") != (cfg.ridge_path is not None):
            raise UserError("--target beyond_ridge takes --ridge_path (control_ridge.py's directory), and only it")
        if cfg.target != "residual" and cfg.pathways != "both":
            raise UserError("a control changes one thing: --pathways linear goes with --target residual")

    def load_inputs(self) -> list[StageInput]:
        cfg, sources = self.cfg, super().load_inputs()
        self.reference, reference = load_nfm(cfg.nfm_model_path)
        check_nfm_on_sae(reference, self.sae, sources[0], self.norm)
        if (reference.config["sae_k"], reference.config["top_n_features"]) != (cfg.sae_k, cfg.top_n_features):
            raise UserError(f"{reference.what} was fed K {reference.config['sae_k']}, top "
                            f"{reference.config['top_n_features']}: give this control the same --sae_k and "
                            "--top_n_features")
        self.ridge = None
        if cfg.ridge_path:
            folder = Path(cfg.ridge_path)
            if not (folder / RESULTS_FILE).is_file():
                raise UserError(f"--ridge_path {cfg.ridge_path}: no finished control_ridge.py output there")
            if load_json(folder / RESULTS_FILE)["inputs"]["sae1_model_path"]["weights_sha256"] != \
                    sources[0].weights_sha256():
                raise UserError(f"--ridge_path {cfg.ridge_path} was fitted on another stage-1 SAE")
            self.ridge = RidgeMap.load(folder / RIDGE_FILE)
        self.permutations: list[dict[str, Any]] = []
        self.residual_sums: dict[int, tuple[torch.Tensor, int]] = {}
        return [*sources, reference]

    def codes_of(self, rows: torch.Tensor, chunk: int | None = None) -> SAECodes:
        codes = super().codes_of(rows, chunk)
        if chunk is None:
            self.sae_residual_val = codes.residual
        if self.ridge is not None:
            x = self.norm.to(codes.residual.device).normalize(rows.to(codes.residual.device))
            codes = codes._replace(residual=codes.residual - self.ridge.predict(x))
        if chunk is not None:
            if self.cfg.target == "shuffled":
                order = permutation(rows.shape[0], self.cfg.seed, chunk)
                codes = codes._replace(residual=codes.residual[order.to(codes.residual.device)])
                self.permutations.append({"chunk": chunk, "rows": rows.shape[0], "seed": SHUFFLE_SEED +
                                          1_000 * self.cfg.seed + chunk,
                                          "sha256": hashlib.sha256(order.numpy().tobytes()).hexdigest()})
            self.residual_sums[chunk] = (codes.residual.double().sum(0).cpu(), rows.shape[0])
        return codes

    def prepare(self, run: StageRun) -> StageData:
        data = super().prepare(run)
        data.extra.update(compared_with=run.inputs[1].record(), control=self.cfg.target)
        if self.cfg.target == "shuffled":  # the best model is chosen on shuffled held-out pairs too
            order = permutation(self.val_codes.residual.shape[0], self.cfg.seed, -1).to(self.val_codes.residual.device)
            shuffled = self.val_codes._replace(residual=self.val_codes.residual[order])
            data.validate = lambda model: evaluate_nfm(model, shuffled, run.rt.decode, EVAL_BATCH_ROWS)
        return data

    def build(self, run: StageRun) -> NFM:
        model = super().build(run)
        return remove_interaction(model) if self.cfg.pathways == "linear" else model

    def evaluate(self, run: StageRun, data: StageData, best: NFM) -> dict:
        return {**super().evaluate(run, data, best), "control": self.compare(run, best)}

    def compare(self, run: StageRun, best: NFM) -> dict[str, Any]:
        cfg, decode = self.cfg, run.rt.decode
        sums = lambda values: window_sums(values, cfg.window - int(cfg.exclude_first_position))  # noqa: E731
        mine = nfm_row_errors(best, self.val_codes, decode, EVAL_BATCH_ROWS)
        before, after = sums(mine["before"]), sums(mine["after"])
        reference_codes = self.val_codes._replace(residual=self.sae_residual_val)
        reference = nfm_row_errors(self.reference.to(run.rt.device).eval(), reference_codes, decode, EVAL_BATCH_ROWS)
        sae_error, reference_after = sums(reference["before"]), sums(reference["after"])
        out: dict[str, Any] = {"target": cfg.target, "pathways": cfg.pathways, "rule": RULES[cfg.target],
                               "reduction": reduction_ci(after, before, seed=cfg.seed),
                               "reference_reduction": reduction_ci(reference_after, sae_error, seed=cfg.seed)}
        if cfg.target == "residual":
            out["verdict"] = gain_difference_ci(reference_after, after, before, seed=cfg.seed)
        elif cfg.target == "shuffled":
            total = sum(s for s, _ in self.residual_sums.values())
            mean = (total / sum(n for _, n in self.residual_sums.values())).float().to(self.val_codes.residual.device)
            intercept = sums(row_sse(self.val_codes.residual, mean.expand_as(self.val_codes.residual)))
            out["intercept_reduction"] = reduction_ci(intercept, before, seed=cfg.seed)
            out["verdict"] = gain_difference_ci(after, intercept, before, seed=cfg.seed)
            out["permutations"] = sorted(self.permutations, key=lambda p: p["chunk"])
        else:
            out["verdict"] = out["reduction"]
            out["ridge_plus_nfm_reduction"] = reduction_ci(after, sae_error, seed=cfg.seed)
        verdict = out["verdict"]
        out["holds"] = bool(verdict["low"] <= 0 if cfg.target == "shuffled" else verdict["low"] > 0)
        return out

    def print_table(self, metrics: dict, out: Path) -> None:
        control, verdict = metrics["control"], metrics["control"]["verdict"]
        print(f"control NFM ({control['target']}, {control['pathways']} pathways): held-out reduction "
              f"{100 * control['reduction']['estimate']:.2f}% (stage-2 NFM "
              f"{100 * control['reference_reduction']['estimate']:.2f}%); verdict figure "
              f"{verdict_text(verdict, control['rule'], control['holds'])} -> {out}")


def main(argv: list[str] | None = None) -> dict:
    return NFMControl(argv).run()


if __name__ == "__main__":
    run_cli(main)
