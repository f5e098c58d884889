"""From the KL evaluator's per-batch parts to the stage's outputs (METHOD §4, §8): one per-position ``.npz``, the
figures of ``results.json`` (means, ratios against the ε-random baselines, reductions against the reference, t-tests),
the PNGs and the short table on stdout. Columns are read one or two at a time, so memory does not grow with the
number of conditions.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from common.kl.evaluator import EPS_OWN, EPS_RANDOM, METRICS, ZERO_ABLATION
from common.plots import plot_by_position, plot_distributions_log, plot_intervals
from common.stats import paired_and_independent_tests, ratio, reduction
from common.store.savers import atomic_save_npz

PER_POSITION_FILE = "per_position.npz"
METRIC_LABELS = {"kl": "KL(P_clean || P_patched) (nats)", "ce_next": "cross-entropy vs the next token (nats)",
                 "ce_argmax": "cross-entropy vs the clean argmax (nats)"}
EPS_LABEL = "ε-random (ref. norm)"


def merge_parts(parts: list[Path], path: Path) -> None:
    """Concatenate the batches' columns into one ``.npz``, one column in memory at a time."""
    with np.load(parts[0]) as first:
        names = list(first.files)

    def columns() -> Iterator[tuple[str, np.ndarray]]:
        for name in names:
            yield name, np.concatenate([_read(part, name) for part in parts])

    atomic_save_npz(columns(), path)


def _read(path: Path, name: str) -> np.ndarray:
    with np.load(path) as archive:
        return archive[name]


def compare(values: np.ndarray, other: np.ndarray) -> dict[str, Any]:
    """Paired t-test per position (``other``'s ε draws, its second axis, averaged first) beside the original's
    ``ttest_ind``, which counted every ε draw as its own measurement."""
    other = np.asarray(other, dtype=np.float64)
    per_position = other.mean(axis=1) if other.ndim == 2 else other
    return paired_and_independent_tests(values, per_position, independent_b=other.ravel())


def _spread(values: np.ndarray) -> dict[str, float]:
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(values.mean()), "median": float(np.median(values)),
            "std": float(values.std(ddof=1)) if values.size > 1 else 0.0}


def summarize(store: Path, labels: dict[str, str], reference: str, num_draws: int,
              own_draws: int | None = None) -> dict[str, Any]:
    """Per condition: mean/median/std of each metric and of the error norm; ``<metric>_ratio_eps_random`` and
    ``<metric>_ratio_eps_own_norm`` (mean(cond) / mean(baseline)); ``<metric>_reduction`` = 1 − mean(cond) /
    mean(reference); for the CEs also ``<metric>_excess`` over the clean run and its ``<metric>_excess_reduction``;
    ``tests`` (position-level paired and independent t): the condition against both baselines (t > 0: above the
    baseline), and the reference against the condition (t > 0: the condition lowers it). Beside the conditions: the
    clean run's CEs, the ε-random baseline and the zero-ablation (each metric's mean/median/std), and the counts:
    ``windows``, ``positions`` (measured, in all), ``positions_per_window`` (measured in each window) and
    ``measurements``."""
    with np.load(store) as data:
        positions = int(data["position"].shape[0])
        windows = int(np.unique(data["window"]).size)
        clean = {metric: data[f"clean.{metric}"] for metric in METRICS if metric != "kl"}
        clean_means = {metric: float(np.mean(values, dtype=np.float64)) for metric, values in clean.items()}
        results: dict[str, Any] = {
            "positions": positions,
            "windows": windows,
            "positions_per_window": positions // windows,
            "epsilon_draws": num_draws,
            "own_norm_draws": num_draws if own_draws is None else own_draws,
            # The original counted one row per (position, condition) and per ε draw; the own-norm baselines are ours.
            "measurements": positions * (len(labels) + num_draws),
            "measurements_with_own_norm_baselines":
                positions * (len(labels) + num_draws + (num_draws if own_draws is None else own_draws)
                             * (len(labels) - 1)),
            "reference": reference,
            "clean": {metric: _spread(values) for metric, values in clean.items()},
            EPS_RANDOM: {metric: _spread(data[f"{EPS_RANDOM}.{metric}"]) for metric in METRICS},
            "conditions": {},
        }
        if f"{ZERO_ABLATION}.kl" in data.files:  # a store merged before the zero-ablation existed has none
            results[ZERO_ABLATION] = {metric: _spread(data[f"{ZERO_ABLATION}.{metric}"]) for metric in METRICS}
        for name, label in labels.items():
            entry: dict[str, Any] = {"label": label, "error_norm": _spread(data[f"{name}.error_norm"]), "tests": {}}
            for metric in METRICS:
                values = data[f"{name}.{metric}"]
                eps = data[f"{EPS_RANDOM}.{metric}"]
                own = eps if name == reference else data[f"{EPS_OWN}.{name}.{metric}"]
                entry[metric] = _spread(values)
                entry[f"{metric}_ratio_eps_random"] = ratio(values, eps)
                entry[f"{metric}_ratio_eps_own_norm"] = ratio(values, own)
                entry["tests"][f"{metric}_vs_eps_random"] = compare(values, eps)
                if name != reference:
                    entry["tests"][f"{metric}_vs_eps_own_norm"] = compare(values, own)
                    reference_values = data[f"{reference}.{metric}"]
                    entry[f"{metric}_reduction"] = reduction(values, reference_values)
                    entry["tests"][f"{metric}_reference_minus_condition"] = compare(reference_values, values)
                if metric in clean:
                    entry[f"{metric}_excess"] = entry[metric]["mean"] - clean_means[metric]
            results["conditions"][name] = entry
    for name, entry in results["conditions"].items():
        for metric in clean:
            base = results["conditions"][reference][f"{metric}_excess"]
            if name != reference:
                entry[f"{metric}_excess_reduction"] = 1.0 - entry[f"{metric}_excess"] / base
    return results


