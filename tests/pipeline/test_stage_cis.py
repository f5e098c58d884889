"""The trained stages' held-out figures with their CIs over windows and their firing counts (METHOD §13.2), on the
session's tiny stage directories: each interval's estimate is the figure itself, each window's parts add up to the
figure, and the firing file agrees with the dead fraction and L0 the metrics report."""
from pathlib import Path

import pytest
import torch

from common.config.presets import build_config
from common.data.activations import open_stream
from common.models.loading import load_sae
from common.store.reads import load_json
from common.store.stage_files import read_firing_counts

TINY_WINDOWS = 6  # held-out windows among the tiny preset's first 64: i % 10 == 9


def _ci(metrics: dict, key: str, figure: float | None = None) -> dict:
    ci = metrics["ci"][key]
    assert ci["estimate"] == pytest.approx(metrics[key] if figure is None else figure, rel=1e-9, abs=1e-12), key
    assert ci["low"] <= ci["estimate"] <= ci["high"] and ci["level"] == 0.95 and ci["windows"] == TINY_WINDOWS, key
    return ci


def _firing_agrees(folder: Path, metrics: dict, features: int, l0: float) -> None:
    counts, rows = read_firing_counts(folder)
    assert counts.shape == (features,) and rows == metrics.get("evaluated_rows", rows)
    assert float((counts == 0).double().mean()) == pytest.approx(metrics["dead_fraction"])
    assert int(counts.sum()) / rows == pytest.approx(l0, rel=1e-12)  # each active code is one firing


def test_stage1_and_stage3(tiny_stage1_dir, tiny_sae2_dir):
    for folder, features in ((tiny_stage1_dir, 1000), (tiny_sae2_dir, 150)):
        metrics = load_json(folder / "metrics.json")
        _ci(metrics, "variance_explained")
        _ci(metrics, "mse")
        window, width = metrics["per_window"], (64 if folder == tiny_stage1_dir else 6)
        assert sum(window["rows"]) == metrics["evaluated_rows"] == TINY_WINDOWS * 128
        assert sum(window["sse"]) / (sum(window["rows"]) * width) == pytest.approx(metrics["mse"], rel=1e-12)
        assert 1 - sum(window["sse_centred"]) / sum(window["sst"]) == pytest.approx(metrics["variance_explained"],
                                                                                   rel=1e-12)
        _firing_agrees(folder, metrics, features, metrics["l0"])


def test_stage2(tiny_nfm_dir):
    metrics = load_json(tiny_nfm_dir / "metrics.json")
    _ci(metrics, "error_reduction_val")
    _ci(metrics, "residual_mse_after_val")
    window = metrics["per_window"]
    assert 1 - sum(window["sse_after"]) / sum(window["sse_before"]) == pytest.approx(metrics["error_reduction_val"],
                                                                                     rel=1e-12)
    assert "error_reduction_train" not in metrics["ci"]  # training rows are no held-out windows


def test_stage5(tiny_joint_dir):
    metrics = load_json(tiny_joint_dir / "metrics.json")
    for key in ("joint_mse", "sae_part_mse", "improvement", "improvement_vs_standalone", "linear_contribution",
                "interaction_contribution", "joint_variance_explained", "standalone_sae_mse"):
        _ci(metrics, key)
    window = metrics["per_window"]
    assert 1 - sum(window["joint_sse"]) / sum(window["standalone_sse"]) == pytest.approx(
        metrics["improvement_vs_standalone"], rel=1e-12)
    rows = sum(window["rows"])
    _firing_agrees(tiny_joint_dir, {**metrics, "evaluated_rows": rows}, 1000, metrics["l0"])


def test_the_firing_file_is_the_saved_sae_on_the_held_out_rows(tiny_stage1_dir, tiny_lm):
    """The saved SAE, fed the held-out windows again, fires each feature on as many rows as the file says."""
    sae, norm, _ = load_sae(tiny_stage1_dir)
    cfg = build_config("sae1", {"preset": "tiny"})
    rows = open_stream(cfg, tiny_lm).val_rows(cfg.val_tokens // cfg.window, within=cfg.num_tokens // cfg.window)
    counts_here = torch.zeros(sae.num_features, dtype=torch.int64)
    with torch.no_grad():
        for start in range(0, rows.shape[0], cfg.batch_size):  # the model's own dense encode, batched as the stage
            acts, indices = sae.encode(norm.normalize(rows[start : start + cfg.batch_size]))
            for row_acts, row_indices in zip(acts, indices):
                counts_here[row_indices[row_acts > 1e-6]] += 1
    counts, held_out = read_firing_counts(tiny_stage1_dir)
    assert held_out == rows.shape[0] and torch.equal(counts, counts_here)
