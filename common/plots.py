"""Plain PNG figures for the analyses; each function writes exactly one file.

Figures are built on ``matplotlib.figure.Figure`` and saved through the Agg renderer, never through
pyplot, so nothing is left open in pyplot's global figure list and no display is needed.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from common.atomic import atomic_write

logger = logging.getLogger(__name__)

PANEL_SIZE = (6.0, 4.0)
DPI = 120
ALPHA = 0.5


def _color(i: int) -> str:
    return f"C{i % 10}"


def _figure(n_panels: int = 1, max_cols: int = 3) -> tuple[Figure, list[Axes]]:
    cols = min(n_panels, max_cols)
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(PANEL_SIZE[0] * cols, PANEL_SIZE[1] * rows), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = list(np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel())
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    for ax in axes[:n_panels]:
        ax.grid(True, alpha=0.3)
    return fig, axes[:n_panels]


def _save(fig: Figure, path: str | Path, title: str) -> Path:
    path = Path(path)
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=DPI, format="png"))
    logger.info("wrote %s", path)
    return path


def _finish_counts(fig: Figure, ax: Axes, path: str | Path, title: str, xlabel: str, log_y: bool = False) -> Path:
    """The common ending of a histogram: a log y axis on request, the axis labels, the legend, the file."""
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.legend()
    return _save(fig, path, title)


def _is_loss(key: str) -> bool:
    return "loss" in key or "mse" in key


def plot_training_history(history: dict, path: str | Path, title: str) -> Path:
    """One panel per metric key found in ``history["train"]`` or ``history["val"]`` (lists of dicts with ``step``).

    Train and validation share a panel where both carry the key; losses (keys with "loss" or "mse")
    get a log y axis when all their values are positive.
    """
    splits = {name: history.get(name, []) for name in ("train", "val")}
    keys = sorted({key for rows in splits.values() for row in rows for key in row if key != "step"})
    fig, axes = _figure(max(len(keys), 1))
    for ax, key in zip(axes, keys):
        values = []
        for name, rows in splits.items():
            points = [(row["step"], row[key]) for row in rows if row.get(key) is not None]
            if points:
                steps, ys = zip(*points)
                ax.plot(steps, ys, marker="o" if name == "val" else None, markersize=3, label=name)
                values.extend(ys)
        if _is_loss(key) and values and min(values) > 0:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.legend()
    return _save(fig, path, title)


def plot_histograms(
    series: dict[str, np.ndarray],
    path: str | Path,
    title: str,
    xlabel: str,
    bins: int = 100,
    log_y: bool = False,
    vlines: dict[str, float] | None = None,
) -> Path:
    """Overlaid histograms on common bin edges; ``vlines`` maps a label to an x position (e.g. mixture means)."""
    arrays = {name: np.asarray(values, dtype=np.float64).ravel() for name, values in series.items()}
    pooled = np.concatenate(list(arrays.values()))
    edges = np.histogram_bin_edges(pooled, bins=bins)
    fig, (ax,) = _figure()
    for name, values in arrays.items():
        ax.hist(values, bins=edges, alpha=ALPHA, label=f"{name} (n={len(values)})")
    # Line colours continue after the histograms' so a line is not read as belonging to one series.
    for i, (label, x) in enumerate((vlines or {}).items(), start=len(arrays)):
        ax.axvline(x, color=_color(i), linestyle="--", label=f"{label} = {x:.3g}")
    return _finish_counts(fig, ax, path, title, xlabel, log_y)


def plot_histogram_panels(
    series: dict[str, np.ndarray],
    path: str | Path,
    title: str,
    xlabel: str,
    bins: int = 100,
    vlines: dict[str, dict[str, float]] | None = None,
) -> Path:
    """One histogram panel per series, side by side, each on its own bins; ``vlines[name]`` marks lines in that
    panel."""
    fig, axes = _figure(len(series))
    for ax, (name, values) in zip(axes, series.items()):
        values = np.asarray(values, dtype=np.float64).ravel()
        ax.hist(values, bins=bins, alpha=ALPHA, color=_color(0))
        for i, (label, x) in enumerate((vlines or {}).get(name, {}).items(), start=1):
            ax.axvline(x, color=_color(i), linestyle="--", label=f"{label} = {x:.3g}")
        ax.set_title(f"{name} (n={len(values)})")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("count")
        if (vlines or {}).get(name):
            ax.legend()
    return _save(fig, path, title)


def plot_binned_histograms(
    histograms: dict[str, tuple[np.ndarray, np.ndarray]],
    path: str | Path,
    title: str,
    xlabel: str,
    log_y: bool = False,
) -> Path:
    """Histograms already counted elsewhere, ``name -> (edges, counts)`` (e.g. blocked cosine counts).

    The x axis is cut to the span of non-empty bins: fixed [-1, 1] cosine bins are mostly empty.
    """
    fig, (ax,) = _figure()
    lows, highs = [], []
    for name, (edges, counts) in histograms.items():
        edges, counts = np.asarray(edges), np.asarray(counts)
        ax.stairs(counts, edges, label=name)
        filled = np.flatnonzero(counts)
        if filled.size:
            lows.append(edges[filled[0]])
            highs.append(edges[filled[-1] + 1])
    if lows:
        ax.set_xlim(min(lows), max(highs))
    return _finish_counts(fig, ax, path, title, xlabel, log_y)


def plot_cumulative_variance(
    curves: dict[str, np.ndarray],
    path: str | Path,
    title: str,
    threshold: float = 0.9,
) -> Path:
    """Cumulative explained-variance curves against the number of components, with the threshold crossing marked."""
    fig, (ax,) = _figure()
    for name, curve in curves.items():
        curve = np.asarray(curve)
        crossing = int(min(np.searchsorted(curve, threshold) + 1, len(curve)))
        ax.plot(np.arange(1, len(curve) + 1), curve, label=f"{name} ({crossing} for {threshold:.0%})")
    ax.axhline(threshold, color="grey", linestyle="--")
    ax.set_xlabel("components")
    ax.set_ylabel("cumulative explained variance")
    ax.legend()
    return _save(fig, path, title)


def plot_scatter(
    x: np.ndarray,
    y_by_name: dict[str, np.ndarray],
    path: str | Path,
    title: str,
    xlabel: str,
    ylabel: str,
    vline: float | None = None,
) -> Path:
    """Several y series against one x (e.g. pathway shares against squared norm), with an optional split line."""
    fig, (ax,) = _figure()
    for name, y in y_by_name.items():
        ax.scatter(x, y, s=4, alpha=ALPHA, label=name, rasterized=True)
    if vline is not None:
        ax.axvline(vline, color="grey", linestyle="--", label=f"x = {vline:g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(markerscale=3)
    return _save(fig, path, title)


def plot_box_by_group(groups: dict[str, dict[str, np.ndarray]], path: str | Path, title: str, ylabel: str = "") -> Path:
    """Box plots of each series (inner keys), the groups (outer keys, e.g. low/high norm) side by side."""
    group_names = list(groups)
    series_names = list(dict.fromkeys(name for inner in groups.values() for name in inner))
    width = 0.8 / len(group_names)
    fig, (ax,) = _figure()
    for g, group in enumerate(group_names):
        present = [(s, groups[group][name]) for s, name in enumerate(series_names) if name in groups[group]]
        positions = [s + (g - (len(group_names) - 1) / 2) * width for s, _ in present]
        boxes = ax.boxplot(
            [np.asarray(values).ravel() for _, values in present],
            positions=positions,
            widths=width * 0.9,
            patch_artist=True,
            showfliers=False,
            medianprops={"color": "black"},
        )
        for box in boxes["boxes"]:
            box.set_facecolor(_color(g))
            box.set_alpha(ALPHA)
        boxes["boxes"][0].set_label(group)
    ax.set_xticks(range(len(series_names)), series_names)
    ax.set_ylabel(ylabel)
    ax.legend()
    return _save(fig, path, title)


def plot_distributions_log(
    values_by_condition: dict[str, np.ndarray],
    path: str | Path,
    title: str,
    xlabel: str,
    bins: int = 100,
) -> Path:
    """Step histograms on log-spaced bins (KL/CE per measurement); values <= 0 cannot sit on a log axis and are left
    out."""
    positive = {}
    for name, values in values_by_condition.items():
        values = np.asarray(values, dtype=np.float64).ravel()
        kept = values[values > 0]
        if kept.size < values.size:
            logger.info("%s: %d of %d values <= 0 left out of the log-axis plot", name, values.size - kept.size,
                        values.size)
        positive[name] = kept
    pooled = np.concatenate(list(positive.values()))
    edges = np.geomspace(pooled.min(), pooled.max(), bins + 1)
    fig, (ax,) = _figure()
    for name, values in positive.items():
        ax.hist(values, bins=edges, histtype="step", label=f"{name} (mean {values.mean():.3g})")
    ax.set_xscale("log")
    return _finish_counts(fig, ax, path, title, xlabel)


def plot_by_position(means_by_condition: dict[str, np.ndarray], path: str | Path, title: str, ylabel: str) -> Path:
    """One line per condition: a per-position mean against the token position in the window."""
    fig, (ax,) = _figure()
    for name, means in means_by_condition.items():
        ax.plot(np.arange(len(means)), means, label=name)
    ax.set_xlabel("position")
    ax.set_ylabel(ylabel)
    ax.legend()
    return _save(fig, path, title)


def plot_intervals(panels: dict[str, dict[str, tuple[float, float, float]]], path: str | Path, title: str,
                   nulls: dict[str, float]) -> Path:
    """One panel per figure (e.g. a ratio): each label's estimate as a point with its interval (estimate, low, high)
    as an error bar, and the figure's null value (``nulls``, where given) as a grey line."""
    fig, axes = _figure(len(panels))
    for ax, (name, estimates) in zip(axes, panels.items()):
        labels = list(estimates)
        points = np.array([estimates[label] for label in labels], dtype=np.float64).reshape(-1, 3)
        errors = np.abs(points[:, 1:].T - points[:, 0])
        ax.errorbar(range(len(labels)), points[:, 0], yerr=errors, fmt="o", capsize=4, color=_color(0))
        if name in nulls:
            ax.axhline(nulls[name], color="grey", linewidth=0.8)
        ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
        ax.set_title(name)
    return _save(fig, path, title)


