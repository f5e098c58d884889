"""Training and evaluating a TopK SAE on a fixed set of rows: stage 1 (LM activations) and stage 3 (the NFM's
interaction vectors) both call this, so there is one SAE training recipe."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from common.activations import NormStats
from common.batches import RowBatches
from common.checkpoint import load_weights
from common.metrics import ReconstructionMetrics
from common.plots import plot_training_history
from common.sae import TopKSAE
from common.stage import Runtime
from common.train import Trainer


def evaluate_sae(sae: TopKSAE, rows: Tensor, norm: NormStats, rt: Runtime, batch_size: int,
                 dead_threshold: float = 1e-6, k: int | None = None) -> dict[str, float]:
    """Whole-set metrics in normalized units: mse, variance_explained, fvu, l0, dead_fraction."""
    metrics = ReconstructionMetrics(sae.num_features, dead_threshold)
    norm = norm.to(rt.device)
    dtype = sae.W_dec.dtype
    with torch.no_grad():
        for start in range(0, rows.shape[0], batch_size):
            x = norm.normalize(rows[start : start + batch_size].to(rt.device))
            out = sae(x.to(dtype), k=k, decode=rt.decode)
            metrics.update(x, out.recon.float(), out.top_acts, out.top_indices)
    result = metrics.compute()
    result["loss"] = result["mse"]
    return result


def train_sae(sae: TopKSAE, train_rows: Tensor, val_rows: Tensor, norm: NormStats, cfg: Any, rt: Runtime,
              out_dir: Path) -> tuple[TopKSAE, dict]:
    """Train with the shared trainer; returns the best (lowest validation MSE) SAE and the history."""
    norm_device = norm.to(rt.device)
    batches = RowBatches((train_rows,), cfg.batch_size, cfg.seed, rt.device)

    def loss_fn(model: TopKSAE, batch: tuple[Tensor, ...]) -> tuple[Tensor, dict[str, Tensor]]:
        x = norm_device.normalize(batch[0])
        recon = model(x.to(model.W_dec.dtype), decode=rt.decode).recon
        return F.mse_loss(recon.float(), x), {}

    def validate(model: TopKSAE) -> dict[str, float]:
        return evaluate_sae(model, val_rows, norm, rt, cfg.batch_size, cfg.dead_threshold)

    trainer = Trainer(sae, cfg, out_dir, rt.device, rt.precision, loss_fn, batches, validate)
    history = trainer.fit(resume=cfg.resume)
    best = TopKSAE(sae.d_model, sae.num_features, sae.k, sae.tied).to(rt.device)
    best.load_state_dict(load_weights(out_dir))
    return best, history


def run_sae_stage(sae: TopKSAE, train_rows: Tensor, val_rows: Tensor, norm: NormStats, cfg: Any, rt: Runtime,
                  out_dir: Path, title: str) -> dict[str, Any]:
    """Train, evaluate the best SAE on the validation rows and plot the curves: the figures every SAE stage reports."""
    started = time.perf_counter()
    sae, history = train_sae(sae, train_rows, val_rows, norm, cfg, rt, out_dir)
    train_seconds = time.perf_counter() - started
    final = evaluate_sae(sae, val_rows, norm, rt, cfg.batch_size, cfg.dead_threshold)
    steps = history["train"][-1]["step"] if history["train"] else 0
    plot_training_history(history, out_dir / "training_curves.png", title)
    return {
        **{key: final[key] for key in ("variance_explained", "mse", "fvu", "l0", "dead_fraction")},
        "l0_fraction": final["l0"] / sae.num_features,
        "steps": steps,
        "train_seconds": train_seconds,
        "train_rows_per_second": steps * cfg.batch_size / max(train_seconds, 1e-9),
        "precision_regime": rt.precision,
        "decode_path": rt.decode,
        "evaluated_rows": final["rows"],
        "history": history,
    }


def sae_summary(stage: str, metrics: dict[str, Any], out_dir: Path) -> str:
    return (f"{stage} done: variance explained {metrics['variance_explained']:.4f}, MSE {metrics['mse']:.4f}, "
            f"L0 {metrics['l0']:.1f} ({100 * metrics['l0_fraction']:.2f}%), dead {100 * metrics['dead_fraction']:.2f}% -> {out_dir}")
