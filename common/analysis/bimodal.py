"""Stage 7's figures (METHOD §7): the joint model's pathway shares below and above a squared-norm split, with
their tests and correlations, the table and the plots."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.analysis.control import control_lines, controlled_shares, moved_and_active
from common.analysis.decoders import initial_model, moved_summary
from common.errors import UserError
from common.models.joint import JointSAENFM
from common.models.loading import StageInput
from common.paper import value as paper_value
from common.plots import plot_box_by_group, plot_histograms, plot_scatter
from common.stats import describe, pathway_shares, spearman, two_sample_tests
from common.store.stage_files import read_firing_counts

log = logging.getLogger("part17")

ANALYSIS = "bimodal"
SHARES = ("interaction", "linear", "nonlinear", "residual")
SHARE_LABELS = {
    "interaction": "interaction pathway (linear + nonlinear)",
    "linear": "  linear (NFM linear column)",
    "nonlinear": "  nonlinear (embedding row)",
    "residual": "residual (decoder column)",
}
# Share below the split, share above it, Spearman r of the squared norm with the share.
PAPER = {share: tuple(paper_value(f"bimodal.{share}_{part}") for part in ("low", "high", "r")) for share in SHARES}
SHARE_DEFINITION = ("per feature i: ||D_i||, ||W_lin_i|| and ||V_i|| "
                    "(decoder column, NFM linear column, embedding row), "
                    "each divided by their sum; group figures are means of these per-feature shares")
CONSTRUCTION_NOTE = ("residual = 1 - interaction, so their Spearman r are one result with opposite signs; "
                     "and the residual share's numerator ||D_i|| is the square root of the squared norm "
                     "it is ranked against, so much of that r follows from the ratio's construction")
MIN_FEATURES_PER_GROUP = 2  # a two-sample t-test needs two on each side


def pathway_norms(joint: JointSAENFM) -> dict[str, np.ndarray]:
    """Per-feature norms (F,) in float64: decoder column, NFM linear column, NFM embedding row."""
    weights = {"decoder": joint.sae.W_dec, "linear": joint.nfm.linear_weight, "nonlinear": joint.nfm.embeddings}
    return {name: torch.linalg.vector_norm(w.detach(), dim=1, dtype=torch.float64).numpy()
            for name, w in weights.items()}


def find_mixture_fit(orthogonality: dict[str, Any], source: dict[str, Any], folder: str) -> tuple[str, dict[str, Any]]:
    """part16's entry for this very joint model, found by the sha256 of its weights file."""
    for name, entry in orthogonality["saes"].items():
        if entry["source"]["weights_sha256"] == source["weights_sha256"]:
            return name, entry
    analysed = ", ".join(entry["source"]["path"] for entry in orthogonality["saes"].values())
    raise UserError(f"--orthogonality_dir {folder}: part16 analysed {analysed}, "
                    f"not this --joint_model_path {source['path']} "
                    "(run part16 with --sae2_model_path on it)")


def check_split(squared: np.ndarray, split: float) -> np.ndarray:
    """The low-group mask (squared norm < split), refusing a split that leaves a group too small to test."""
    low = squared < split
    n_low, n_high = int(low.sum()), int((~low).sum())
    if min(n_low, n_high) < MIN_FEATURES_PER_GROUP:
        raise UserError(f"--split {split:g} leaves {n_low} features below and {n_high} at or above it "
                        f"(squared norms span {squared.min():.4g} to {squared.max():.4g}): "
                        f"choose a split with at least {MIN_FEATURES_PER_GROUP} on each side")
    return low


def analyse(norms: dict[str, np.ndarray], valid: np.ndarray, low: np.ndarray, band: dict[str, Any]) -> dict[str, Any]:
    """Shares, tests, correlations and group summaries over the valid features (``low`` indexes within them)."""
    squared = norms["decoder"][valid] ** 2
    shares = pathway_shares(norms["decoder"][valid], norms["linear"][valid], norms["nonlinear"][valid])
    groups = {"low": low, "high": ~low, "all": np.ones_like(low)}
    return {
        "groups": {
            name: {"squared_norm": describe(squared[mask]), "moved_from_init": moved_summary(squared[mask], band)}
            for name, mask in groups.items()
        },
        "shares": {name: two_sample_tests(shares[name][low], shares[name][~low]) for name in SHARES},
        "norms": {name: {"mean_low": float(values[valid][low].mean()), "mean_high": float(values[valid][~low].mean())}
                  for name, values in norms.items()},
        "spearman_vs_squared_norm": {name: spearman(squared, shares[name]) for name in SHARES},
        # How much of the share correlations the NFM weights themselves carry, apart from the ratio's construction.
        "spearman_raw_norms_vs_squared_norm": {name: spearman(squared, norms[name][valid])
                                               for name in ("linear", "nonlinear")},
        "_plot": {"squared": squared, "shares": shares},
    }