def plot_results(store: Path, labels: dict[str, str], out: Path, title: str) -> list[Path]:
    """Per metric: its distribution per condition on a log axis (ε-random beside), and its mean by position."""
    written = []
    with np.load(store) as data:
        position = data["position"].astype(np.int64)
        counts = np.bincount(position)
        for metric in METRICS:
            series = {label: data[f"{name}.{metric}"] for name, label in labels.items()}
            series[EPS_LABEL] = data[f"{EPS_RANDOM}.{metric}"].ravel()
            if metric != "kl":
                series["clean"] = data[f"clean.{metric}"]
            written.append(plot_distributions_log(series, out / f"{metric}_distribution.png", f"{title}: {metric}",
                                                  METRIC_LABELS[metric]))
            by_position = {label: _mean_by_position(position, values, counts) for label, values in series.items()}
            written.append(plot_by_position(by_position, out / f"{metric}_by_position.png",
                                            f"{title}: {metric} by position", METRIC_LABELS[metric]))
    return written


# The panels of the interval figure: (title, figure key, scale, null).
INTERVAL_PANELS = (("KL / ε-random KL", "kl_ratio_eps_random", 1.0, 1.0),
                   ("KL reduction vs the reference (%)", "kl_reduction", 100.0, 0.0),
                   ("CE (next token) reduction vs the reference (%)", "ce_next_reduction", 100.0, 0.0))


def plot_intervals_of(results: dict[str, Any], out: Path, title: str) -> Path | None:
    """Each condition's KL ratio to ε-random and its KL and CE reductions, with their 95% CIs over windows
    (``kl_intervals.png``); None where the results hold no intervals (too few windows)."""
    panels: dict[str, dict[str, tuple[float, float, float]]] = {}
    for name, key, scale, _ in INTERVAL_PANELS:
        points = {entry["label"]: (scale * entry[key], scale * entry["ci95"][key]["low"],
                                   scale * entry["ci95"][key]["high"])
                  for entry in results["conditions"].values() if key in entry.get("ci95", {})}
        if points:
            panels[name] = points
    if not panels:
        return None
    nulls = {name: null for name, _, _, null in INTERVAL_PANELS}
    return plot_intervals(panels, out / "kl_intervals.png", f"{title}: 95% CIs over windows", nulls)


def _mean_by_position(position: np.ndarray, values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    draws = values.size // position.size
    sums = np.bincount(np.repeat(position, draws), weights=values.ravel(), minlength=counts.size)
    present = counts > 0
    return sums[present] / (counts[present] * draws)


def _interval(entry: dict[str, Any], figure: str, scale: float = 1.0, digits: int = 2) -> str:
    interval = entry.get("ci95", {}).get(figure)
    if interval is None:
        return "—"
    return f"[{scale * interval['low']:.{digits}f}, {scale * interval['high']:.{digits}f}]"


def format_table(results: dict[str, Any], title: str, paper: str) -> str:
    """The paper's figures in its form: ratios against ε-random, reductions against the reference (each with its 95%
    CI over windows), the window-level paired t of the reduction, both CEs."""
    lines = [
        title,
        f"{results['windows']:,} windows × {results['positions_per_window']:,} measured positions, "
        f"{results['epsilon_draws']} ε draws, {results['measurements']:,} measurements; CIs: 95%, bootstrap over "
        "windows; t: paired over per-window means",
        f"{'condition':<24}{'KL mean':>9}{'×ε-rand':>9}{'95% CI':>15}{'×ε-own':>8}{'KL red.':>9}{'95% CI':>17}"
        f"{'t':>7}{'CE next':>9}{'red.':>8}{'CE argmax':>11}{'red.':>8}",
    ]
    percent = lambda entry, key: f"{100 * entry[key]:.1f}%" if key in entry else "—"  # noqa: E731
    for entry in results["conditions"].values():
        t = entry["tests"].get("kl_reference_minus_condition", {}).get("by_window", {}).get("t")
        lines.append(
            f"{entry['label']:<24}{entry['kl']['mean']:>9.4f}{entry['kl_ratio_eps_random']:>8.2f}x"
            f"{_interval(entry, 'kl_ratio_eps_random'):>15}{entry['kl_ratio_eps_own_norm']:>7.2f}x"
            f"{percent(entry, 'kl_reduction'):>9}{_interval(entry, 'kl_reduction', 100, 1):>17}"
            f"{'—' if t is None else f'{t:.1f}':>7}{entry['ce_next']['mean']:>9.3f}"
            f"{percent(entry, 'ce_next_reduction'):>8}"
            f"{entry['ce_argmax']['mean']:>11.3f}{percent(entry, 'ce_argmax_reduction'):>8}"
        )
    others = {EPS_LABEL: results[EPS_RANDOM], "zero-ablation": results.get(ZERO_ABLATION)}
    for label, series in others.items():
        if series is not None:
            lines.append(f"{label:<24}{series['kl']['mean']:>9.4f}{'':>65}{series['ce_next']['mean']:>9.3f}{'':>8}"
                         f"{series['ce_argmax']['mean']:>11.3f}")
    clean = results["clean"]
    lines.append(f"{'clean (unpatched)':<24}{'':>74}{clean['ce_next']['mean']:>9.3f}{'':>8}"
                 f"{clean['ce_argmax']['mean']:>11.3f}")
    lines.append(paper)
    return "\n".join(lines)
