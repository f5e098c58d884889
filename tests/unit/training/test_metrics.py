import pytest
import torch

from common.training.metrics import ReconstructionMetrics


def test_whole_set_metrics_match_a_direct_computation():
    torch.manual_seed(0)
    x = torch.randn(300, 8) * torch.linspace(0.5, 3, 8) + 2.0
    recon = x + 0.3 * torch.randn(300, 8) + 0.1
    metrics = ReconstructionMetrics()
    for start in range(0, 300, 70):  # uneven batches: per-batch averaging would give another answer
        metrics.update(x[start : start + 70], recon[start : start + 70])
    result = metrics.compute()
    xn, rn = x.double().numpy(), recon.double().numpy()
    e = (xn - xn.mean(0)) - (rn - rn.mean(0))
    assert result["variance_explained"] == pytest.approx(1 - e.var(0).sum() / xn.var(0).sum(), rel=1e-9)
    assert result["mse"] == pytest.approx(((xn - rn) ** 2).mean(), rel=1e-9)
    assert result["fvu"] == pytest.approx(((xn - rn) ** 2).sum() / ((xn - xn.mean(0)) ** 2).sum(), rel=1e-9)


def test_perfect_reconstruction_and_mean_predictor():
    x = torch.randn(50, 4)
    perfect = ReconstructionMetrics()
    perfect.update(x, x)
    assert perfect.compute()["variance_explained"] == pytest.approx(1.0)
    mean_pred = ReconstructionMetrics()
    mean_pred.update(x, x.mean(0, keepdim=True).expand_as(x))
    assert mean_pred.compute()["fvu"] == pytest.approx(1.0)


def test_l0_and_dead_fraction():
    metrics = ReconstructionMetrics(num_features=10, dead_threshold=1e-6)
    acts = torch.tensor([[1.0, 0.5, 0.0], [2.0, 1e-7, 0.3]])
    idx = torch.tensor([[0, 1, 2], [0, 3, 4]])
    x = torch.zeros(2, 3)
    metrics.update(x, x, acts, idx)
    result = metrics.compute()
    assert result["l0"] == pytest.approx(2.0)  # 1e-7 and 0 are below the threshold
    assert result["dead_fraction"] == pytest.approx(0.7)  # features 0, 1, 4 fired


def test_empty_set_is_an_error():
    with pytest.raises(ValueError):
        ReconstructionMetrics().compute()
