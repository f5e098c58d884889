"""Statistics against scipy called directly, the bimodality rule on known samples, and every plot writes a PNG."""
import numpy as np
import pytest
from scipy import stats

from common import plots
from common.stats import (
    bimodality,
    describe,
    paired_and_independent_tests,
    pathway_shares,
    ratio,
    reduction,
    spearman,
    two_sample_tests,
)

RNG_SEED = 0


def test_two_population_sample_is_bimodal():
    rng = np.random.default_rng(RNG_SEED)
    sample = np.concatenate([rng.normal(0.05, 0.02, 1200), rng.normal(0.37, 0.05, 2800)])
    result = bimodality(sample)
    assert result["bimodal"]
    np.testing.assert_allclose(result["two_component"]["means"], [0.05, 0.37], atol=0.01)
    np.testing.assert_allclose(result["two_component"]["weights"], [0.3, 0.7], atol=0.03)
    np.testing.assert_allclose(result["two_component"]["stds"], [0.02, 0.05], atol=0.01)
    assert result["delta_bic"] > 10 and result["ashman_d"] > 2
    assert result["sarle_bc"] > 5 / 9
    assert "Ashman" in result["rule"]


@pytest.mark.parametrize(
    "draw",
    [lambda rng: rng.normal(0.4, 0.05, 4000), lambda rng: rng.lognormal(-1.0, 0.5, 4000),
     lambda rng: rng.lognormal(-1.0, 1.0, 4000)],
    ids=["normal", "lognormal-0.5", "lognormal-1.0"],
)
def test_one_population_is_not_bimodal(draw):
    result = bimodality(draw(np.random.default_rng(RNG_SEED)))
    assert not result["bimodal"]


def test_sarle_coefficient_matches_formula():
    x = np.random.default_rng(RNG_SEED).gamma(2.0, size=500)
    n = len(x)
    g, k = stats.skew(x, bias=False), stats.kurtosis(x, bias=False)
    assert bimodality(x)["sarle_bc"] == pytest.approx((g**2 + 1) / (k + 3 * (n - 1) ** 2 / ((n - 2) * (n - 3))))


def test_describe_mode_lands_in_the_fullest_bin():
    x = np.concatenate([np.linspace(0.0, 10.0, 101), np.full(50, 7.3)])
    result = describe(x, bins=10)  # bins of width 1 over [0, 10]: the extra 50 values fill [7, 8)
    assert result["mode"] == pytest.approx(7.5)
    assert result["mode_bins"] == 10
    assert result["count"] == 151
    assert result["median"] == pytest.approx(np.median(x))
    assert result["std"] == pytest.approx(np.std(x, ddof=1))
    assert (result["min"], result["max"]) == (0.0, 10.0)


def test_describe_empty_sample():
    result = describe(np.array([]))
    assert result["count"] == 0 and result["mean"] is None and result["mode"] is None


def test_paired_and_independent_match_scipy_and_differ():
    rng = np.random.default_rng(RNG_SEED)
    per_position = rng.normal(0.0, 10.0, 300)  # large between-position variance, shared by both conditions
    a = per_position + 1.0 + rng.normal(0.0, 0.5, 300)
    b = per_position + rng.normal(0.0, 0.5, 300)
    result = paired_and_independent_tests(a, b)
    paired, independent = stats.ttest_rel(a, b), stats.ttest_ind(a, b)
    assert result["paired"] == {"t": pytest.approx(paired.statistic), "p": pytest.approx(paired.pvalue)}
    assert result["independent"] == {"t": pytest.approx(independent.statistic), "p": pytest.approx(independent.pvalue)}
    assert result["paired"]["p"] < 1e-10 < 0.05 < result["independent"]["p"]
    assert result["mean_diff"] == pytest.approx(np.mean(a - b))


def test_student_and_welch_match_scipy():
    rng = np.random.default_rng(RNG_SEED)
    low, high = rng.normal(0.8, 0.05, 40), rng.normal(0.7, 0.3, 400)
    result = two_sample_tests(low, high)
    student, welch = stats.ttest_ind(low, high), stats.ttest_ind(low, high, equal_var=False)
    assert result["student"]["t"] == pytest.approx(student.statistic)
    assert result["student"]["p"] == pytest.approx(student.pvalue)
    assert result["welch"]["t"] == pytest.approx(welch.statistic)
    assert result["welch"]["p"] == pytest.approx(welch.pvalue)
    assert result["student"]["t"] != pytest.approx(result["welch"]["t"], rel=0.05)
    assert (result["n_low"], result["n_high"]) == (40, 400)


def test_spearman_matches_scipy():
    rng = np.random.default_rng(RNG_SEED)
    x = rng.normal(size=200)
    y = -np.exp(x) + rng.normal(0, 0.5, 200)
    expected = stats.spearmanr(x, y)
    result = spearman(x, y)
    assert result["r"] == pytest.approx(expected.statistic) and result["p"] == pytest.approx(expected.pvalue)
    assert result["r"] < -0.5 and result["n"] == 200


