"""Control: a planted ground truth (METHOD §14). Synthetic activations with known features, dictionary and interacting
pairs at several strengths s (s = 0 is the twin with no interaction); the NFM trained on the true codes (does the NFM
find the pairs?) and, with --sae_variant, a TopK SAE trained first and the NFM on its codes (does the method?). No LM.

    python control_planted.py --preset cpu --output_dir runs/cpu/planted
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.analysis.planted import (
    make_planted,
    mapped_pairs,
    match_features,
    pair_effects,
    recall_at_planted,
    sparse_codes,
)
from common.config.concepts import TrainConfig
from common.config.fields import input_paths
from common.config.stages import PlantedConfig
from common.data.activations import NormStats
from common.data.batches import RowBatches
from common.errors import UserError
from common.models.nfm import NFM
from common.models.sae import TopKSAE
from common.runtime.context import Runtime, runtime
from common.stages.cli import run_cli
from common.stages.finish import write_results
from common.stages.opening import stage_config
from common.store.fingerprints import git_commit
from common.store.lock import OutputDir
from common.training.nfm_objective import SAECodes, evaluate_nfm, nfm_loss, sae_codes
from common.training.trainer import Trainer
from common.training.window_cis import reduction_ci
from common.training.window_errors import nfm_row_errors, row_sse, window_sums

ROUNDING = 1e-6  # a gain smaller than this is float rounding, recorded as 0
BLOCKS = 100  # bootstrap units: the held-out rows (independent) in this many blocks of equal size
RULES = {"planted": "at the largest s, NFM on the true codes: interaction gain 95% CI above 0 and recall@|P| >= 0.8",
         "twin": "at s = 0, NFM on the true codes: interaction gain 95% CI contains 0"}


def fit(model: nn.Module, train: tuple[Tensor, ...], loss_fn, validate, cfg: PlantedConfig, rt: Runtime,
        out: Path) -> nn.Module:
    """The project's trainer on fixed rows; the best model on the held-out rows, reloaded."""
    steps = cfg.train_steps
    schedule = TrainConfig(lr=cfg.lr, adam_eps=cfg.adam_eps, train_steps=steps, val_every=max(1, steps // 10),
                           checkpoint_every=steps, log_every=max(1, steps // 10))
    batches = RowBatches(train, cfg.batch_size, cfg.seed, rt.device)
    Trainer(model, schedule, out, rt.device, "fp32", loss_fn, batches, validate, cfg.seed).fit()
    return type(model).load(out).to(rt.device).eval()


def nfm_on(codes: SAECodes, held_out: SAECodes, pairs: list, size: int, cfg: PlantedConfig, rt: Runtime,
           out: Path) -> dict[str, Any]:
    """An NFM trained on ``codes`` → its held-out interaction gain, 1 − SSE(full) / SSE(its linear pathway plus the
    interaction pathway's mean output on the training rows), with a CI over blocks of held-out rows; and the recall of
    the planted ``pairs`` (in ``codes``' feature indices)."""
    torch.manual_seed(cfg.seed)
    model = NFM(cfg.dictionary, cfg.d_model, cfg.nfm_embed_dim)
    nfm = fit(model, tuple(codes), lambda m, b: nfm_loss(m, b, "sparse"),
              lambda m: evaluate_nfm(m, held_out, "sparse", 4096), cfg, rt, out)
    errors = nfm_row_errors(nfm, held_out, "sparse", 4096)
    with torch.no_grad():  # the pathway's constant part is an intercept: the gain is that of its row-dependent part
        constant = nfm(codes.top_acts, codes.top_indices).interaction.mean(dim=0)
        out = nfm(held_out.top_acts, held_out.top_indices)
        errors["linear_only"] = row_sse(held_out.residual, out.linear + constant)
    per_block = held_out.residual.shape[0] // BLOCKS
    sums = {name: window_sums(values[: per_block * BLOCKS], per_block) for name, values in errors.items()}
    effects = pair_effects(nfm.cpu(), held_out.top_acts.cpu(), held_out.top_indices.cpu())
    gain = reduction_ci(sums["after"], sums["linear_only"], seed=cfg.seed)
    # a pathway whose output is constant differs from its mean only by float rounding: that is no gain
    gain.update({key: 0.0 for key in ("estimate", "low", "high") if abs(gain[key]) < ROUNDING})
    return {"interaction_gain": gain,
            "error_reduction": reduction_ci(sums["after"], sums["before"], seed=cfg.seed),
            **recall_at_planted(effects, pairs, size)}


def one_strength(cfg: PlantedConfig, strength: float, rt: Runtime, out: Path) -> dict[str, Any]:
    held_rows = max(BLOCKS, cfg.rows // 4)
    data = make_planted(cfg.rows + held_rows, cfg.d_model, cfg.dictionary, cfg.fire_probability, cfg.pairs, strength,
                        cfg.noise, cfg.seed)
    acts, indices = sparse_codes(data.codes)
    target = data.x - data.codes @ data.dictionary  # what a perfect SAE leaves: the interaction term and the noise
    codes = SAECodes(acts, indices, target)
    train, held_out = (SAECodes(*(t[part].to(rt.device) for t in codes))
                       for part in (slice(0, cfg.rows), slice(cfg.rows, None)))
    result = {"strength": strength, "true_codes": nfm_on(train, held_out, data.pairs, cfg.pairs, cfg, rt,
                                                         out / "true_codes")}
    if cfg.sae_variant:
        torch.manual_seed(cfg.seed)
        norm = NormStats.compute(data.x[: cfg.rows], 10_000, cfg.seed).to(rt.device)
        k = max(1, round(2 * cfg.fire_probability * cfg.dictionary))
        x = norm.normalize(data.x.to(rt.device))
        sae = fit(TopKSAE(cfg.d_model, cfg.dictionary, k), (x[: cfg.rows],),
                  lambda m, b: (F.mse_loss(m(b[0]).recon, b[0]), {}),
                  lambda m: {"loss": float(F.mse_loss(m(x[cfg.rows :]).recon, x[cfg.rows :]))}, cfg, rt, out / "sae")
        learned = sae_codes(sae, data.x.to(rt.device), norm, k, k, "sparse", 4096)
        matches, cosines = match_features(sae.W_dec.detach() * norm.std[None, :], data.dictionary.to(rt.device))
        pairs = mapped_pairs(data.pairs, matches)
        train, held_out = (SAECodes(*(t[part] for t in learned))
                           for part in (slice(0, cfg.rows), slice(cfg.rows, None)))
        result["sae_then_nfm"] = {**nfm_on(train, held_out, pairs, cfg.pairs, cfg, rt, out / "sae_nfm"), "sae_k": k,
                                  "mean_match_cosine": sum(cosines) / len(cosines),
                                  "pairs_lost_to_matching": cfg.pairs - len(pairs)}
    return result


def main(argv: list[str] | None = None) -> dict:
    cfg = stage_config(PlantedConfig, __doc__, argv)
    if not 0 < cfg.fire_probability < 1 or cfg.rows < 4 * BLOCKS or 2 * cfg.pairs > cfg.dictionary:
        raise UserError("need 0 < --fire_probability < 1, --rows >= 400 and 2 x --pairs <= --dictionary")
    out = OutputDir(cfg.output_dir, overwrite=cfg.overwrite, inputs=input_paths(cfg))
    rt = runtime(cfg)
    if rt.device.type == "cpu":
        torch.set_num_threads(1)  # arrays this small: a second thread only makes every small op wait for it
    with out.writing(clear=cfg.overwrite):
        runs = [one_strength(cfg, s, rt, out.path / f"s{s:g}") for s in sorted(cfg.strengths)]
        strong, twin = runs[-1]["true_codes"], next((r["true_codes"] for r in runs if r["strength"] == 0), None)
        holds = {"planted": bool(strong["interaction_gain"]["low"] > 0 and strong["recall"] >= 0.8),
                 "twin": None if twin is None else bool(twin["interaction_gain"]["low"] <= 0
                                                        <= twin["interaction_gain"]["high"])}
        results = {"stage": "planted", "config": dataclasses.asdict(cfg), "git_commit": git_commit(),
                   "strengths": runs, "rules": RULES, "holds": holds,
                   "strong": {"strength": runs[-1]["strength"], **strong}, "twin": twin}
        write_results(out.path, results)
    for run in runs:
        for variant in ("true_codes", "sae_then_nfm"):
            if variant in run:
                gain = run[variant]["interaction_gain"]
                print(f"s {run['strength']:g}, {variant}: interaction gain {100 * gain['estimate']:.2f}% "
                      f"[{100 * gain['low']:.2f}, {100 * gain['high']:.2f}], recall@|P| {run[variant]['recall']:.2f}")
    print(f"{RULES['planted']}: {holds['planted']}; {RULES['twin']}: {holds['twin']} -> {out.path}")
    return results


if __name__ == "__main__":
    run_cli(main)
