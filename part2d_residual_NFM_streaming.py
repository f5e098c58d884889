"""Stage 2: train an NFM to predict the stage-1 SAE's residual from its codes, streaming the LM chunk by chunk (SPEC §2).

    python part2d_residual_NFM_streaming.py                      # the paper's run (K 250, top 250 features)
    python part2d_residual_NFM_streaming.py --preset cpu --sae1_model_path runs/cpu/sae1
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path

import torch

from common.batches import ChunkedBatches
from common.checkpoint import load_weights, stage_dir, weights_sha256
from common.chunks import ChunkPlan, check_streaming_settings
from common.cli import run_cli
from common.config import NFMConfig, parse_config
from common.device import autocast, param_dtype
from common.errors import UserError
from common.loading import load_sae, require_same_lm
from common.nfm import NFM
from common.nfm_training import SAECodes, concat, evaluate_nfm, nfm_loss, sae_codes, subset
from common.plots import plot_training_history
from common.stage import (check_output_dir, finish_output_dir, model_record, open_lm, open_stream, runtime,
                          save_norm_stats, start_output_dir)
from common.train import Trainer

log = logging.getLogger("part2d")

ALIASES = {"sae1_model_path": ["--primary_sae_path"]}
EVAL_BATCH_ROWS = 1024  # evaluation and SAE-code batches: row-independent, so only speed depends on it
ERRORS = ("residual_mse_before", "residual_mse_after", "error_reduction")
COMPONENTS = ("mean_abs_linear", "mean_abs_interaction", "linear_share", "interaction_share")


def check_settings(cfg: NFMConfig, sae_k_trained: int) -> None:
    if not 1 <= cfg.sae_k <= sae_k_trained:
        raise UserError(f"--sae_k {cfg.sae_k} must be between 1 and the stage-1 SAE's K={sae_k_trained}")
    if not 1 <= cfg.top_n_features <= cfg.sae_k:
        raise UserError(f"--top_n_features {cfg.top_n_features} must be between 1 and --sae_k {cfg.sae_k}")
    check_streaming_settings(cfg)


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(NFMConfig, "nfm", __doc__, argv, ALIASES)
    out = check_output_dir(cfg.checkpoint_dir, cfg.resume, cfg.overwrite)
    sae, norm, sae_config = load_sae(cfg.sae1_model_path)
    check_settings(cfg, sae.k)
    rt = runtime(cfg)
    lm = open_lm(cfg, rt.device)
    record = model_record(lm, cfg.layer)
    require_same_lm(f"--sae1_model_path {cfg.sae1_model_path}", sae_config, record)
    sae = sae.to(rt.device).eval()
    stream = open_stream(cfg, lm)
    plan = ChunkPlan(stream, cfg.num_tokens, cfg.chunk_tokens)
    if min(plan.rows_in_chunk(c) for c in range(plan.num_chunks)) == 0:
        raise UserError(f"--chunk_tokens {cfg.chunk_tokens} leaves a chunk without training windows: use larger chunks")

    def codes_of(rows: torch.Tensor) -> SAECodes:
        return sae_codes(sae, rows, norm, cfg.sae_k, cfg.top_n_features, rt.decode, EVAL_BATCH_ROWS)

    started = time.perf_counter()
    val_codes = codes_of(stream.val_rows(max(1, cfg.val_tokens // cfg.window), within=plan.num_windows))
    val_seconds = time.perf_counter() - started
    num_val_rows = val_codes.residual.shape[0]
    sample_per_chunk = math.ceil(num_val_rows / plan.num_chunks)
    train_sample: dict[int, SAECodes] = {}
    load_seconds = 0.0  # LM and SAE time inside training, reported apart from the NFM's own

    def load_chunk(chunk: int) -> tuple[torch.Tensor, ...] | None:
        """Harvest the chunk's training windows and turn them into the NFM's data; keep a fixed sample for train figures."""
        nonlocal load_seconds
        started = time.perf_counter()
        rows = plan.train_rows(chunk)
        if rows is None:
            return None
        if rows.shape[0] != plan.rows_in_chunk(chunk):
            raise RuntimeError(f"chunk {chunk}: {rows.shape[0]} rows harvested, {plan.rows_in_chunk(chunk)} planned")
        codes = codes_of(rows)
        pick = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(cfg.seed + chunk))[:sample_per_chunk]
        train_sample[chunk] = subset(codes, pick)
        load_seconds += time.perf_counter() - started
        log.info("chunk %d/%d: %d training rows", chunk + 1, plan.num_chunks, rows.shape[0])
        return tuple(codes)

    batches = ChunkedBatches(load_chunk, plan.rows_in_chunk, plan.num_chunks, cfg.epochs_per_chunk, cfg.batch_size,
                             cfg.seed, rt.device)
    if cfg.train_steps is None:
        cfg = dataclasses.replace(cfg, train_steps=batches.total_steps)
    sae1_dir = stage_dir(cfg.sae1_model_path, "--sae1_model_path")
    data = {**stream.describe(), "windows": plan.num_windows, "chunks": plan.num_chunks, "chunk_windows": plan.chunk_windows,
            "val_rows": num_val_rows, "steps_from_chunks": batches.total_steps}
    extra = {"num_features": sae.num_features, "sae_k": cfg.sae_k, "top_n_features": cfg.top_n_features,
             "sae1": {"path": str(cfg.sae1_model_path), "weights_sha256": weights_sha256(sae1_dir)},
             "data": data, "precision_regime": rt.precision, "decode_path": rt.decode}
    start_output_dir(out, cfg, record, "nfm", extra)
    save_norm_stats(norm, out)

    torch.manual_seed(cfg.seed)
    nfm = NFM(sae.num_features, lm.d_model, cfg.nfm_k, cfg.dropout)

    def validate(model: NFM) -> dict[str, float]:
        return evaluate_nfm(model, val_codes, rt.decode, EVAL_BATCH_ROWS)

    trainer = Trainer(nfm, cfg, out, rt.device, rt.precision, lambda m, b: nfm_loss(m, b, rt.decode), batches, validate)
    started = time.perf_counter()
    history = trainer.fit(resume=cfg.resume)
    train_seconds = max(time.perf_counter() - started - load_seconds, 1e-9)
    steps = trainer.step

    last_chunk = batches.locate(max(steps - 1, 0))[0]
    for chunk in range(min(last_chunk + 1, plan.num_chunks)):
        if chunk not in train_sample:  # chunks trained before a --resume: harvest again for the train figures
            load_chunk(chunk)
    best = NFM(sae.num_features, lm.d_model, cfg.nfm_k, cfg.dropout)
    best.load_state_dict(load_weights(out))
    best = best.to(rt.device, param_dtype(rt.precision)).eval()
    sample = concat([train_sample[c] for c in sorted(train_sample)])
    with autocast(rt.precision, rt.device):
        val = evaluate_nfm(best, val_codes, rt.decode, EVAL_BATCH_ROWS)
        train = evaluate_nfm(best, sample, rt.decode, EVAL_BATCH_ROWS)

    metrics = {
        **{f"{key}_train": train[key] for key in ERRORS},
        **{f"{key}_val": val[key] for key in ERRORS},
        **{key: val[key] for key in COMPONENTS},
        "components_evaluated_on": "validation rows",
        "train_evaluated_on": f"a fixed sample of {sample.residual.shape[0]} training rows "
                              f"(up to {sample_per_chunk} from each of chunks 1-{len(train_sample)})",
        "val_evaluated_on": f"{num_val_rows} rows of held-out windows (normalized units)",
        "train_components": {key: train[key] for key in COMPONENTS},
        "num_features": sae.num_features,
        "sae_k": cfg.sae_k,
        "top_n_features": cfg.top_n_features,
        "steps": steps,
        "planned_steps": cfg.train_steps,
        "train_seconds": train_seconds,
        "chunk_load_seconds": load_seconds + val_seconds,
        "train_rows_per_second": steps * cfg.batch_size / train_seconds,
        "precision_regime": rt.precision,
        "decode_path": rt.decode,
        "history": history,
    }
    title = f"Stage 2 NFM on the SAE residual (F={sae.num_features}, K={cfg.sae_k}, top {cfg.top_n_features}, k={cfg.nfm_k})"
    plot_training_history(history, out / "training_curves.png", title)
    finish_output_dir(out, metrics)
    print_table(metrics, out)
    return metrics


def print_table(metrics: dict, out: Path) -> None:
    """The paper's table: residual error before/after on train and validation, then the two pathways' magnitudes."""
    print(f"stage 2 NFM (SAE K {metrics['sae_k']}, top {metrics['top_n_features']} features; "
          f"{metrics['precision_regime']}, {metrics['decode_path']} decode; {metrics['steps']} steps)")
    print(f"{'':<12}{'residual MSE':>14}{'after NFM':>11}{'reduction':>11}")
    for split, name in (("train", "train"), ("val", "validation")):
        print(f"{name:<12}{metrics[f'residual_mse_before_{split}']:>14.4f}{metrics[f'residual_mse_after_{split}']:>11.4f}"
              f"{100 * metrics[f'error_reduction_{split}']:>10.2f}%")
    print(f"{'pathway':<12}{'mean |out|':>14}{'share':>11}")
    for name in ("linear", "interaction"):
        print(f"{name:<12}{metrics[f'mean_abs_{name}']:>14.4f}{100 * metrics[f'{name}_share']:>10.1f}%")
    print(f"-> {out}")


if __name__ == "__main__":
    run_cli(main)