def test_pathway_shares_sum_to_one():
    rng = np.random.default_rng(RNG_SEED)
    decoder, linear, nonlinear = rng.uniform(0.1, 2.0, (3, 100))
    shares = pathway_shares(decoder, linear, nonlinear)
    np.testing.assert_allclose(shares["residual"] + shares["linear"] + shares["nonlinear"], 1.0)
    np.testing.assert_allclose(shares["interaction"], 1.0 - shares["residual"])
    one = pathway_shares(np.array([1.0]), np.array([1.0]), np.array([2.0]))
    assert (one["residual"][0], one["linear"][0], one["nonlinear"][0]) == (0.25, 0.25, 0.5)


def test_ratio_and_reduction():
    assert ratio(np.array([2.0, 4.0]), np.array([1.0, 1.0])) == pytest.approx(3.0)
    assert reduction(np.array([2.1]), np.array([2.99])) == pytest.approx(1 - 2.1 / 2.99)


def _assert_png(path):
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_plot_writes_a_png(tmp_path):
    rng = np.random.default_rng(RNG_SEED)
    history = {
        "train": [{"step": s, "loss": 1.0 / (s + 1), "lr": 1e-3} for s in range(0, 100, 10)],
        "val": [{"step": s, "mse": 0.5 / (s + 1), "variance_explained": 0.9, "loss": 1.2 / (s + 1)}
                for s in (0, 50, 99)],
    }
    norms = {"stage-1": rng.normal(0.4, 0.05, 500), "joint": rng.normal(0.2, 0.1, 500)}
    counts, edges = np.histogram(rng.normal(0, 0.02, 1000), bins=np.linspace(-1, 1, 2001))
    x = rng.uniform(0, 0.6, 300)
    written = [
        plots.plot_training_history(history, tmp_path / "nested" / "history.png", "history"),
        plots.plot_histograms(norms, tmp_path / "hist.png", "norms", "squared norm", log_y=True,
                              vlines={"mode 1": 0.05, "mode 2": 0.37}),
        plots.plot_binned_histograms({"stage-1": (edges, counts)}, tmp_path / "cos.png", "cosines", "cosine"),
        plots.plot_cumulative_variance({"exact": np.linspace(0.1, 1, 50),
                                        "original": np.sqrt(np.linspace(0.01, 1, 50))},
                                       tmp_path / "pca.png", "pca"),
        plots.plot_scatter(x, {"residual": x, "linear": 1 - x}, tmp_path / "scatter.png", "shares", "squared norm",
                           "share", vline=0.2),
        plots.plot_box_by_group({"low": {"residual": x[:100], "linear": x[100:]},
                                 "high": {"residual": x[50:], "linear": x}},
                                tmp_path / "box.png", "box"),
        plots.plot_distributions_log({"SAE": rng.lognormal(size=300),
                                      "ε-random": np.append(rng.lognormal(size=300), 0.0)},
                                     tmp_path / "kl.png", "KL", "KL"),
        plots.plot_by_position({"SAE": rng.uniform(size=127), "SAE+NFM": rng.uniform(size=127)}, tmp_path / "pos.png",
                               "KL by position", "KL"),
    ]
    for path in written:
        _assert_png(path)


def test_window_bootstrap_matches_every_resample_of_three_windows():
    """3 windows: each of the 27 equally likely resamples enumerated by hand; the bootstrap's percentile CI must sit
    at the quantiles of that exact distribution, and the estimate is the ratio of the sums."""
    import itertools

    from common.stats import ratio_of_sums, reduction_of_sums, window_bootstrap

    kl = np.array([2.0, 5.0, 11.0])
    eps = np.array([1.0, 4.0, 2.0])
    picks = [list(pick) for pick in itertools.product(range(3), repeat=3)]
    exact = np.array([kl[pick].sum() / eps[pick].sum() for pick in picks])
    result = window_bootstrap((kl, eps), ratio_of_sums, level=0.90, draws=60_000, seed=1)
    assert result["estimate"] == pytest.approx(18.0 / 7.0)
    assert result["windows"] == 3 and result["level"] == 0.90
    # the exact 5% and 95% quantiles of the 27-point distribution (ties make the empirical ones land on it)
    low, high = np.quantile(exact, [0.05, 0.95], method="inverted_cdf")
    assert result["low"] == pytest.approx(low, rel=1e-9)
    assert result["high"] == pytest.approx(high, rel=1e-9)
    reduction = window_bootstrap((kl, eps), reduction_of_sums, level=0.90, draws=60_000, seed=1)
    assert reduction["estimate"] == pytest.approx(1 - 18.0 / 7.0)
    assert reduction["low"] == pytest.approx(1 - high, rel=1e-9)
    assert reduction["high"] == pytest.approx(1 - low, rel=1e-9)
