"""Debugging tool (part13d, the original's name): a checkpoint's SAE inspected on held-out text. Every window of the
evaluation text (up to --num_windows) through the LM to the layer and the SAE at --top_k: the mean L0, the dead
features (never active there), the most frequent and the strongest features, and the reconstruction error by position
in the window (METHOD §10). The SAE is a stage-1 directory, a joint directory's SAE part, or an imported SAELens or
sparsify one; a pickled .pt file is refused, since the project never unpickles. A tool run by hand, not a
reproduce.py stage.

    python part13d_primarySAEdebugging.py --model_path openlm-research/open_llama_3b \\
        --sae_path checkpoints_topk --output_dir primary_sae_debugging --device cuda --top_k 1024
    python part13d_primarySAEdebugging.py --preset cpu --sae_path runs/cpu/sae1 --output_dir runs/cpu/sae_debugging
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from common.behavior.debugging import feature_statistics, summarize_features
from common.config.stages import SAEDebugConfig
from common.data.activations import ActivationStream
from common.data.text import WindowedText, resolve_text
from common.errors import UserError
from common.models.loading import StageInput, load_sae
from common.plots import plot_by_position, plot_histograms
from common.stages.behavior import open_tool, tool_record
from common.stages.cli import run_cli
from common.stages.finish import write_results
from common.stages.opening import stage_config

ANALYSIS = "sae_debugging"
PICKLES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")


def check(cfg: SAEDebugConfig) -> None:
    if Path(cfg.sae1_model_path).suffix.lower() in PICKLES:
        raise UserError(f"--sae_path {cfg.sae1_model_path} is a pickled PyTorch file, which this project never "
                        "unpickles (it can run code): give the checkpoint directory (config.json and "
                        "best_model.safetensors), or a SAELens or sparsify directory")
    if min(cfg.num_windows, cfg.batch_size, cfg.top_n) < 1 or (cfg.top_k is not None and cfg.top_k < 1):
        raise UserError("--num_windows, --batch_size, --top_n and --top_k must be at least 1")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = stage_config(SAEDebugConfig, __doc__, argv)
    check(cfg)
    loaded: dict[str, Any] = {}

    def read_sae() -> list[StageInput]:
        loaded["sae"], loaded["norm"], source = load_sae(cfg.sae1_model_path, "--sae_path")
        k = loaded["sae"].k if cfg.top_k is None else cfg.top_k
        if k > loaded["sae"].num_features:
            raise UserError(f"--top_k {k} is more than the SAE's {loaded['sae'].num_features} features")
        loaded["k"] = k
        return [source]

    opened, sources = open_tool(cfg, read_sae)
    lm, first = opened.lm, int(opened.lm.adds_bos)
    sae, norm = loaded["sae"].to(opened.rt.device).eval(), loaded["norm"].to(opened.rt.device)
    text = WindowedText(resolve_text(cfg.eval_text_files, cfg.preset, "eval"), lm.tokenizer, cfg.window,
                        lm.bos_token_id if lm.adds_bos else None)
    stream = ActivationStream(lm, cfg.layer, text, cfg.batch_size, cache_dir=cfg.cache_dir)
    indices = text.available(0, cfg.num_windows)
    tally = feature_statistics(sae, norm, stream, indices, loaded["k"], first, opened.rt.decode, cfg.batch_size)
    summary = summarize_features(tally, cfg.top_n)
    results = {**tool_record(cfg, opened, ANALYSIS, sources), "text": text.source.description,
               "windows_requested": cfg.num_windows, "windows_used": len(indices), "k": loaded["k"],
               "trained_k": sae.k, "features": sae.num_features, **summary}

    def plot(folder: Path) -> None:
        share = (tally.fired / max(1, tally.rows)).numpy()
        plot_histograms({"live features": np.log10(share[share > 0])}, folder / "firing_frequency.png",
                        f"How often each feature fires on held-out rows ({summary['dead']['count']:,} dead)",
                        "log10 firing fraction", log_y=True)
        positions = summary["error_by_position"]
        plot_by_position({"unexplained share": np.asarray(positions["unexplained_share"])},
                         folder / "error_by_position.png", "SAE reconstruction error by position (held-out windows)",
                         "unexplained share of the squared norm")

    with opened.out.writing(clear=cfg.overwrite):
        plot(opened.out.path)
        write_results(opened.out.path, results)
    print(f"SAE at K {loaded['k']} on {summary['rows']:,} held-out rows ({len(indices)} windows): L0 "
          f"{summary['l0_mean']:.1f}, dead {summary['dead']['count']:,} of {sae.num_features:,}, unexplained share "
          f"{summary['unexplained_share']:.3f}; most frequent feature {summary['most_frequent'][0]['feature']} "
          f"({100 * summary['most_frequent'][0]['firing_fraction']:.1f}% of rows), strongest "
          f"{summary['strongest'][0]['feature']} (max {summary['strongest'][0]['max']:.3g})")
    return results


if __name__ == "__main__":
    run_cli(main)
