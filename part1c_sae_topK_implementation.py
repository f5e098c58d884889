"""Stage 1: train the primary TopK SAE on layer-L residual activations (METHOD §1).

    python part1c_sae_topK_implementation.py                      # the paper's run (OpenLLaMA-3B, layer 16)
    python part1c_sae_topK_implementation.py --preset cpu         # SmolLM2-135M on WikiText, 2 CPU cores
"""
from __future__ import annotations

import logging
import time

from common.config.stages import SAE1Config
from common.data.activations import NormStats, open_stream
from common.errors import UserError
from common.lm.model import release
from common.models.sae import TopKSAE, check_sae_shape
from common.stages.cli import run_cli
from common.stages.sae_training import SAETrainingStage
from common.stages.trained import StageData, StageRun

log = logging.getLogger("part1c")


class Stage1(SAETrainingStage):
    config_class, description, stage_label = SAE1Config, __doc__, "stage 1"

    def check(self) -> None:
        if not 1 <= self.cfg.k <= self.cfg.features:
            raise UserError(f"--k {self.cfg.k} must be between 1 and --features {self.cfg.features}")

    def prepare(self, run: StageRun) -> StageData:
        cfg = self.cfg
        check_sae_shape(run.lm.d_model, cfg.features, cfg.k)
        stream = open_stream(cfg, run.lm)
        started = time.perf_counter()
        num_windows = max(1, cfg.num_tokens // cfg.window)
        stream.harvest_share(num_windows, run.rt.world)
        val_rows = stream.val_rows(max(1, cfg.val_tokens // cfg.window), within=num_windows)
        train_rows = stream.train_rows(0, num_windows)
        self.harvest_seconds = time.perf_counter() - started
        self.harvest_rate = (train_rows.shape[0] + val_rows.shape[0]) / self.harvest_seconds
        record = {**stream.describe(), "train_rows": int(train_rows.shape[0]), "val_rows": int(val_rows.shape[0]),
                  "harvest_tokens_per_second": self.harvest_rate}
        release(run.lm)
        log.info("harvested %d train and %d validation rows in %.0f s", train_rows.shape[0], val_rows.shape[0],
                 self.harvest_seconds)
        norm = NormStats.compute(train_rows, cfg.norm_rows, cfg.seed)
        data = self.sae_data(run, train_rows, val_rows, norm, record, stream.harvested_windows)
        data.load_seconds = lambda: self.harvest_seconds
        return data

    def build(self, run: StageRun) -> TopKSAE:
        return TopKSAE(run.lm.d_model, self.cfg.features, self.cfg.k, self.cfg.tied)

    def title(self) -> str:
        return f"Stage 1 TopK SAE (F={self.cfg.features}, K={self.cfg.k})"

    def evaluate(self, run: StageRun, data: StageData, best: TopKSAE) -> dict:
        metrics = super().evaluate(run, data, best)
        metrics["harvest_tokens_per_second"] = self.harvest_rate
        metrics["evaluated_on"] = f"{metrics['evaluated_rows']} held-out rows (normalized units)"
        return metrics


def main(argv: list[str] | None = None) -> dict:
    return Stage1(argv).run()


if __name__ == "__main__":
    run_cli(main)
