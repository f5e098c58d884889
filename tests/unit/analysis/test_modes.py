"""The one bimodality verdict (METHOD §13.3) on constructed samples: the four cases of the issue, the never-moved
rule's two conditions, and the valley found between the two highest modes wherever they lie."""
import numpy as np
import pytest
from scipy import stats

from common.analysis.modes import VALLEY_RATIO, kde_valley, low_mode_shares, never_moved, verdict
from common.stats import bimodality

INIT = 64 / (3 * 1000)  # d/(3F) at the tiny shapes: 0.0213, as in the paper
RNG = np.random.default_rng(0)
TWO_MODES = np.concatenate([RNG.normal(0.05, 0.01, 3000), RNG.normal(0.37, 0.05, 3000)]).clip(1e-4)
LOGNORMAL = RNG.lognormal(np.log(0.15), 0.5, 6000)
UNIFORM = RNG.uniform(0.05, 0.4, 6000)


def _moved_everywhere(squared: np.ndarray) -> dict:
    """Initial norms far from the trained ones and every feature fired: nothing is set apart."""
    return verdict(squared, np.full(len(squared), INIT), np.ones(len(squared), dtype=np.int64), 10_000)


def test_two_separated_modes_are_bimodal_with_the_valley_between_them():
    result = _moved_everywhere(TWO_MODES)
    moved = result["moved"]
    assert result["bimodal"] and result["never_moved"]["count"] == 0
    assert moved["dip"]["p"] < 0.05 and moved["kde"]["ratio"] < VALLEY_RATIO
    low, high = sorted(moved["kde"]["modes"][:2])
    assert low == pytest.approx(0.05, abs=0.02) and high == pytest.approx(0.37, abs=0.03)
    assert 0.08 < moved["low_mode_below"] < 0.25


def test_one_lognormal_is_not_bimodal():
    result = _moved_everywhere(LOGNORMAL)
    assert not result["bimodal"] and result["moved"]["dip"]["p"] > 0.05


def test_a_spike_of_never_moved_features_is_set_apart():
    spike = INIT * (1 + RNG.uniform(-0.05, 0.05, 700))  # untrained columns: their initial norm, give or take
    squared = np.concatenate([spike, LOGNORMAL])
    initial = np.concatenate([spike, np.full(len(LOGNORMAL), INIT)])
    firing = np.concatenate([np.zeros(700, dtype=np.int64), np.ones(len(LOGNORMAL), dtype=np.int64)])
    blind = verdict(squared)  # no initial norms or firing counts: the spike reads as a mode
    assert not blind["never_moved"]["known"] and blind["moved"]["dip"]["p"] < 0.05 and blind["bimodal"]
    result = verdict(squared, initial, firing, 10_000)
    assert result["never_moved"]["count"] == 700 and result["moved"]["n"] == len(LOGNORMAL)
    assert not result["bimodal"]


def test_a_flat_sample_is_bimodal_by_the_mixture_rule_and_not_by_the_verdict():
    assert bimodality(UNIFORM)["bimodal"]
    result = _moved_everywhere(UNIFORM)
    assert not result["bimodal"]
    assert result["moved"]["kde"]["ratio"] is None or result["moved"]["kde"]["ratio"] > VALLEY_RATIO


def test_never_moved_needs_both_no_firing_and_a_norm_near_its_own_start():
    initial = np.array([0.02, 0.02, 0.02, 0.04])
    squared = np.array([0.024, 0.024, 0.03, 0.04])  # within 25%, within, 50% away, unchanged
    firing = np.array([0, 3, 0, 0])
    assert never_moved(squared, initial, firing).tolist() == [True, False, False, True]


def test_the_valley_is_found_between_the_two_highest_modes_wherever_they_lie():
    """A small low mode far from the mixture's means: the valley check looks between the KDE's own modes."""
    sample = np.concatenate([RNG.normal(0.05, 0.008, 900), RNG.normal(0.37, 0.05, 5100)])
    kde = kde_valley(sample)
    low, high = sorted(kde["modes"][:2])
    assert low == pytest.approx(0.05, abs=0.02) and high == pytest.approx(0.37, abs=0.03)
    assert kde["valley"] and low < kde["valley_location"] < high
    density = stats.gaussian_kde(sample, bw_method="scott")
    floor = density(np.linspace(low, high, 2001)).min()
    assert kde["ratio"] == pytest.approx(floor / min(density([low])[0], density([high])[0]), rel=0.02)


def test_low_mode_shares_by_firing_frequency():
    squared = np.array([0.01, 0.02, 0.5, 0.6, 0.03, 0.7])
    firing = np.array([0, 1, 0, 500, 800, 900])  # of 10,000 rows: < 0.1% for the first three
    shares = low_mode_shares(squared, firing, 10_000, 0.1)
    assert (shares["rare"], shares["rest"]) == (3, 3)
    assert shares["low_share_rare"] == pytest.approx(2 / 3) and shares["low_share_rest"] == pytest.approx(1 / 3)
    assert low_mode_shares(squared, firing, 10_000, None)["low_share_rare"] is None


def test_a_small_far_bump_neither_displaces_the_two_highest_modes_nor_makes_a_verdict_alone():
    """A 1% cluster far to the left of two modes is a third, lowest mode: the KDE's two highest modes stay the main
    two; and a far cluster's valley that the dip test does not back is no bimodality."""
    main = np.concatenate([RNG.normal(0.2, 0.01, 3000), RNG.normal(0.45, 0.02, 3000)])
    bumped = np.concatenate([RNG.normal(0.02, 0.002, 60), main])
    kde = kde_valley(bumped)
    low, high = sorted(kde["modes"][:2])
    assert len(kde["modes"]) >= 3 and low == pytest.approx(0.2, abs=0.02) and high == pytest.approx(0.45, abs=0.02)
    assert 0.2 < kde["valley_location"] < 0.45
    alone = _moved_everywhere(np.concatenate([LOGNORMAL, RNG.normal(0.9, 0.005, 60)]))
    assert alone["moved"]["kde"]["valley"] and alone["moved"]["dip"]["p"] > 0.05 and not alone["bimodal"]