def plot_interaction_lines(panels: dict[str, dict[str, tuple[float, ...]]], path: str | Path, title: str,
                           xlabels: tuple[str, ...], ylabel: str,
                           intervals: dict[str, dict[str, list[tuple[float, float]]]] | None = None) -> Path:
    """One panel per condition (e.g. a multiplier); in each, one line per level of the second factor across the levels
    of the first (two: parallel lines mean no interaction; or a dose, e.g. the multipliers). ``intervals``, keyed as
    ``panels``: each point's (low, high), drawn as error bars."""
    fig, axes = _figure(len(panels))
    for ax, (name, lines) in zip(axes, panels.items()):
        for i, (label, values) in enumerate(lines.items()):
            x = np.arange(len(values))
            ax.plot(x, values, marker="o", color=_color(i), label=label)
            if intervals is not None:
                low, high = np.asarray(intervals[name][label], dtype=np.float64).T
                spread = np.maximum(0.0, [np.asarray(values) - low, high - np.asarray(values)])  # a percentile CI
                ax.errorbar(x, values, yerr=spread, fmt="none", ecolor=_color(i), capsize=3)  # may miss its point
        ax.set_xticks(range(len(xlabels)), list(xlabels))
        ax.axhline(0.0, color="grey", linewidth=0.5)
        ax.set_title(name)
        ax.set_ylabel(ylabel)
        ax.legend()
    return _save(fig, path, title)


