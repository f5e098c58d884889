"""Per-row errors and per-window sums against the dense reference formulas, and the controls' figures against hand
computations."""
import numpy as np
import pytest
import torch

from common.data.activations import NormStats
from common.models.joint import JointSAENFM, joint_reference
from common.models.nfm import NFM, nfm_reference
from common.models.sae import TopKSAE, sae_reference
from common.training.nfm_objective import SAECodes
from common.training.window_cis import gain_difference_ci, mse_ci, reduction_ci
from common.training.window_errors import joint_row_errors, nfm_row_errors, sae_row_errors, window_sums


def test_window_sums_add_each_windows_rows_in_order():
    assert window_sums(np.arange(6.0), 3).tolist() == [3.0, 12.0]
    with pytest.raises(ValueError):
        window_sums(np.arange(5.0), 3)


def test_sae_and_joint_row_errors_equal_the_dense_reference():
    torch.manual_seed(0)
    rows, norm = torch.randn(12, 8) * 2 + 1, NormStats(torch.ones(8), torch.full((8,), 2.0))
    sae = TopKSAE(8, 32, 4).eval()
    x = norm.normalize(rows)
    expected = (x.double() - sae_reference(sae, x).double()).square().sum(1)
    torch.testing.assert_close(sae_row_errors(sae, rows, norm, "sparse", 5), expected, rtol=1e-5, atol=1e-6)
    joint = JointSAENFM(8, 32, 4, 3, 2, dropout=0.0).eval()
    with torch.no_grad():
        reference = joint_reference(joint, x)
    errors = joint_row_errors(joint, rows, norm, "dense", 5)
    for name, recon in (("full", reference.recon), ("sae_part", reference.sae_recon),
                        ("sae_plus_linear", reference.sae_recon + reference.linear)):
        torch.testing.assert_close(errors[name], (x.double() - recon.double()).square().sum(1), rtol=1e-5, atol=1e-6)


def test_nfm_row_errors_equal_the_dense_reference():
    torch.manual_seed(1)
    nfm = NFM(20, 6, 4, dropout=0.0).eval()
    with torch.no_grad():
        for parameter in nfm.parameters():  # the init's std 0.01 would make the interaction term vanish
            parameter.normal_(std=0.5)
    acts, indices = torch.rand(10, 3), torch.stack([torch.randperm(20)[:3] for _ in range(10)])
    target = torch.randn(10, 6)
    dense = torch.zeros(10, 20).scatter(1, indices, acts)
    with torch.no_grad():
        out = nfm_reference(nfm, dense)
    errors = nfm_row_errors(nfm, SAECodes(acts, indices, target), "sparse", 4)
    square = lambda t: t.double().square().sum(1)  # noqa: E731
    torch.testing.assert_close(errors["before"], square(target))
    torch.testing.assert_close(errors["after"], square(target - out.total), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(errors["linear_only"], square(target - out.linear), rtol=1e-5, atol=1e-6)


def test_figures_are_ratios_of_sums_over_windows():
    before, after_a, after_b = np.array([4.0, 6.0, 10.0]), np.array([1.0, 2.0, 3.0]), np.array([2.0, 3.0, 5.0])
    assert reduction_ci(after_a, before)["estimate"] == pytest.approx(1 - 6 / 20)
    difference = gain_difference_ci(after_a, after_b, before)
    assert difference["estimate"] == pytest.approx((10 - 6) / 20)  # reduction(a) − reduction(b)
    assert difference["low"] <= difference["estimate"] <= difference["high"]
    assert mse_ci(before, 1, 2)["estimate"] == pytest.approx(20 / 3 / 2)  # windows of one row, two entries each
    assert mse_ci(before, [1, 1, 2], 2)["estimate"] == pytest.approx(20 / 4 / 2)  # the third window has two rows
