"""Stage 5: train a TopK SAE and an NFM on its codes together, streaming the LM chunk by chunk (METHOD §5).

    python part15_joint_SAENFM.py                                   # the paper's run (F 50,000, K 1,024, top 512)
    python part15_joint_SAENFM.py --preset cpu --sae1_model_path runs/cpu/sae1 --nfm_model_path runs/cpu/nfm
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from common.analysis.core_terms import joint_terms
from common.config.stages import JointConfig
from common.data.activations import NORM_STATS_FILE, NormStats, open_stream
from common.data.chunks import ChunkPlan, StreamedChunks, check_streaming_settings
from common.errors import UserError
from common.models.joint import JointSAENFM
from common.models.loading import StageInput, load_sae, open_input
from common.models.sae import check_sae_shape
from common.paths import portable
from common.runtime.regimes import autocast
from common.stages.cli import run_cli
from common.stages.trained import StageData, StageRun, TrainedStage
from common.store.stage_files import write_firing_counts
from common.training.joint_objective import evaluate_joint, format_joint_table, joint_loss, joint_stage_metrics
from common.training.metrics import EVAL_BATCH_ROWS
from common.training.window_cis import rows_per_window

PAPER_EVAL_ROWS = 1_000  # the paper's figures came from the first 1,000 training tokens of the first chunk
VALIDATION_KEYS = ("loss", "sae_part_mse", "improvement", "linear_share")  # per-validation history (the curves)
# Where each part's tensors sit in best_model.safetensors, recorded in config.json for stages 6-8.
WEIGHT_PARTS = {"sae": "sae.", "nfm_linear": ["nfm.linear_weight", "nfm.linear_bias"],
                "nfm_interaction": ["nfm.embeddings", "nfm.mlp.*"]}


class Stage5(TrainedStage):
    config_class, description = JointConfig, __doc__

    def check(self) -> None:
        cfg = self.cfg
        if not 1 <= cfg.k <= cfg.features:
            raise UserError(f"--k {cfg.k} must be between 1 and --features {cfg.features}")
        if not 1 <= cfg.top_n_features <= cfg.k:
            raise UserError(f"--top_n_features {cfg.top_n_features} must be between 1 and --k {cfg.k}")
        check_streaming_settings(cfg)
        if not 0.0 <= cfg.dropout < 1.0:
            raise UserError(f"--dropout {cfg.dropout} must be in [0, 1)")

    def load_inputs(self) -> list[StageInput]:
        cfg, inputs = self.cfg, []
        self.sae1 = self.sequential = None
        if cfg.sae1_model_path:
            self.sae1 = load_sae(cfg.sae1_model_path)
            inputs.append(self.sae1[2])
        if cfg.nfm_model_path:  # the sequential pipeline's gain, printed beside the joint one
            self.sequential = open_input(cfg.nfm_model_path, "--nfm_model_path", ("nfm",))
            if "error_reduction_val" not in self.sequential.metrics():
                raise UserError(f"{self.sequential.what}: its metrics.json has no error_reduction_val")
            inputs.append(self.sequential)
        return inputs

    def prepare(self, run: StageRun) -> StageData:
        cfg, rt, out = self.cfg, run.rt, run.out
        check_sae_shape(run.lm.d_model, cfg.features, cfg.k)
        stream = open_stream(cfg, run.lm)
        plan = ChunkPlan(stream, cfg.num_tokens, cfg.chunk_tokens)
        started = time.perf_counter()
        self.val_rows = stream.val_rows(max(1, cfg.val_tokens // cfg.window), within=plan.num_windows)
        prefetched: dict[int, torch.Tensor] = {}  # chunk 0 when its rows also gave the normalization stats
        if self.sae1 is not None:
            norm, norm_source = self.sae1[1], self.sae1[2].what
        elif cfg.resume and (out / NORM_STATS_FILE).is_file():
            norm, norm_source = NormStats.load(out / NORM_STATS_FILE), "this run, before it was resumed"
        else:
            # As stage 1 computes them (a random subset of up to --norm_rows rows), from the first chunk's training
            # rows, harvested once and then trained on. The original recomputed them per chunk; one set serves all.
            prefetched[0] = plan.train_rows(0)
            norm = NormStats.compute(prefetched[0], cfg.norm_rows, cfg.seed)
            norm_source = f"{min(cfg.norm_rows, prefetched[0].shape[0])} random training rows of chunk 1"
        before_training = time.perf_counter() - started
        self.norm, self.paper_rows = norm, []

        def convert(chunk: int, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
            if chunk == 0:
                self.paper_rows.append(rows[:PAPER_EVAL_ROWS].clone())
            return (rows,)

        self.chunks = chunks = StreamedChunks(plan, convert, prefetched)
        self.plan, batches = plan, chunks.batches(cfg, rt.device)
        norm_device = norm.to(rt.device)

        def loss_fn(model: JointSAENFM, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, dict]:
            return joint_loss(model, norm_device.normalize(batch[0]), rt.decode)

        def validate(model: JointSAENFM) -> dict[str, float]:
            figures = evaluate_joint(model, self.val_rows, norm, rt.decode, EVAL_BATCH_ROWS, cfg.dead_threshold)
            return {key: figures[key] for key in VALIDATION_KEYS}

        record = {**stream.describe(), **chunks.record(batches), "val_rows": int(self.val_rows.shape[0]),
                  "norm_stats_from": norm_source}
        extra = {"num_features": cfg.features, "sae_k": cfg.k, "top_n_features": cfg.top_n_features,
                 "parts": WEIGHT_PARTS}
        if self.sae1 is not None:
            extra["sae1"] = self.sae1[2].record()
        return StageData(batches, loss_fn, validate, norm, record, extra, train_steps=batches.total_steps,
                         load_seconds=lambda: before_training + chunks.seconds)

    def build(self, run: StageRun) -> JointSAENFM:
        cfg = self.cfg
        return JointSAENFM(run.lm.d_model, cfg.features, cfg.k, cfg.nfm_embed_dim,
                           cfg.top_n_features, cfg.dropout, cfg.tied)

    def title(self) -> str:
        cfg = self.cfg
        return f"Stage 5 joint SAE + NFM (F={cfg.features}, K={cfg.k}, top {cfg.top_n_features}, k={cfg.nfm_embed_dim})"

    def evaluate(self, run: StageRun, data: StageData, best: JointSAENFM) -> dict:
        if not self.paper_rows:  # chunk 1 was trained before a --resume: harvest the start of it again
            self.paper_rows.append(self.plan.train_rows(0)[:PAPER_EVAL_ROWS])
        standalone = None if self.sae1 is None else self.sae1[0]
        metrics, firing = joint_stage_metrics(best, self.val_rows, self.paper_rows[0], self.norm, run.rt,
                                              self.cfg.dead_threshold, rows_per_window(self.cfg), standalone)
        write_firing_counts(run.out, firing, self.val_rows.shape[0])
        run_folder = run.out.parent  # inputs are recorded relative to it (or to the repository), never absolute
        # SAEBench's core terms of the whole joint model (METHOD §15), on the same held-out rows in raw units
        with autocast(run.rt.precision, run.rt.device):
            metrics["saebench_terms"] = joint_terms(best, self.val_rows, self.norm, run.rt.decode)
        if standalone is not None:
            metrics["standalone_sae"] = (f"stage-1 SAE {portable(self.cfg.sae1_model_path, run_folder)} "
                                         f"(F {standalone.num_features}, K {standalone.k}) on the same rows")
        if self.sequential is not None:
            config = self.sequential.config
            metrics["sequential_improvement_val"] = float(self.sequential.metrics()["error_reduction_val"])
            metrics["sequential"] = (f"stage 2 {portable(self.cfg.nfm_model_path, run_folder)}: its "
                                     "error_reduction_val, the NFM on the residual of the stage-1 SAE at K "
                                     f"{config['sae_k']}, top {config['top_n_features']}")
        return metrics

    def print_table(self, metrics: dict, out: Path) -> None:
        print(format_joint_table(metrics, self.cfg))
        print(f"-> {out}")


def main(argv: list[str] | None = None) -> dict:
    return Stage5(argv).run()


if __name__ == "__main__":
    run_cli(main)
