"""Stage 3: a secondary TopK SAE on the NFM's interaction pathway, i.e. the vectors after the interaction MLP's first
Linear and before its ReLU (METHOD §3), trained with stage 1's recipe.

    python part10_sae_decomp_of_NFM.py                            # the paper's run (7,500 features, K 150)
    python part10_sae_decomp_of_NFM.py --preset cpu --sae1_model_path runs/cpu/sae1 --nfm_model_path runs/cpu/nfm
"""
from __future__ import annotations

import logging
import time

import torch
from torch import Tensor

from common.config.stages import SAE2Config
from common.data.activations import NormStats, open_stream
from common.data.chunks import ChunkPlan
from common.lm.model import release
from common.models.loading import StageInput, check_nfm_on_sae, load_nfm, load_sae
from common.models.sae import TopKSAE, check_sae_shape
from common.stages.cli import run_cli
from common.stages.sae_training import SAETrainingStage
from common.stages.trained import StageData, StageRun
from common.training.nfm_objective import interaction_vectors

log = logging.getLogger("part10")

COLLECT_TOKENS = 32_768  # LM tokens harvested at a time while collecting: bounds the raw activations held at once
# stage 1's stats, copied; norm_stats.safetensors is this stage's own
LM_NORM_STATS_FILE = "sae1_norm_stats.safetensors"


class Stage3(SAETrainingStage):
    config_class, description, stage_label = SAE2Config, __doc__, "stage 3"

    def load_inputs(self) -> list[StageInput]:
        cfg = self.cfg
        self.sae, self.lm_norm, sae_source = load_sae(cfg.sae1_model_path)
        self.nfm, nfm_source = load_nfm(cfg.nfm_model_path)
        check_nfm_on_sae(nfm_source, self.sae, sae_source, self.lm_norm)
        self.fed = nfm_source.config  # the SAE's inference K and top-N the NFM was trained with
        self.input_dim = self.nfm.embed_dim
        self.num_features = cfg.expansion * self.input_dim
        self.k = round(cfg.topk_ratio * self.num_features)
        check_sae_shape(self.input_dim, self.num_features, self.k)
        return [sae_source, nfm_source]

    def prepare(self, run: StageRun) -> StageData:
        cfg, rt = self.cfg, run.rt
        sae, nfm = self.sae.to(rt.device).eval(), self.nfm.to(rt.device).eval()
        stream = open_stream(cfg, run.lm)
        plan = ChunkPlan(stream, cfg.num_tokens, COLLECT_TOKENS)
        stream.harvest_share(plan.num_windows, rt.world)

        def vectors_of(rows: Tensor) -> Tensor:
            return interaction_vectors(nfm, sae, rows, self.lm_norm, self.fed["sae_k"], self.fed["top_n_features"],
                                       rt.decode, cfg.nfm_batch_size)

        started = time.perf_counter()
        val_vectors = vectors_of(stream.val_rows(max(1, cfg.val_tokens // cfg.window), within=plan.num_windows))
        blocks = (plan.train_rows(block) for block in range(plan.num_chunks))
        train_vectors = torch.cat([vectors_of(rows) for rows in blocks if rows is not None])
        self.collect_seconds = time.perf_counter() - started
        release(run.lm)
        log.info("collected %d train and %d validation interaction vectors in %.0f s",
                 train_vectors.shape[0], val_vectors.shape[0], self.collect_seconds)

        vector_norm = NormStats.compute(train_vectors, cfg.norm_rows, cfg.seed)
        record = {**stream.describe(), "windows": plan.num_windows, "train_rows": train_vectors.shape[0],
                  "val_rows": val_vectors.shape[0], "collect_seconds": self.collect_seconds}
        data = self.sae_data(run, train_vectors, val_vectors, vector_norm, record, stream.harvested_windows)
        sae_source, nfm_source = run.inputs
        data.extra = {
            "input": "NFM interaction vector Linear1(Dropout(h)) before the ReLU, z-scored with this directory's "
                     "norm stats",
            "input_dim": self.input_dim, "num_features": self.num_features, "k": self.k,
            "sae_k": self.fed["sae_k"], "top_n_features": self.fed["top_n_features"],
            "sae1": sae_source.record(), "nfm": nfm_source.record(), "lm_norm_stats_file": LM_NORM_STATS_FILE,
        }
        data.extra_stats = {LM_NORM_STATS_FILE: self.lm_norm}
        data.load_seconds = lambda: self.collect_seconds
        return data

    def build(self, run: StageRun) -> TopKSAE:
        return TopKSAE(self.input_dim, self.num_features, self.k, self.cfg.tied)

    def title(self) -> str:
        return f"Stage 3 secondary SAE on the NFM interaction pathway (F={self.num_features}, K={self.k})"

    def evaluate(self, run: StageRun, data: StageData, best: TopKSAE) -> dict:
        metrics = super().evaluate(run, data, best)
        metrics.update({"num_features": self.num_features, "k": self.k, "input_dim": self.input_dim,
                        "collect_seconds": self.collect_seconds,
                        "evaluated_on": f"{metrics['evaluated_rows']} interaction vectors of held-out windows "
                                        "(z-scored units)"})
        return metrics


def main(argv: list[str] | None = None) -> dict:
    return Stage3(argv).run()


if __name__ == "__main__":
    run_cli(main)
