"""Stage 10a (part4): how sparse and unequal the NFM's weight rows are, one row per primary feature (METHOD §10):
L0, L1, L2, max, std, Gini and the entropy effective rank of each embedding row and each linear-weight row, beside
an untrained reference (|N(0, σ)| rows: Gini ≈ √2 − 1 ≈ 0.414) and the rows still at their initial norm.

    python part4_NFM_sparsity_inspector.py --nfm_model_path checkpoints_nfm
    python part4_NFM_sparsity_inspector.py --preset cpu --nfm_model_path runs/cpu/nfm --output_dir runs/cpu/sparsity
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from common.analysis.decoders import run_record
from common.analysis.weight_rows import row_statistics, untrained_gini_reference
from common.config.fields import input_paths
from common.config.stages import SparsityConfig
from common.errors import UserError
from common.models.loading import load_nfm
from common.plots import plot_histograms
from common.stages.cli import run_cli
from common.stages.finish import write_results
from common.stages.opening import stage_config
from common.store.lock import OutputDir

ANALYSIS = "sparsity"
# The NFM's init (METHOD §2): embeddings N(0, 0.05), the linear weight N(0, 0.01).
INIT_STD = {"embeddings": 0.05, "linear": 0.01}
INIT_SIGMAS = 4.0


def at_init(squared_norms: np.ndarray, width: int, std: float) -> np.ndarray:
    """Rows whose squared norm is within 4 sd of an untrained row's (k·σ², sd σ²·√(2k): a χ² with k degrees)."""
    mean, sd = width * std**2, std**2 * math.sqrt(2 * width)
    return np.abs(squared_norms - mean) <= INIT_SIGMAS * sd


def inspect(rows: np.ndarray, name: str, top_n: int, seed: int) -> tuple[dict[str, Any], np.ndarray]:
    figures = row_statistics(rows)
    width = rows.shape[1]
    untouched = at_init(figures["l2"] ** 2, width, INIT_STD[name])
    reference = untrained_gini_reference(width, seed=seed)
    order = np.argsort(np.nan_to_num(figures["gini"], nan=-1.0))[::-1]
    trained = ~untouched

    def row(i: int) -> dict[str, Any]:
        return {"feature": int(i), **{key: float(values[i]) for key, values in figures.items()},
                "at_initial_norm": bool(untouched[i])}

    summary = {
        "rows": int(rows.shape[0]), "width": width,
        "means": {key: float(np.nanmean(values)) for key, values in figures.items()},
        "means_of_moved_rows": {key: float(np.nanmean(values[trained])) if trained.any() else None
                                for key, values in figures.items()},
        "untrained_reference": reference,
        "at_initial_norm": {"count": int(untouched.sum()), "fraction": float(untouched.mean()),
                            "rule": f"squared norm within {INIT_SIGMAS:g} sd of k·σ² with σ = {INIT_STD[name]} "
                                    "(the init), sd σ²·√(2k)"},
        "most_unequal": [row(i) for i in order[:top_n]],
        "least_unequal": [row(i) for i in order[::-1][:top_n] if math.isfinite(figures["gini"][i])],
    }
    return summary, figures["gini"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = stage_config(SparsityConfig, __doc__, argv)
    if cfg.top_n < 1:
        raise UserError(f"--top_n must be at least 1, got {cfg.top_n}")
    out = OutputDir(cfg.output_dir, overwrite=cfg.overwrite, inputs=input_paths(cfg))
    nfm, source = load_nfm(cfg.nfm_model_path)
    matrices = {"embeddings": nfm.embeddings.detach().numpy(), "linear": nfm.linear_weight.detach().numpy()}
    results: dict[str, Any] = {**run_record(cfg, ANALYSIS), "inputs": {"nfm_model_path": source.record()},
                               "definitions": "one row per primary feature: an embedding row v_i (k) and a linear-"
                                              "weight row W_lin[i] (d); L0 counts |w| > 1e-8; Gini of |w|; "
                                              "effective rank exp(H(|w|/Σ|w|))"}
    ginis = {}
    for name, rows in matrices.items():
        results[name], ginis[name] = inspect(rows, name, cfg.top_n, cfg.seed)

    def plot(folder: Path) -> None:
        reference = results["embeddings"]["untrained_reference"]["mean"]
        plot_histograms({name: values[np.isfinite(values)] for name, values in ginis.items()},
                        folder / "gini_histogram.png", "Gini of the NFM's weight rows (one per primary feature)",
                        "Gini of |w|", vlines={"untrained |N(0, σ)| rows": reference})

    with out.writing(clear=cfg.overwrite):
        plot(out.path)
        write_results(out.path, results)
    print(format_table(results))
    return results


def format_table(results: dict[str, Any]) -> str:
    lines = ["NFM weight rows, one per primary feature (METHOD §10, part4)",
             f"{'':<12}{'mean Gini':>10}{'untrained':>11}{'eff. rank':>11}{'of':>6}{'at init':>9}  most unequal row"]
    for name in ("embeddings", "linear"):
        entry = results[name]
        top = entry["most_unequal"][0]
        lines.append(f"{name:<12}{entry['means']['gini']:>10.3f}{entry['untrained_reference']['mean']:>11.3f}"
                     f"{entry['means']['effective_rank']:>11.1f}{entry['width']:>6}"
                     f"{100 * entry['at_initial_norm']['fraction']:>8.1f}%  feature {top['feature']}: Gini "
                     f"{top['gini']:.3f}, effective rank {top['effective_rank']:.1f}")
    lines.append("paper (OpenLLaMA-3B): primary feature 17512, Gini 0.49, effective rank 133.5 of 300 "
                 "(untrained ≈ 0.414)")
    return "\n".join(lines)


if __name__ == "__main__":
    run_cli(main)
