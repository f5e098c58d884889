"""Stages 1 and 3 as trained stages: an SAE trained on fixed rows in random batches, validated and evaluated on
held-out rows (METHOD §1, §3). Stage 1 trains on LM activations, stage 3 on the NFM's interaction vectors."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from common.analysis.core_terms import sae_terms
from common.data.activations import NormStats
from common.data.batches import RowBatches
from common.models.sae import TopKSAE
from common.stages.trained import StageData, StageRun, TrainedStage
from common.store.stage_files import write_firing_counts
from common.training.sae_objective import FINAL_KEYS, evaluate_sae, sae_metrics
from common.training.window_cis import rows_per_window, sae_cis


class SAETrainingStage(TrainedStage):
    """An SAE trained on fixed rows in random batches, validated and evaluated on held-out rows."""

    stage_label: str  # "stage 1"

    def sae_data(self, run: StageRun, train_rows: Tensor, val_rows: Tensor, norm: NormStats,
                 record: dict[str, Any], harvested_windows: int) -> StageData:
        """``harvested_windows``: how many windows this rank ran the LM on, for the record of what each rank did."""
        cfg, rt = self.cfg, run.rt
        norm_device = norm.to(rt.device)
        self.val_rows, self.norm = val_rows, norm

        def loss_fn(model: TopKSAE, batch: tuple[Tensor, ...]) -> tuple[Tensor, dict[str, Tensor]]:
            x = norm_device.normalize(batch[0])
            recon = model(x.to(model.W_dec.dtype), decode=rt.decode).recon
            return F.mse_loss(recon.float(), x), {}

        def validate(model: TopKSAE) -> dict[str, float]:
            return evaluate_sae(model, val_rows, norm, rt, cfg.batch_size, cfg.dead_threshold)

        batches = RowBatches((train_rows,), cfg.batch_size, cfg.seed, rt.device, world=rt.world)
        ranks = rt.world.gather({"harvested_windows": harvested_windows, "rows_per_step": batches.rows_per_rank})
        return StageData(batches, loss_fn, validate, norm, record, ranks=ranks)

    def evaluate(self, run: StageRun, data: StageData, best: TopKSAE) -> dict[str, Any]:
        """The held-out figures with their CIs over windows (METHOD §13); each feature's firing count is written
        beside them (``feature_firing.safetensors``)."""
        metrics = sae_metrics(best, self.val_rows, self.norm, run.rt, self.cfg.batch_size, self.cfg.dead_threshold,
                              rows_per_window=rows_per_window(self.cfg))
        final, window = metrics.compute(), metrics.per_window()
        write_firing_counts(run.out, metrics.firing, final["rows"])
        return {**{key: final[key] for key in FINAL_KEYS}, "l0_fraction": final["l0"] / best.num_features,
                "evaluated_rows": final["rows"], "ci": sae_cis(window, best.d_model), "per_window": window,
                # SAEBench's core terms (METHOD §15), on the same held-out rows in raw units
                "saebench_terms": sae_terms(best, self.val_rows, self.norm, run.rt.decode)}

    def print_table(self, metrics: dict[str, Any], out: Path) -> None:
        ci = metrics["ci"]["variance_explained"]
        interval = "" if ci is None else f" (95% CI {ci['low']:.4f}-{ci['high']:.4f} over windows)"
        print(f"{self.stage_label} done: variance explained {metrics['variance_explained']:.4f}{interval}, "
              f"MSE {metrics['mse']:.4f}, L0 {metrics['l0']:.1f} ({100 * metrics['l0_fraction']:.2f}%), "
              f"dead {100 * metrics['dead_fraction']:.2f}% -> {out}")
