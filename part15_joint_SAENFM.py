"""Stage 5: train a TopK SAE and an NFM on its codes together, streaming the LM chunk by chunk (SPEC §5).

    python part15_joint_SAENFM.py                                   # the paper's run (F 50,000, K 1,024, top 512)
    python part15_joint_SAENFM.py --preset cpu --sae1_model_path runs/cpu/sae1 --compare_sequential runs/cpu/nfm
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import torch

from common.activations import NORM_STATS_FILE, NormStats
from common.batches import ChunkedBatches
from common.checkpoint import METRICS_FILE, load_json, load_weights, read_stage, stage_dir, weights_sha256
from common.chunks import ChunkPlan, check_streaming_settings
from common.cli import run_cli
from common.config import JointConfig, parse_config
from common.device import autocast, param_dtype
from common.errors import UserError
from common.joint import JointSAENFM, paper_parameter_counts, unique_parameter_counts, with_shares
from common.joint_training import evaluate_joint, joint_loss
from common.loading import load_sae, require_same_lm
from common.plots import plot_training_history
from common.sae import check_sae_shape
from common.sae_training import evaluate_sae
from common.stage import (Runtime, check_output_dir, finish_output_dir, model_record, open_lm, open_stream, runtime,
                          save_norm_stats, start_output_dir)
from common.train import Trainer

log = logging.getLogger("part15")

ALIASES = {"sae1_model_path": ["--primary_sae_path"]}
EVAL_BATCH_ROWS = 1024  # evaluation batches: row-independent, so only speed depends on it
PAPER_EVAL_ROWS = 1_000  # the paper's figures came from the first 1,000 training tokens of the first chunk
VALIDATION_KEYS = ("loss", "sae_part_mse", "improvement", "linear_share")  # per-validation history (the curves)
# Where each part's tensors sit in best_model.safetensors, recorded in config.json for stages 16-18
# (common.loading.load_joint loads them all as one module, load_sae the SAE part alone).
WEIGHT_PARTS = {"sae": "sae.", "nfm_linear": ["nfm.linear_weight", "nfm.linear_bias"],
                "nfm_interaction": ["nfm.embeddings", "nfm.mlp.*"]}


def check_settings(cfg: JointConfig) -> None:
    if not 1 <= cfg.k <= cfg.features:
        raise UserError(f"--k {cfg.k} must be between 1 and --features {cfg.features}")
    if not 1 <= cfg.top_n_features <= cfg.k:
        raise UserError(f"--top_n_features {cfg.top_n_features} must be between 1 and --k {cfg.k}")
    check_streaming_settings(cfg)
    if not 0.0 <= cfg.dropout < 1.0:
        raise UserError(f"--dropout {cfg.dropout} must be in [0, 1)")


def read_sequential(path: str) -> tuple[dict, float]:
    """A finished stage-2 directory's config and its validation error reduction (the sequential pipeline's gain)."""
    folder, config = read_stage(path, "--compare_sequential", ("nfm",))
    metrics = load_json(folder / METRICS_FILE)
    if "error_reduction_val" not in metrics:
        raise UserError(f"--compare_sequential {path}: its metrics.json has no error_reduction_val")
    return config, float(metrics["error_reduction_val"])


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(JointConfig, "joint", __doc__, argv, ALIASES)
    check_settings(cfg)
    out = check_output_dir(cfg.checkpoint_dir, cfg.resume, cfg.overwrite)
    sae1 = load_sae(cfg.sae1_model_path) if cfg.sae1_model_path else None  # (SAE, its norm stats, its config)
    sequential = read_sequential(cfg.compare_sequential) if cfg.compare_sequential else None
    rt = runtime(cfg)
    lm = open_lm(cfg, rt.device)
    check_sae_shape(lm.d_model, cfg.features, cfg.k)
    record = model_record(lm, cfg.layer)
    if sae1 is not None:
        require_same_lm(f"--sae1_model_path {cfg.sae1_model_path}", sae1[2], record)
    if sequential is not None:
        require_same_lm(f"--compare_sequential {cfg.compare_sequential}", sequential[0], record)
    stream = open_stream(cfg, lm)
    plan = ChunkPlan(stream, cfg.num_tokens, cfg.chunk_tokens)

    started = time.perf_counter()
    val_rows = stream.val_rows(max(1, cfg.val_tokens // cfg.window), within=plan.num_windows)
    harvested: dict[int, torch.Tensor] = {}  # chunk 0 when its rows also gave the normalization stats
    if sae1 is not None:
        norm, norm_source = sae1[1], f"--sae1_model_path {cfg.sae1_model_path}"
    elif cfg.resume and (out / NORM_STATS_FILE).is_file():
        norm, norm_source = NormStats.load(out / NORM_STATS_FILE), "this run, before it was resumed"
    else:
        # As stage 1 computes them (a random subset of up to --norm_rows rows), from the first chunk's training rows,
        # harvested once and then trained on. The original recomputed them per chunk; one set serves every later stage.
        harvested[0] = plan.train_rows(0)
        norm = NormStats.compute(harvested[0], cfg.norm_rows, cfg.seed)
        norm_source = f"{min(cfg.norm_rows, harvested[0].shape[0])} random training rows of chunk 1"
    seconds = {"harvest_before_training": time.perf_counter() - started, "chunk_loads": 0.0}
    paper_rows: list[torch.Tensor] = []

    def load_chunk(chunk: int) -> tuple[torch.Tensor, ...] | None:
        started = time.perf_counter()
        rows = harvested.pop(chunk, None)
        rows = plan.train_rows(chunk) if rows is None else rows
        if rows is None:
            return None
        if rows.shape[0] != plan.rows_in_chunk(chunk):
            raise RuntimeError(f"chunk {chunk}: {rows.shape[0]} rows harvested, {plan.rows_in_chunk(chunk)} planned")
        if chunk == 0:
            paper_rows.append(rows[:PAPER_EVAL_ROWS].clone())
        seconds["chunk_loads"] += time.perf_counter() - started
        log.info("chunk %d/%d: %d training rows", chunk + 1, plan.num_chunks, rows.shape[0])
        return (rows,)

    batches = ChunkedBatches(load_chunk, plan.rows_in_chunk, plan.num_chunks, cfg.epochs_per_chunk, cfg.batch_size,
                             cfg.seed, rt.device)
    if cfg.train_steps is None:
        cfg = dataclasses.replace(cfg, train_steps=batches.total_steps)
    data = {**stream.describe(), "windows": plan.num_windows, "chunks": plan.num_chunks, "chunk_windows": plan.chunk_windows,
            "val_rows": int(val_rows.shape[0]), "steps_from_chunks": batches.total_steps, "norm_stats_from": norm_source}
    extra = {"num_features": cfg.features, "sae_k": cfg.k, "top_n_features": cfg.top_n_features, "parts": WEIGHT_PARTS,
             "data": data, "precision_regime": rt.precision, "decode_path": rt.decode}
    if sae1 is not None:
        sae1_dir = stage_dir(cfg.sae1_model_path, "--sae1_model_path")
        extra["sae1"] = {"path": str(cfg.sae1_model_path), "weights_sha256": weights_sha256(sae1_dir)}
    start_output_dir(out, cfg, record, "joint", extra)
    save_norm_stats(norm, out)

    torch.manual_seed(cfg.seed)
    joint = JointSAENFM(lm.d_model, cfg.features, cfg.k, cfg.nfm_k, cfg.top_n_features, cfg.dropout, cfg.tied)
    norm_device = norm.to(rt.device)

    def loss_fn(model: JointSAENFM, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return joint_loss(model, norm_device.normalize(batch[0]), rt.decode)

    def validate(model: JointSAENFM) -> dict[str, float]:
        figures = evaluate_joint(model, val_rows, norm, rt.decode, EVAL_BATCH_ROWS, cfg.dead_threshold)
        return {key: figures[key] for key in VALIDATION_KEYS}

    trainer = Trainer(joint, cfg, out, rt.device, rt.precision, loss_fn, batches, validate)
    started = time.perf_counter()
    history = trainer.fit(resume=cfg.resume)
    fit_seconds = time.perf_counter() - started

    if not paper_rows:  # chunk 1 was trained before a --resume: harvest the start of it again
        paper_rows.append(plan.train_rows(0)[:PAPER_EVAL_ROWS])
    best = JointSAENFM(lm.d_model, cfg.features, cfg.k, cfg.nfm_k, cfg.top_n_features, cfg.dropout, cfg.tied)
    best.load_state_dict(load_weights(out))
    best = best.to(rt.device, param_dtype(rt.precision)).eval()
    metrics = evaluate_all(best, cfg, rt, norm, val_rows, paper_rows[0], sae1, sequential)
    train_seconds = max(fit_seconds - seconds["chunk_loads"], 1e-9)
    metrics.update({
        "steps": trainer.step,
        "planned_steps": cfg.train_steps,
        "train_seconds": train_seconds,
        "chunk_load_seconds": seconds["harvest_before_training"] + seconds["chunk_loads"],
        "train_rows_per_second": trainer.step * cfg.batch_size / train_seconds,
        "precision_regime": rt.precision,
        "decode_path": rt.decode,
        "history": history,
    })
    plot_training_history(history, out / "training_curves.png",
                          f"Stage 5 joint SAE + NFM (F={cfg.features}, K={cfg.k}, top {cfg.top_n_features}, k={cfg.nfm_k})")
    finish_output_dir(out, metrics)
    print_table(metrics, cfg, out)
    return metrics


def evaluate_all(best: JointSAENFM, cfg: JointConfig, rt: Runtime, norm: NormStats, val_rows: torch.Tensor,
                 paper_rows: torch.Tensor, sae1: tuple | None, sequential: tuple[dict, float] | None) -> dict:
    """The final figures of metrics.json, each comparison named (SPEC §5)."""
    with autocast(rt.precision, rt.device):
        val = evaluate_joint(best, val_rows, norm, rt.decode, EVAL_BATCH_ROWS, cfg.dead_threshold)
        on_paper_rows = evaluate_joint(best, paper_rows, norm, rt.decode, EVAL_BATCH_ROWS, cfg.dead_threshold)
    metrics = {key: val[key] for key in val if key not in ("loss", "rows")}
    metrics["evaluated_on"] = f"{val['rows']} rows of held-out windows (normalized units)"
    if sae1 is not None:
        standalone = sae1[0].to(rt.device, param_dtype(rt.precision)).eval()
        with autocast(rt.precision, rt.device):
            figures = evaluate_sae(standalone, val_rows, norm, rt, EVAL_BATCH_ROWS, cfg.dead_threshold)
        metrics["standalone_sae_mse"] = figures["mse"]
        metrics["standalone_sae_variance_explained"] = figures["variance_explained"]
        metrics["improvement_vs_standalone"] = 1.0 - val["joint_mse"] / figures["mse"]
        metrics["standalone_sae"] = (f"stage-1 SAE {cfg.sae1_model_path} (F {standalone.num_features}, K {standalone.k}) "
                                     "on the same rows")
    if sequential is not None:
        stage2_config, error_reduction = sequential
        metrics["sequential_improvement_val"] = error_reduction
        metrics["sequential"] = (f"stage 2 {cfg.compare_sequential}: its error_reduction_val, the NFM on the residual of the "
                                 f"stage-1 SAE at K {stage2_config['sae_k']}, top {stage2_config['top_n_features']}")
    metrics["paper_recipe"] = {
        **{key: on_paper_rows[key] for key in ("joint_mse", "sae_part_mse", "improvement", "linear_share", "interaction_share")},
        "evaluated_on": f"the first {on_paper_rows['rows']} training rows of chunk 1 (training data, as the paper measured)",
    }
    metrics["parameters"] = {
        "paper_style": {**with_shares(paper_parameter_counts(best.sae.d_model, cfg.features, cfg.nfm_k)),
                        "recipe": "encoder (F·d + F) and decoder (F·d) counted apart even when tied, as the paper"},
        "unique_tensors": {**with_shares(unique_parameter_counts(best)),
                           "recipe": "each parameter tensor once (a tied SAE's F × d matrix is encoder and decoder)"},
    }
    return metrics


def print_table(metrics: dict, cfg: JointConfig, out: Path) -> None:
    """The paper's figures beside ours, each line saying how its figure is computed."""
    pct = lambda value: f"{100 * value:.1f}%"  # noqa: E731
    print(f"stage 5 joint SAE + NFM (F {cfg.features}, K {cfg.k}, top {cfg.top_n_features}, k {cfg.nfm_k}; "
          f"{metrics['precision_regime']}, {metrics['decode_path']} decode; {metrics['steps']} steps)")
    print(f"{'held-out rows, normalized units, unless said':<52}{'ours':>20}{'paper':>16}")
    rows = [("joint MSE: SAE + NFM linear + NFM interaction", f"{metrics['joint_mse']:.4f}", "0.162"),
            ("  MSE of its own SAE path alone", f"{metrics['sae_part_mse']:.4f}", "0.275"),
            ("  improvement = 1 - joint / own SAE path", pct(metrics["improvement"]), "41.3%")]
    if "sequential_improvement_val" in metrics:
        rows.append(("  sequential: stage 2's NFM on the SAE residual", pct(metrics["sequential_improvement_val"]), "23%"))
    if "standalone_sae_mse" in metrics:
        rows += [("MSE of the standalone stage-1 SAE", f"{metrics['standalone_sae_mse']:.4f}", "-"),
                 ("  improvement = 1 - joint / standalone SAE", pct(metrics["improvement_vs_standalone"]), "-")]
    paper_recipe = metrics["paper_recipe"]
    rows += [("paper's recipe, first 1,000 training rows: joint", f"{paper_recipe['joint_mse']:.4f}", "0.162"),
             ("  own SAE path / improvement", f"{paper_recipe['sae_part_mse']:.4f} / {pct(paper_recipe['improvement'])}",
              "0.275 / 41.3%"),
             ("mean |output| over rows and dims: linear path", f"{metrics['mean_abs_linear']:.3f} ({pct(metrics['linear_share'])})",
              "0.347 (94.0%)"),
             ("  interaction path", f"{metrics['mean_abs_interaction']:.3f} ({pct(metrics['interaction_share'])})",
              "0.022 (6.0%)"),
             ("error cut by adding the linear path to the SAE path", pct(metrics["linear_contribution"]), "-"),
             ("  then by adding the interaction path", pct(metrics["interaction_contribution"]), "-")]
    paper_style, unique = metrics["parameters"]["paper_style"], metrics["parameters"]["unique_tensors"]
    shares = paper_style["shares"]
    rows += [("parameters, encoder and decoder counted apart", f"{paper_style['total']:,}", "496,106,700"),
             ("  NFM linear layer, share of that count", pct(shares["nfm_linear"]), "32.3%"),
             ("  embeddings + MLP, share of that count", pct(shares["nfm_embeddings"] + shares["nfm_mlp"]), "3%"),
             ("parameters, unique tensors (tied weight once)", f"{unique['total']:,}", "336,106,700")]
    for name, ours, paper in rows:
        print(f"{name:<52}{ours:>20}{paper:>16}")
    print(f"-> {out}")

if __name__ == "__main__":
    run_cli(main)
