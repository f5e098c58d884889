"""Control: how much of the stage-1 SAE's error a ridge map of the input activation x already predicts (Engels et al.
2024), beside the NFM's reduction of the same error on the same held-out rows (METHOD §14).

    python control_ridge.py --preset cpu --sae1_model_path runs/cpu/sae1 --nfm_model_path runs/cpu/nfm \\
        --output_dir runs/cpu/ridge

The map is fitted on the NFM's own training windows (its config names them) and its penalty chosen on every Nth of
them, set aside; the held-out windows only report. It is written as ridge.safetensors for control_nfm.py
--target beyond_ridge.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
import torch

from common.config.stages import RidgeControlConfig
from common.data.activations import ActivationStream, flatten_positions, open_stream
from common.data.chunks import ChunkPlan
from common.data.text import is_validation_window
from common.errors import UserError
from common.models.loading import StageInput, check_nfm_on_sae, load_nfm, load_sae
from common.models.nfm import NFM
from common.models.sae import TopKSAE
from common.stages.cli import run_cli
from common.stages.finish import write_results
from common.stages.opening import open_stage, stage_config
from common.store.fingerprints import git_commit
from common.training.metrics import EVAL_BATCH_ROWS
from common.training.nfm_objective import SAECodes, sae_codes
from common.training.ridge_map import RIDGE_FILE, RidgeMap, choose_alpha, fit_ridge
from common.training.window_cis import gain_difference_ci, reduction_ci
from common.training.window_errors import nfm_row_errors, row_sse, window_sums

log = logging.getLogger("control_ridge")
RULE = "the NFM's reduction above the ridge map's: the 95% CI of the difference above 0"


@dataclass
class RidgeInputs:
    sae: TopKSAE
    nfm: NFM
    sources: list[StageInput]
    nfm_config: dict
    settings: None = None


def training_windows(stream: ActivationStream, plan: ChunkPlan, every: int) -> tuple[list[int], list[int]]:
    """The NFM's training windows: (those the map is fitted on, every ``every``-th set aside for the penalty)."""
    windows = [i for i in stream.text.available(0, plan.num_windows) if not is_validation_window(i)]
    aside = windows[every - 1 :: every]
    if not aside or len(aside) == len(windows):
        raise UserError(f"--alpha_every {every} leaves no window to fit or none to choose the penalty on "
                        f"({len(windows)} training windows)")
    return [i for i in windows if i not in set(aside)], aside


def read_inputs(cfg: RidgeControlConfig) -> RidgeInputs:
    sae, norm, sae_source = load_sae(cfg.sae1_model_path)
    nfm, nfm_source = load_nfm(cfg.nfm_model_path)
    check_nfm_on_sae(nfm_source, sae, sae_source, norm)
    nfm_config = nfm_source.config["config"]
    for key in ("window", "exclude_first_position"):
        if getattr(cfg, key) != nfm_config[key]:
            raise UserError(f"--{key} {getattr(cfg, key)} differs from the NFM's {nfm_config[key]} ({nfm_source.what})")
    return RidgeInputs(sae, nfm, [sae_source, nfm_source], nfm_config)


def fit_map(cfg: RidgeControlConfig, stream: ActivationStream, plan: ChunkPlan, data) -> tuple[RidgeMap, dict]:
    """The map fitted on the NFM's training windows, its penalty chosen on every Nth of them set aside."""
    fit_windows, aside = training_windows(stream, plan, cfg.alpha_every)
    rows_of = lambda windows: flatten_positions(stream.windows(windows), cfg.exclude_first_position)  # noqa: E731
    (x_fit, y_fit), (x_aside, y_aside) = ([t.cpu().numpy() for t in data(rows_of(w))[:2]] for w in (fit_windows, aside))
    alpha, scores = choose_alpha(x_fit, y_fit, x_aside, y_aside, cfg.alphas)
    log.info("ridge penalty %g chosen on %d set-aside windows: %s", alpha, len(aside), scores)
    ridge = fit_ridge(np.concatenate([x_fit, x_aside]), np.concatenate([y_fit, y_aside]), alpha)
    return ridge, {"alpha": alpha, "alpha_slice_mse": scores,
                   "alpha_at_grid_edge": alpha in (min(cfg.alphas), max(cfg.alphas)),
                   "windows": {"fit": len(fit_windows), "set_aside": len(aside)}}


