"""What part14 and part18 share around their conditions (METHOD §4, §8): checks, the output directory, the evaluation
loop with resume, and the outputs (``per_position.npz``, ``results.json``, PNGs, the table)."""
from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.config.concepts import KLConfig
from common.data.activations import NormStats, open_stream
from common.data.text import WindowedText
from common.errors import UserError
from common.kl.evaluator import PatchingEvaluator, Reconstruct, evaluate_windows
from common.kl.inference import PER_WINDOW_FILE, add_window_inference, per_window_sums, save_per_window
from common.kl.summary import (
    PER_POSITION_FILE,
    format_table,
    merge_parts,
    plot_intervals_of,
    plot_results,
    summarize,
)
from common.lm.model import LoadedLM
from common.models.loading import StageInput
from common.models.settings import EvalSettings
from common.runtime.context import Runtime
from common.runtime.regimes import autocast
from common.stages.finish import write_results
from common.stages.opening import open_stage, start_output_dir

log = logging.getLogger(__name__)


@dataclass
class KLStage:
    """One KL test: its loaded models (CPU, fp32), how they reconstruct, and how its results are named."""

    stage: str  # "kl14" | "kl18"
    sources: list[StageInput]  # the checkpoints evaluated, each checked against the LM
    modules: list[nn.Module]
    norm: NormStats
    conditions: Callable[[NormStats, str], Reconstruct]  # (stats, decode path) -> reconstruct, all on the device
    labels: dict[str, str]  # condition -> printed name, in table order
    reference: str  # the condition that sets the ε-random norm and the reductions' denominator
    settings: EvalSettings
    title: str
    paper: str  # the paper's figures, printed under the table
    extra: dict[str, Any]
    # more figures for results.json from the per-position file (the controls' CIs over windows, METHOD §14)
    figures: Callable[[Path], dict[str, Any]] | None = None


def check_kl_settings(cfg: KLConfig, checkpoint_layer: int | None, flag: str) -> None:
    """Bad numbers and a checkpoint from another layer, refused before anything is loaded or written (an imported
    sparsify SAE may name no layer: it is then the run's)."""
    if checkpoint_layer is not None and checkpoint_layer != cfg.layer:
        raise UserError(f"{flag} was trained at layer {checkpoint_layer}, but --layer is {cfg.layer} "
                        f"(pass --layer {checkpoint_layer})")
    for name in ("num_wiki_samples", "batch_size", "num_epsilon_samples", "positions_per_window", "own_norm_draws"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(cfg, name)}")


def run_kl_stage(cfg: KLConfig, read_inputs: Callable[[], KLStage]) -> dict[str, Any]:
    """Open the stage (``read_inputs`` loads and checks the checkpoints and builds the conditions), evaluate, write."""
    opened, kl = open_stage(cfg, read_inputs)
    rt, lm, out_dir, patch_layer = opened.rt, opened.lm, opened.out, opened.patch_layer
    text = open_stream(cfg, lm, role="eval", files=cfg.eval_text_files).text
    indices = text.available(0, cfg.num_wiki_samples)
    evaluation = {
        "original_eval": cfg.original_eval, **kl.settings.record(), "capture_layer": cfg.layer,
        "patch_layer": patch_layer,
        "text": text.source.description, "text_identity": text.source.identity,
        "windows_requested": cfg.num_wiki_samples, "windows_used": len(indices),
        "window_tokens": cfg.window, "first_position": int(cfg.exclude_first_position),
        "positions_per_window_requested": cfg.positions_per_window,
        "precision_regime": rt.precision, "decode_path": rt.decode, "world_size": rt.world.size,
    }
    inputs = {source.flag.lstrip("-"): source.record() for source in kl.sources}
    with out_dir.writing():
        if rt.world.is_main:
            start_output_dir(out_dir, cfg, opened.record, kl.stage,
                             {"evaluation": evaluation, "inputs": inputs, **kl.extra})
        return _evaluate(cfg, kl, lm, rt, out_dir.path, text, indices, patch_layer, evaluation)


def _evaluate(cfg: KLConfig, kl: KLStage, lm: LoadedLM, rt: Runtime, out: Path, text: WindowedText, indices: list[int],
              patch_layer: int, evaluation: dict[str, Any]) -> dict[str, Any]:
    if len(indices) < cfg.num_wiki_samples:
        log.info("the evaluation text has %d whole windows (fewer than --num_wiki_samples %d): all are used",
                 len(indices), cfg.num_wiki_samples)

    for module in kl.modules:
        module.to(rt.device).eval()
    reconstruct = kl.conditions(kl.norm.to(rt.device), rt.decode)

    def reconstruct_under_precision(raw: torch.Tensor) -> dict[str, torch.Tensor]:
        with autocast(rt.precision, rt.device):
            return reconstruct(raw)

    evaluator = PatchingEvaluator(lm.model, patch_layer, reconstruct_under_precision, kl.reference,
                                  cfg.num_epsilon_samples, cfg.seed, int(cfg.exclude_first_position),
                                  positions_per_window=cfg.positions_per_window, own_norm_draws=cfg.own_norm_draws)
    store = out / PER_POSITION_FILE
    world = rt.world
    pending = not store.is_file()
    world.barrier()  # rank 0 has checked (or cleared) the folder before any rank writes a part into it
    started = time.perf_counter()
    if pending:
        parts_dir = out / "parts"
        parts, done = evaluate_windows(evaluator, text, indices, cfg.batch_size, parts_dir, rt.device, world)
        ranks = world.gather(done)  # also the wait for every rank's last part
        seconds = time.perf_counter() - started
        evaluation["seconds"] = seconds
        evaluation["tokens_per_second"] = sum(r["evaluated_windows"] for r in ranks) * cfg.window / max(seconds, 1e-9)
        evaluation["ranks"] = ranks
        if world.is_main:
            merge_parts(parts, store)
            shutil.rmtree(parts_dir)
    if not world.is_main:  # rank 0 merges the parts and reports
        return {}

    results = {"stage": kl.stage, "original_eval": cfg.original_eval, "evaluation": evaluation,
               **summarize(store, kl.labels, kl.reference, cfg.num_epsilon_samples, evaluator.own_draws),
               "per_window_file": PER_WINDOW_FILE, **(kl.figures(store) if kl.figures else {})}
    sums = per_window_sums(store)
    save_per_window(sums, out / PER_WINDOW_FILE)
    add_window_inference(results, sums, kl.reference, cfg.seed)
    mode = "the original's evaluation (--original_eval)" if cfg.original_eval else "as trained"
    plot_results(store, kl.labels, out, f"{kl.title}, {mode}")
    plot_intervals_of(results, out, f"{kl.title}, {mode}")
    write_results(out, results)
    print(format_table(results, f"{kl.title}, {mode}: {describe_settings(kl.settings, patch_layer)}", kl.paper))
    print(f"-> {out}")
    return results


def describe_settings(settings: EvalSettings, patch_layer: int) -> str:
    inputs = "z-scored" if settings.normalize else "raw"
    top_n = "all codes" if settings.top_n is None else f"top {settings.top_n}"
    return (f"{inputs} activations, K {settings.k}, NFM fed {top_n}, {settings.pooling} pooling, "
            f"patched at layer {patch_layer}")
