"""part17's untrained control (METHOD §13.4): the resample ranks equal scipy's rankdata of each resample, and the
difference of differences sets a trained gap against an untrained one."""
import numpy as np
import pytest
from scipy import stats

from common.analysis.control import LEVEL, controlled_shares, resample_ranks


def test_resample_ranks_are_rankdata_of_each_resample():
    rng = np.random.default_rng(1)
    values = np.round(rng.random(300), 2)  # ties in the values themselves, and more from resampling
    dense = stats.rankdata(values, method="dense").astype(np.int64) - 1
    idx = rng.integers(0, 300, (7, 300))
    both = resample_ranks(np.stack([dense, dense[::-1]]), idx)
    np.testing.assert_array_equal(both[0], stats.rankdata(values[idx], axis=-1))
    np.testing.assert_array_equal(both[1], stats.rankdata(values[::-1][idx], axis=-1))


def _norms(rng: np.random.Generator, n: int, decoder: np.ndarray, interaction_gap: float) -> dict[str, np.ndarray]:
    """Features whose linear and nonlinear norms grow by ``interaction_gap`` (relative) below the median decoder
    norm: the interaction share is higher there by construction."""
    low = decoder < np.median(decoder)
    scale = 1 + interaction_gap * low
    return {"decoder": decoder, "linear": rng.uniform(0.9, 1.1, n) * scale,
            "nonlinear": rng.uniform(0.9, 1.1, n) * scale}


def test_the_trained_gap_is_held_to_the_untrained_one():
    rng = np.random.default_rng(0)
    trained = _norms(rng, 600, rng.uniform(0.5, 1.5, 600), interaction_gap=0.5)
    untrained = _norms(rng, 500, rng.uniform(0.5, 1.5, 500), interaction_gap=0.0)
    result = controlled_shares(trained, untrained, seed=0)
    did = result["difference_of_differences"]["interaction"]
    t, u = result["trained"]["shares"]["interaction"], result["untrained"]["shares"]["interaction"]
    assert did["estimate"] == pytest.approx((t["mean_low"] - t["mean_high"]) - (u["mean_low"] - u["mean_high"]))
    assert did["low"] > 0 and did["level"] == LEVEL and (did["n_trained"], did["n_untrained"]) == (600, 500)
    assert result["difference_of_differences"]["residual"]["estimate"] == pytest.approx(-did["estimate"])
    # the same gap in both models: nothing beyond what the starting scales give
    same = controlled_shares(trained, _norms(rng, 500, rng.uniform(0.5, 1.5, 500), interaction_gap=0.5), seed=0)
    interval = same["difference_of_differences"]["interaction"]
    assert interval["low"] < 0 < interval["high"]
    assert result["trained"]["split"] == pytest.approx(np.median(trained["decoder"] ** 2))
