"""Stage 2: train an NFM to predict the stage-1 SAE's residual from its codes, streaming the LM chunk by chunk
(METHOD §2).

    python part2d_residual_NFM_streaming.py                      # the paper's run (K 250, top 250 features)
    python part2d_residual_NFM_streaming.py --preset cpu --sae1_model_path runs/cpu/sae1
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from common.analysis.core_terms import sae_nfm_terms
from common.config.stages import NFMConfig
from common.data.activations import open_stream
from common.data.chunks import ChunkPlan, StreamedChunks, check_streaming_settings
from common.errors import UserError
from common.models.loading import StageInput, load_sae
from common.models.nfm import NFM
from common.runtime.regimes import autocast
from common.stages.cli import run_cli
from common.stages.trained import StageData, StageRun, TrainedStage
from common.training.metrics import EVAL_BATCH_ROWS
from common.training.nfm_objective import SAECodes, concat, evaluate_nfm, nfm_loss, sae_codes, subset
from common.training.window_cis import nfm_cis, rows_per_window

ERRORS = ("residual_mse_before", "residual_mse_after", "error_reduction")
COMPONENTS = ("mean_abs_linear", "mean_abs_interaction", "linear_share", "interaction_share")


class Stage2(TrainedStage):
    config_class, description = NFMConfig, __doc__

    def load_inputs(self) -> list[StageInput]:
        cfg = self.cfg
        self.sae, self.norm, source = load_sae(cfg.sae1_model_path)
        if not 1 <= cfg.sae_k <= self.sae.k:
            raise UserError(f"--sae_k {cfg.sae_k} must be between 1 and the stage-1 SAE's K={self.sae.k}")
        if not 1 <= cfg.top_n_features <= cfg.sae_k:
            raise UserError(f"--top_n_features {cfg.top_n_features} must be between 1 and --sae_k {cfg.sae_k}")
        check_streaming_settings(cfg)
        return [source]

    def prepare(self, run: StageRun) -> StageData:
        cfg, rt = self.cfg, run.rt
        self.sae, self.decode = self.sae.to(rt.device).eval(), rt.decode
        stream = open_stream(cfg, run.lm)
        self.plan = plan = ChunkPlan(stream, cfg.num_tokens, cfg.chunk_tokens)
        if min(plan.rows_in_chunk(c) for c in range(plan.num_chunks)) == 0:
            raise UserError(f"--chunk_tokens {cfg.chunk_tokens} leaves a chunk without training windows: "
                            "use larger chunks")
        started = time.perf_counter()
        self.val_rows = stream.val_rows(max(1, cfg.val_tokens // cfg.window), within=plan.num_windows)
        self.val_codes = self.codes_of(self.val_rows)
        val_seconds = time.perf_counter() - started
        self.sample_per_chunk = math.ceil(self.val_codes.residual.shape[0] / plan.num_chunks)
        self.train_sample: dict[int, SAECodes] = {}

        def convert(chunk: int, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
            """The chunk's NFM data, keeping a fixed sample of it for the training figures."""
            codes = self.codes_of(rows, chunk)
            generator = torch.Generator().manual_seed(cfg.seed + chunk)
            sampled = torch.randperm(rows.shape[0], generator=generator)[:self.sample_per_chunk]
            self.train_sample[chunk] = subset(codes, sampled)
            return tuple(codes)

        self.chunks = StreamedChunks(plan, convert)
        self.batches = self.chunks.batches(cfg, rt.device)

        def validate(model: NFM) -> dict[str, float]:
            return evaluate_nfm(model, self.val_codes, rt.decode, EVAL_BATCH_ROWS)

        record = {**stream.describe(), **self.chunks.record(self.batches), "val_rows": self.val_codes.residual.shape[0]}
        extra = {"num_features": self.sae.num_features, "sae_k": cfg.sae_k, "top_n_features": cfg.top_n_features,
                 "sae1": run.inputs[0].record()}
        return StageData(self.batches, lambda m, b: nfm_loss(m, b, rt.decode), validate, self.norm, record, extra,
                         train_steps=self.batches.total_steps, load_seconds=lambda: self.chunks.seconds + val_seconds)

    def codes_of(self, rows: torch.Tensor, chunk: int | None = None) -> SAECodes:
        """The NFM's data for raw LM rows of a training chunk (``None``: the held-out rows): the SAE's codes and the
        residual it leaves, the NFM's target (the controls of METHOD §14 change the target here)."""
        cfg = self.cfg
        return sae_codes(self.sae, rows, self.norm, cfg.sae_k, cfg.top_n_features, self.decode, EVAL_BATCH_ROWS)

    def build(self, run: StageRun) -> NFM:
        cfg = self.cfg
        return NFM(self.sae.num_features, run.lm.d_model, cfg.nfm_embed_dim, cfg.dropout)

    def title(self) -> str:
        cfg = self.cfg
        return (f"Stage 2 NFM on the SAE residual (F={self.sae.num_features}, K={cfg.sae_k}, top {cfg.top_n_features}, "
                f"k={cfg.nfm_embed_dim})")

    def evaluate(self, run: StageRun, data: StageData, best: NFM) -> dict:
        last_chunk = self.batches.locate(max(run.steps - 1, 0))[0]
        for chunk in range(min(last_chunk + 1, self.plan.num_chunks)):
            if chunk not in self.train_sample:  # chunks trained before a --resume: harvest again for the train figures
                self.chunks.load(chunk)
        sample = concat([self.train_sample[c] for c in sorted(self.train_sample)])
        with autocast(run.rt.precision, run.rt.device):
            val = evaluate_nfm(best, self.val_codes, run.rt.decode, EVAL_BATCH_ROWS, rows_per_window(self.cfg))
            train = evaluate_nfm(best, sample, run.rt.decode, EVAL_BATCH_ROWS)
            # SAEBench's core terms of the SAE + NFM (METHOD §15), on the same held-out rows in raw units
            core = sae_nfm_terms(self.sae, best, self.val_rows, self.norm, self.cfg.sae_k, self.cfg.top_n_features,
                                 run.rt.decode)
        return {
            **{f"{key}_train": train[key] for key in ERRORS},
            **{f"{key}_val": val[key] for key in ERRORS},
            **{key: val[key] for key in COMPONENTS},
            "components_evaluated_on": "validation rows",
            "train_evaluated_on": f"a fixed sample of {sample.residual.shape[0]} training rows "
                                  f"(up to {self.sample_per_chunk} from each of chunks 1-{len(self.train_sample)})",
            "val_evaluated_on": f"{self.val_codes.residual.shape[0]} rows of held-out windows (normalized units)",
            "train_components": {key: train[key] for key in COMPONENTS},
            "num_features": self.sae.num_features,
            "sae_k": self.cfg.sae_k,
            "top_n_features": self.cfg.top_n_features,
            "ci": nfm_cis(val["per_window"], self.val_codes.residual.shape[1]),
            "per_window": val["per_window"],
            "saebench_terms": core,
        }

    def print_table(self, metrics: dict, out: Path) -> None:
        """The paper's table: residual error before/after on train and validation, then the pathways' magnitudes."""
        print(f"stage 2 NFM (SAE K {metrics['sae_k']}, top {metrics['top_n_features']} features; "
              f"{metrics['precision_regime']}, {metrics['decode_path']} decode; {metrics['steps']} steps)")
        print(f"{'':<12}{'residual MSE':>14}{'after NFM':>11}{'reduction':>11}")
        for split, name in (("train", "train"), ("val", "validation")):
            print(f"{name:<12}{metrics[f'residual_mse_before_{split}']:>14.4f}"
                  f"{metrics[f'residual_mse_after_{split}']:>11.4f}{100 * metrics[f'error_reduction_{split}']:>10.2f}%")
        print(f"{'pathway':<12}{'mean |out|':>14}{'share':>11}")
        for name in ("linear", "interaction"):
            print(f"{name:<12}{metrics[f'mean_abs_{name}']:>14.4f}{100 * metrics[f'{name}_share']:>10.1f}%")
        print(f"-> {out}")


def main(argv: list[str] | None = None) -> dict:
    return Stage2(argv).run()


if __name__ == "__main__":
    run_cli(main)
