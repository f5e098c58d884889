"""Stage 6's figures (METHOD §6): every orthogonality statistic of one decoder, the table and the plots."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import gammaln

from common.analysis.decoders import (
    LoadedDecoder,
    initial_norm_band,
    moved_summary,
)
from common.analysis.geometry import VARIANCE_TARGET, gram_offdiag_stats, pca_exact, pca_original, squared_norms
from common.analysis.modes import verdict
from common.config.stages import OrthoConfig
from common.paper import BANNERS
from common.plots import plot_binned_histograms, plot_cumulative_variance, plot_histogram_panels
from common.runtime.regimes import resolve_device
from common.stats import bimodality

log = logging.getLogger("part16")

ANALYSIS = "orthogonality"
MIN_FEATURES = 4  # Sarle's coefficient divides by (n-2)(n-3)
PAPER = BANNERS["ortho"]


def random_mean_abs_cosine(d_model: int) -> float:
    """E|cos| of two independent uniformly random directions in d dimensions: Γ(d/2) / (√π Γ((d+1)/2)) ≈ √(2/(πd))."""
    return float(np.exp(gammaln(d_model / 2) - gammaln((d_model + 1) / 2)) / np.sqrt(np.pi))


def _curve(pca: dict[str, Any]) -> dict[str, Any]:
    return {key: value.tolist() if isinstance(value, np.ndarray) else value for key, value in pca.items()}


def _nonempty_histogram(histogram: dict[str, np.ndarray]) -> dict[str, list]:
    """The cosine histogram cut to its non-empty bins: most of the fixed [-1, 1] bins hold nothing."""
    filled = np.flatnonzero(histogram["counts"])
    first, last = (filled[0], filled[-1] + 1) if filled.size else (0, 0)
    return {"edges": histogram["edges"][first : last + 1].tolist(), "counts": histogram["counts"][first:last].tolist()}


def analyse(decoder: LoadedDecoder, cfg: OrthoConfig) -> dict[str, Any]:
    """Every §6 figure for one decoder; arrays for the plots are kept under ``_plot`` (not written to JSON)."""
    started = time.perf_counter()
    W_dec = decoder.W_dec
    on_device = W_dec.to(resolve_device(cfg.device))
    norms = squared_norms(W_dec).numpy()
    kept_mask = norms > cfg.threshold
    kept = norms[kept_mask]
    band = initial_norm_band(decoder.source["d_model"], decoder.source["features"])
    gram = gram_offdiag_stats(on_device, threshold=cfg.threshold)
    standard = pca_exact(on_device, cfg.threshold)
    original = pca_original(W_dec, cfg.pca_components, cfg.seed, cfg.threshold)
    result = {
        "source": decoder.source,
        "n_features": gram["n_features"],
        "n_dropped": gram["n_dropped"],
        "squared_norms": gram["diagonal"],
        "bimodality": bimodality(kept, cfg.seed),
        "verdict": decoder_verdict(decoder, kept_mask),
        "moved_from_init": {"band": band, **moved_summary(kept, band)},
        "gram_offdiag": gram["raw"],
        "cosine_offdiag": {**gram["cosine"],
                           "random_directions_mean_abs": random_mean_abs_cosine(decoder.source["d_model"])},
        "cosine_histogram": _nonempty_histogram(gram["cosine_histogram"]),
        "pca": {"original": _curve(original), "standard": _curve(standard)},
        "seconds": time.perf_counter() - started,
    }
    result["_plot"] = {"squared_norms": kept, "cosine_histogram": gram["cosine_histogram"]}
    return result


def decoder_verdict(decoder: LoadedDecoder, kept: np.ndarray) -> dict[str, Any]:
    """The one bimodality verdict (``common.analysis.modes``) on the kept features, with their initial squared norms
    and firing counts where the directory gives them."""
    initial = None if decoder.initial is None else squared_norms(decoder.initial).numpy()[kept]
    firing = None if decoder.firing is None else decoder.firing.numpy()[kept]
    return verdict(squared_norms(decoder.W_dec).numpy()[kept], initial, firing, decoder.held_out_rows)


def _verdict_cell(entry: dict[str, Any]) -> str:
    moved = entry["moved"]
    if "dip" not in moved:
        return "no (too few moved)"
    ratio = moved["kde"]["ratio"]
    return (f"{'yes' if entry['bimodal'] else 'no'}; p {moved['dip']['p']:.3g}; "
            f"valley {'—' if ratio is None else f'{ratio:.2f}'}")


def _never_moved_cell(entry: dict[str, Any]) -> str:
    never = entry["never_moved"]
    return "unknown" if not never["known"] else f"{never['count']:,} ({100 * never['fraction']:.1f}%)"


def format_table(results: dict[str, Any], threshold: float) -> str:
    names = list(results["saes"])
    per = [results["saes"][name] for name in names]
    rows = [
        ("", names),
        (f"features kept (squared norm > {threshold:g}) / all",
         [f"{r['n_features']:,} / {r['source']['features']:,}" for r in per]),
        ("squared norm: mean / median / mode",
         [f"{r['squared_norms']['mean']:.3f} / {r['squared_norms']['median']:.3f} / {r['squared_norms']['mode']:.3f}"
          for r in per]),
        ("two-component mixture: means",
         [" / ".join(f"{m:.3f}" for m in r["bimodality"]["two_component"]["means"]) for r in per]),
        ("                       weights",
         [" / ".join(f"{w:.2f}" for w in r["bimodality"]["two_component"]["weights"]) for r in per]),
        ("mixture rule (description); Ashman's D; Sarle's BC",
         [f"{'yes' if r['bimodality']['bimodal'] else 'no'}; {r['bimodality']['ashman_d']:.2f}; "
          f"{r['bimodality']['sarle_bc']:.3f}" for r in per]),
        ("never moved (no firing, within 25% of init)", [_never_moved_cell(r["verdict"]) for r in per]),
        ("BIMODAL (verdict below); dip p; KDE valley ratio", [_verdict_cell(r["verdict"]) for r in per]),
        ("barely moved from init / near init (rule below)",
         [f"{100 * r['moved_from_init']['fraction']:.1f}% / {100 * r['moved_from_init']['near_init_fraction']:.1f}%"
          for r in per]),
        ("  their bands of squared norm",
         [f"{b['low']:.4f}-{b['high']:.4f} / {b['near_low']:.4f}-{b['near_high']:.4f}"
          for b in (r["moved_from_init"]["band"] for r in per)]),
        ("mean |cos| off-diagonal (random directions)",
         [f"{r['cosine_offdiag']['mean_abs']:.4f} ({r['cosine_offdiag']['random_directions_mean_abs']:.4f})"
          for r in per]),
        ("max |cos| off-diagonal", [f"{r['cosine_offdiag']['max_abs']:.3f}" for r in per]),
        ("raw Gram off-diagonal: mean |.| / max |.|",
         [f"{r['gram_offdiag']['mean_abs']:.4f} / {r['gram_offdiag']['max_abs']:.3f}" for r in per]),
        (f"PCA components for {VARIANCE_TARGET:.0%}, original (top-N sigma^2)",
         [f"{r['pca']['original']['components_90']} (N={r['pca']['original']['n_components']})" for r in per]),
        (f"PCA components for {VARIANCE_TARGET:.0%}, standard (centred)",
         [f"{r['pca']['standard']['components_90']} of {len(r['pca']['standard']['cumulative'])}" for r in per]),
    ]
    width = max(len(label) for label, _ in rows) + 2
    lines = ["Orthogonality of the decoders (METHOD §6)"]
    lines += [label.ljust(width) + "".join(f"{value:>30}" for value in values) for label, values in rows]
    lines.append(f"verdict: {per[0]['verdict']['never_moved']['rule']}; bimodal {per[0]['verdict']['rule']}")
    lines.append(f"mixture rule (a description, not the verdict): {per[0]['bimodality']['rule']}")
    lines.append(per[0]["moved_from_init"]["band"]["rule"])
    lines.append(PAPER)
    return "\n".join(lines)


def plot(results: dict[str, Any], plot_data: dict[str, dict], out: Path) -> None:
    saes = results["saes"]
    plot_histogram_panels(
        {name: data["squared_norms"] for name, data in plot_data.items()}, out / "squared_norms.png",
        "Squared decoder norms (dashed: two-component mixture means; init: d/(3F))", "squared norm",
        vlines={name: {**{f"mixture mean {i + 1}": m
                          for i, m in enumerate(entry["bimodality"]["two_component"]["means"])},
                       "init": entry["moved_from_init"]["band"]["mean"],
                       **({} if entry["verdict"]["moved"].get("low_mode_below") is None else
                          {"KDE valley (moved)": entry["verdict"]["moved"]["low_mode_below"]})}
                for name, entry in saes.items()},
    )
    plot_cumulative_variance(
        {f"{name}, {kind}": np.asarray(entry["pca"][kind]["cumulative"])
         for name, entry in saes.items() for kind in ("original", "standard")},
        out / "pca_cumulative.png", "Decoder PCA: original (uncentred, top N) vs standard (centred)",
        threshold=VARIANCE_TARGET,
    )
    plot_binned_histograms(
        {name: (data["cosine_histogram"]["edges"], data["cosine_histogram"]["counts"])
         for name, data in plot_data.items()},
        out / "cosine_offdiag.png", "Off-diagonal cosine similarities of the decoder vectors", "cosine", log_y=True,
    )
