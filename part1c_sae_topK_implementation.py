"""Stage 1: train the primary TopK SAE on layer-L residual activations (SPEC §1).

    python part1c_sae_topK_implementation.py                      # the paper's run (OpenLLaMA-3B, layer 16)
    python part1c_sae_topK_implementation.py --preset cpu         # SmolLM2-135M on WikiText, 2 CPU cores
"""
from __future__ import annotations

import logging
import time

from common.activations import NormStats
from common.cli import run_cli
from common.config import SAE1Config, parse_config
from common.errors import UserError
from common.plots import plot_training_history
from common.sae import TopKSAE, check_sae_shape
from common.sae_training import evaluate_sae, train_sae
from common.stage import (check_output_dir, finish_output_dir, model_record, open_lm, open_stream, release, runtime,
                          save_norm_stats, start_output_dir)

log = logging.getLogger("part1c")


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(SAE1Config, "sae1", __doc__, argv)
    if not 1 <= cfg.k <= cfg.features:
        raise UserError(f"--k {cfg.k} must be between 1 and --features {cfg.features}")
    out = check_output_dir(cfg.checkpoint_dir, cfg.resume, cfg.overwrite)
    rt = runtime(cfg)
    lm = open_lm(cfg, rt.device)
    check_sae_shape(lm.d_model, cfg.features, cfg.k)
    record = model_record(lm, cfg.layer)
    stream = open_stream(cfg, lm)

    started = time.perf_counter()
    num_windows = max(1, cfg.num_tokens // cfg.window)
    val_rows = stream.val_rows(max(1, cfg.val_tokens // cfg.window), within=num_windows)
    train_rows = stream.train_rows(0, num_windows)
    harvest_seconds = time.perf_counter() - started
    data = {**stream.describe(), "train_rows": int(train_rows.shape[0]), "val_rows": int(val_rows.shape[0]),
            "harvest_tokens_per_second": (train_rows.shape[0] + val_rows.shape[0]) / harvest_seconds}
    release(lm)
    log.info("harvested %d train and %d validation rows in %.0f s", train_rows.shape[0], val_rows.shape[0], harvest_seconds)

    norm = NormStats.compute(train_rows, cfg.norm_rows, cfg.seed)
    start_output_dir(out, cfg, record, "sae1", {"data": data, "precision_regime": rt.precision, "decode_path": rt.decode})
    save_norm_stats(norm, out)

    sae = TopKSAE(lm.d_model, cfg.features, cfg.k, cfg.tied)
    started = time.perf_counter()
    sae, history = train_sae(sae, train_rows, val_rows, norm, cfg, rt, out)
    train_seconds = time.perf_counter() - started
    final = evaluate_sae(sae, val_rows, norm, rt, cfg.batch_size, cfg.dead_threshold)
    steps = history["train"][-1]["step"] if history["train"] else 0
    metrics = {
        **{key: final[key] for key in ("variance_explained", "mse", "fvu", "l0", "dead_fraction")},
        "l0_fraction": final["l0"] / cfg.features,
        "steps": steps,
        "train_rows_per_second": steps * cfg.batch_size / max(train_seconds, 1e-9),
        "harvest_tokens_per_second": data["harvest_tokens_per_second"],
        "precision_regime": rt.precision,
        "decode_path": rt.decode,
        "evaluated_on": f"{final['rows']} held-out rows (normalized units)",
        "history": history,
    }
    plot_training_history(history, out / "training_curves.png", f"Stage 1 TopK SAE (F={cfg.features}, K={cfg.k})")
    finish_output_dir(out, metrics)
    print(f"stage 1 done: variance explained {final['variance_explained']:.4f}, MSE {final['mse']:.4f}, "
          f"L0 {final['l0']:.1f} ({100 * metrics['l0_fraction']:.2f}%), dead {100 * final['dead_fraction']:.2f}% -> {out}")
    return metrics


if __name__ == "__main__":
    run_cli(main)
