"""The ridge map against the closed form solved independently (numpy.linalg.lstsq on the augmented system), the
penalty choice on a set-aside slice, and its file."""
import numpy as np
import pytest
import torch

from common.errors import UserError
from common.training.ridge_map import RidgeMap, choose_alpha, fit_ridge


def _data(rows: int = 200, width: int = 6, out: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, width)) + 3.0  # off-centre, so the unpenalized intercept matters
    y = x @ rng.normal(size=(width, out)) + 0.5 + 0.3 * rng.normal(size=(rows, out))
    return x, y


@pytest.mark.parametrize("alpha", [0.0, 0.5, 40.0])
def test_fit_is_the_closed_form_with_an_unpenalized_intercept(alpha):
    x, y = _data()
    ridge = fit_ridge(x, y, alpha)
    # min ‖(x − x̄) W − (y − ȳ)‖² + α‖W‖²  ⇔  least squares on [x − x̄; √α I] W = [y − ȳ; 0]; b = ȳ − x̄ W
    x_mean, y_mean = x.mean(0), y.mean(0)
    stacked_x = np.vstack([x - x_mean, np.sqrt(alpha) * np.eye(x.shape[1])])
    stacked_y = np.vstack([y - y_mean, np.zeros((x.shape[1], y.shape[1]))])
    weights = np.linalg.lstsq(stacked_x, stacked_y, rcond=None)[0]
    np.testing.assert_allclose(ridge.coef.numpy(), weights.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ridge.intercept.numpy(), y_mean - x_mean @ weights, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ridge.predict(torch.from_numpy(x)).numpy(), x @ weights + y_mean - x_mean @ weights,
                               rtol=1e-4, atol=1e-4)


def test_penalty_chosen_on_the_slice_and_every_score_recorded():
    x, y = _data(rows=60, width=30, seed=1)  # few rows for many inputs: the penalty matters
    x_slice, y_slice = _data(rows=200, width=30, seed=1)
    alphas = [0.01, 1.0, 100.0, 10_000.0]
    best, scores = choose_alpha(x, y, x_slice, y_slice, alphas)
    by_hand = {a: float(np.mean((fit_ridge(x, y, a).predict(torch.from_numpy(x_slice)).numpy() - y_slice) ** 2))
               for a in alphas}
    assert scores == pytest.approx({f"{a:g}": v for a, v in by_hand.items()}, rel=1e-6)
    assert best == min(by_hand, key=by_hand.get)
    with pytest.raises(UserError):
        choose_alpha(x, y, x_slice, y_slice, [-1.0])


def test_saved_map_loads_the_same(tmp_path):
    ridge = fit_ridge(*_data(), 2.0)
    ridge.save(tmp_path / "ridge.safetensors")
    loaded = RidgeMap.load(tmp_path / "ridge.safetensors")
    assert torch.equal(loaded.coef, ridge.coef) and torch.equal(loaded.intercept, ridge.intercept)
    assert loaded.alpha == 2.0