def untrained_control(source: StageInput, norms: dict[str, np.ndarray], valid: np.ndarray,
                      seed: int) -> dict[str, Any]:
    """``control.controlled_shares`` of the trained model's moved, active valid features against its initial model
    (re-created from the run's seed), or the reason it cannot be built."""
    initial = initial_model(source)
    if initial is None:
        return {"reason": "the joint model's initialization cannot be re-created (no seed or model record)"}
    firing = read_firing_counts(source.folder)
    initial_norms = pathway_norms(initial)
    analysed = valid & moved_and_active(norms["decoder"] ** 2, initial_norms["decoder"] ** 2,
                                        None if firing is None else firing[0].numpy())
    if analysed.sum() < 2 * MIN_FEATURES_PER_GROUP:
        return {"reason": f"only {int(analysed.sum())} moved, active features"}
    controlled = controlled_shares({name: values[analysed] for name, values in norms.items()}, initial_norms, seed)
    if firing is None:
        controlled["trained_features"] += " (no firing counts in this directory: moved only)"
    return controlled


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def format_table(results: dict[str, Any]) -> str:
    split, source, fit = results["split"], results["source"], results["mixture_fit"]
    low, high = f"< {split:g}", f">= {split:g}"
    lines = [
        f"Joint model's features by squared decoder norm (METHOD §7): "
        f"F = {source['features']:,}, d = {source['d_model']}, "
        f"{results['n_features']:,} with squared norm > {results['threshold']:g}, split at {split:g}",
        f"{'pathway share of the norm':44}{low:>9}{high:>9}{'paper':>14}{'Student t':>11}{'Welch t':>10}"
        f"{'Spearman r':>12}{'paper r':>9}",
    ]
    for name in SHARES:
        test, r = results["shares"][name], results["spearman_vs_squared_norm"][name]["r"]
        paper_low, paper_high, paper_r = PAPER[name]
        lines.append(f"{SHARE_LABELS[name]:44}{_pct(test['mean_low']):>9}{_pct(test['mean_high']):>9}"
                     f"{f'{100 * paper_low:.1f} / {100 * paper_high:.1f}':>14}"
                     f"{test['student']['t']:>11.2f}{test['welch']['t']:>10.2f}"
                     f"{r:>+12.3f}{paper_r:>+9.3f}")
    raw = results["spearman_raw_norms_vs_squared_norm"]
    lines.append(f"(t: low vs high; {results['spearman_note']}. Spearman r of the squared norm with the raw norms "
                 f"themselves: ||W_lin_i|| {raw['linear']['r']:+.3f}, ||V_i|| {raw['nonlinear']['r']:+.3f})")
    lines.append("")
    lines.append(f"{'squared norm':44}{low:>9}{high:>9}{'all':>9}")
    groups = results["groups"]
    for key, fmt in (("count", "{:,}"), ("mean", "{:.3f}"), ("median", "{:.3f}"), ("mode", "{:.3f}")):
        label = key if key != "mode" else f"mode ({groups['all']['squared_norm']['mode_bins']}-bin histogram)"
        lines.append(f"{label:44}" + "".join(f"{fmt.format(groups[g]['squared_norm'][key]):>9}"
                                             for g in ("low", "high", "all")))
    band = results["moved_from_init_band"]
    for key, label in (("fraction", f"barely moved from init ({band['low']:.4f}-{band['high']:.4f})"),
                       ("near_init_fraction", f"near init ({band['near_low']:.4f}-{band['near_high']:.4f})")):
        lines.append(f"{label:44}" + "".join(f"{_pct(groups[g]['moved_from_init'][key]):>9}"
                                             for g in ("low", "high", "all")))
    lines.append(f"({band['rule']})")
    lines.append("paper: modes ~0.05 and ~0.37 (computed by no original script), overall mean 0.259")
    lines.append("")
    mixture = fit["two_component"]
    lines.append(f"two-component mixture (part16, '{fit['sae_name']}'): "
                 f"means {mixture['means'][0]:.3f} / {mixture['means'][1]:.3f}, "
                 f"weights {mixture['weights'][0]:.2f} / {mixture['weights'][1]:.2f}, stds {mixture['stds'][0]:.3f} / "
                 f"{mixture['stds'][1]:.3f}; bimodal: {'yes' if fit['bimodal'] else 'no'} "
                 f"(delta BIC {fit['delta_bic']:.1f}, "
                 f"Ashman's D {fit['ashman_d']:.2f}); Sarle's BC {fit['sarle_bc']:.3f} (> 0.555 hints at bimodality)")
    lines.append(f"bimodal rule: {fit['rule']}")
    return "\n".join([*lines, "", *control_lines(results["controlled"])])


def plot(results: dict[str, Any], plot_data: dict[str, Any], out: Path) -> None:
    split, squared, shares = results["split"], plot_data["squared"], plot_data["shares"]
    low = squared < split
    plot_scatter(squared, {name: shares[name] for name in SHARES}, out / "shares_vs_squared_norm.png",
                 "Pathway shares of the norm vs squared decoder norm", "squared decoder norm", "share",
                 vline=split)
    plot_box_by_group({f"< {split:g}": {name: shares[name][low] for name in SHARES},
                       f">= {split:g}": {name: shares[name][~low] for name in SHARES}},
                      out / "shares_by_group.png", "Pathway shares below and above the split", "share")
    means = results["mixture_fit"]["two_component"]["means"]
    plot_histograms({"joint": squared}, out / "squared_norms.png", "Squared decoder norms of the joint model",
                    "squared norm",
                    vlines={"split": split, "mixture mean 1": means[0], "mixture mean 2": means[1],
                            "init d/(3F)": results["moved_from_init_band"]["mean"]})