def plot_heatmap(matrix: np.ndarray, rows: list[str], columns: list[str], path: str | Path, title: str,
                 colorbar: str) -> Path:
    """A matrix of values (e.g. features × stimulus cells) on a diverging scale centred at 0."""
    matrix = np.asarray(matrix, dtype=np.float64)
    limit = float(np.nanmax(np.abs(matrix))) or 1.0
    fig, (ax,) = _figure()
    ax.grid(False)
    image = ax.imshow(matrix, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    fig.colorbar(image, ax=ax, label=colorbar)
    return _save(fig, path, title)


def plot_grouped_bars(groups: dict[str, dict[str, float]], path: str | Path, title: str, ylabel: str) -> Path:
    """Bars per category (inner keys), one bar colour per group (outer keys), e.g. a feature's t when selected and
    held out."""
    names = list(groups)
    categories = list(dict.fromkeys(category for inner in groups.values() for category in inner))
    width = 0.8 / len(names)
    fig, (ax,) = _figure()
    for g, name in enumerate(names):
        positions = [c + (g - (len(names) - 1) / 2) * width for c in range(len(categories))]
        ax.bar(positions, [groups[name].get(category, np.nan) for category in categories], width, label=name,
               color=_color(g))
    ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right")
    ax.axhline(0.0, color="grey", linewidth=0.5)
    ax.set_ylabel(ylabel)
    ax.legend()
    return _save(fig, path, title)


def plot_points_by_group(points: dict[str, dict[str, float]], path: str | Path, title: str, ylabel: str) -> Path:
    """Labelled points in columns, one column per group (e.g. each word's Δlogit in its 2×2 cell)."""
    fig, (ax,) = _figure()
    for g, values in enumerate(points.values()):
        for j, (label, value) in enumerate(values.items()):
            x = g + 0.25 * ((j % 5) - 2) / 2
            ax.scatter([x], [value], color=_color(g), s=12)
            ax.annotate(label, (x, value), fontsize=6, xytext=(3, 0), textcoords="offset points")
    ax.set_xticks(range(len(points)), list(points))
    ax.axhline(0.0, color="grey", linewidth=0.5)
    ax.set_ylabel(ylabel)
    return _save(fig, path, title)