def main(argv: list[str] | None = None) -> dict:
    cfg = stage_config(RidgeControlConfig, __doc__, argv)
    if cfg.alpha_every < 2:
        raise UserError(f"--alpha_every must be at least 2, got {cfg.alpha_every}")
    opened, inputs = open_stage(cfg, lambda: read_inputs(cfg))
    rt, nfm_config, norm = opened.rt, inputs.nfm_config, inputs.sources[0].norm_stats()
    stream = open_stream(cfg, opened.lm)
    if stream.describe()["text_identity"] != inputs.sources[1].config["data"]["text_identity"]:
        raise UserError(f"the training text differs from the one the NFM ({cfg.nfm_model_path}) was trained on")
    plan = ChunkPlan(stream, nfm_config["num_tokens"], nfm_config["chunk_tokens"])
    sae, nfm = inputs.sae.to(rt.device).eval(), inputs.nfm.to(rt.device).eval()

    def data(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, SAECodes]:
        """(normalized x, the SAE's residual at the NFM's K, the NFM's codes)."""
        codes = sae_codes(sae, rows, norm, nfm_config["sae_k"], nfm_config["top_n_features"], rt.decode,
                          EVAL_BATCH_ROWS)
        return norm.to(rt.device).normalize(rows.to(rt.device)), codes.residual, codes

    ridge, fitted = fit_map(cfg, stream, plan, data)
    x_val, residual_val, codes_val = data(stream.val_rows(max(1, nfm_config["val_tokens"] // cfg.window),
                                                          within=plan.num_windows))
    per_window = cfg.window - int(cfg.exclude_first_position)
    nfm_errors = nfm_row_errors(nfm, codes_val, rt.decode, EVAL_BATCH_ROWS)
    before, after_nfm = (window_sums(nfm_errors[key], per_window) for key in ("before", "after"))
    after_ridge = window_sums(row_sse(residual_val, ridge.predict(x_val)), per_window)
    difference = gain_difference_ci(after_nfm, after_ridge, before, seed=cfg.seed)
    fitted["windows"]["held_out"] = int(before.size)
    results = {
        "stage": "ridge", **opened.record, "config": dataclasses.asdict(cfg), "git_commit": git_commit(),
        "inputs": {source.flag.lstrip("-"): source.record() for source in inputs.sources}, **fitted,
        "ridge_reduction": reduction_ci(after_ridge, before, seed=cfg.seed),
        "nfm_reduction": reduction_ci(after_nfm, before, seed=cfg.seed),
        "nfm_minus_ridge": difference, "rule": RULE, "holds": bool(difference["low"] > 0),
        "evaluated_on": f"{codes_val.residual.shape[0]} rows of {before.size} held-out windows (normalized units); "
                        f"the target is the SAE's residual at K {nfm_config['sae_k']}",
    }
    with opened.out.writing(clear=cfg.overwrite):
        ridge.save(opened.out.path / RIDGE_FILE)
        write_results(opened.out.path, results)
    shares = [100 * results[key]["estimate"] for key in ("ridge_reduction", "nfm_reduction")]
    print(f"ridge map of x (alpha {fitted['alpha']:g}): reduces the SAE's held-out error by {shares[0]:.1f}%, the NFM "
          f"by {shares[1]:.1f}%; NFM − ridge {100 * difference['estimate']:.1f} points [{100 * difference['low']:.1f}, "
          f"{100 * difference['high']:.1f}] 95% CI: {RULE}: {'holds' if results['holds'] else 'fails'} "
          f"-> {opened.out.path}")
    return results


if __name__ == "__main__":
    run_cli(main)
