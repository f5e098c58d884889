"""Per-window sums and the stage figures' CIs over held-out windows (METHOD §13.2): the windows' parts add up to the
whole-set figures, each part is what a direct computation of that window gives, batches may cut windows anywhere,
and the intervals are the window bootstrap of those parts."""
import numpy as np
import pytest
import torch

from common.stats import reduction_of_sums, window_bootstrap
from common.training.metrics import ReconstructionMetrics, WindowSums
from common.training.window_cis import mse_ci, reduction_ci, variance_explained_ci

ROWS_PER_WINDOW, WINDOWS, D = 7, 5, 4


def _rows() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(ROWS_PER_WINDOW * WINDOWS, D, generator=g) * torch.linspace(0.5, 2, D) + 1.0
    recon = x + 0.4 * torch.randn(x.shape, generator=g) * torch.arange(1, WINDOWS + 1).repeat_interleave(
        ROWS_PER_WINDOW)[:, None] / WINDOWS  # each window reconstructed less well than the last
    return x, recon


def _metrics(x: torch.Tensor, recon: torch.Tensor, batch: int) -> ReconstructionMetrics:
    metrics = ReconstructionMetrics(rows_per_window=ROWS_PER_WINDOW)
    for start in range(0, len(x), batch):
        metrics.update(x[start : start + batch], recon[start : start + batch])
    return metrics


def test_window_parts_are_each_windows_sums_about_the_whole_set_means():
    x, recon = _rows()
    metrics = _metrics(x, recon, batch=6)  # batches of 6 rows cut the 7-row windows anywhere
    window, whole = metrics.per_window(), metrics.compute()
    xn, en = x.double().numpy(), (x - recon).double().numpy()
    by_window = lambda a: a.reshape(WINDOWS, ROWS_PER_WINDOW, D)  # noqa: E731
    np.testing.assert_allclose(window["sse"], (by_window(en) ** 2).sum(axis=(1, 2)), rtol=1e-12)
    np.testing.assert_allclose(window["sst"], (by_window(xn - xn.mean(0)) ** 2).sum(axis=(1, 2)), rtol=1e-10)
    np.testing.assert_allclose(window["sse_centred"], (by_window(en - en.mean(0)) ** 2).sum(axis=(1, 2)), rtol=1e-10)
    assert window["rows"] == [ROWS_PER_WINDOW] * WINDOWS
    assert 1 - sum(window["sse_centred"]) / sum(window["sst"]) == pytest.approx(whole["variance_explained"], rel=1e-12)
    assert sum(window["sse"]) / (len(x) * D) == pytest.approx(whole["mse"], rel=1e-12)
    assert sum(window["sse"]) / sum(window["sst"]) == pytest.approx(whole["fvu"], rel=1e-12)
    one_batch = _metrics(x, recon, batch=len(x)).per_window()
    for key, values in window.items():
        assert one_batch[key] == pytest.approx(values, rel=1e-12), key


def test_a_short_last_window_counts_its_own_rows():
    sums = WindowSums(3)
    sums.add([torch.ones(4, 1)])
    sums.add([torch.ones(4, 1)])
    assert sums.rows_per().tolist() == [3, 3, 2] and sums.sums[:, 0, 0].tolist() == [3, 3, 2]


def test_the_intervals_are_the_window_bootstrap_of_the_parts():
    x, recon = _rows()
    window = _metrics(x, recon, batch=10).per_window()
    ve = variance_explained_ci(window)
    expected = window_bootstrap((np.array(window["sse_centred"]), np.array(window["sst"])), reduction_of_sums)
    assert (ve["low"], ve["high"], ve["level"]) == (expected["low"], expected["high"], 0.95)
    assert ve["low"] < ve["estimate"] < ve["high"] and ve["windows"] == WINDOWS
    mse = mse_ci(window["sse"], window["rows"], D)
    assert mse["estimate"] == pytest.approx(float(((x - recon) ** 2).mean()), rel=1e-6) and mse["low"] < mse["high"]
    same = reduction_ci([1.0, 2.0, 3.0], [2.0, 4.0, 6.0])  # every window reduces by half: no spread to resample
    assert (same["estimate"], same["low"], same["high"]) == pytest.approx((0.5, 0.5, 0.5))
    assert reduction_ci([1.0], [2.0]) is None  # one window: no interval


def test_firing_counts_per_feature():
    metrics = ReconstructionMetrics(num_features=6, dead_threshold=1e-6)
    acts = torch.tensor([[1.0, 0.5, 0.0], [2.0, 1e-7, 0.3], [0.2, 0.1, 0.0]])
    idx = torch.tensor([[0, 1, 2], [0, 3, 4], [5, 0, 1]])
    x = torch.zeros(3, 2)
    metrics.update(x, x, acts, idx)
    assert metrics.firing.tolist() == [3, 1, 0, 0, 1, 1]  # 1e-7 and 0 do not count as firing
    assert metrics.compute()["dead_fraction"] == pytest.approx(2 / 6)
