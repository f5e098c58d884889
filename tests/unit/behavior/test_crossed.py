"""common/behavior/crossed.py: the crossed mixed model against statsmodels' own fit and a planted interaction, the
variance components and min F′ by hand (METHOD §10 decision 8)."""
import warnings

import numpy as np
import pytest
from scipy import stats
from statsmodels.regression.mixed_linear_model import MixedLM

from common.behavior.crossed import anova_components, crossed_frame, min_f_prime, mixed_model, noise_floor
from common.behavior.statistics import by_prompt, by_word


def _crossed(seed: int, prompts: int, words: int, sd: tuple[float, float, float], planted: float) -> np.ndarray:
    """Δ (P, 2, 2, W) = prompt + word + residual, with ``planted`` added to formal_high: a DoD of ``planted``."""
    rng = np.random.default_rng(seed)
    delta = (rng.normal(0, sd[0], (prompts, 1, 1, 1)) + rng.normal(0, sd[1], (1, 2, 2, words))
             + rng.normal(0, sd[2], (prompts, 2, 2, words)))
    delta[:, 0, 0] += planted
    return delta


def _statsmodels_fit(delta: np.ndarray, components: tuple[str, ...] = ("prompt", "word")):
    """statsmodels' own fit from its own start, by Powell's method (its gradient methods stop short of the optimum from
    that start on some of these crossed designs, at a lower REML likelihood)."""
    formulas = {"prompt": "0 + C(prompt)", "word": "0 + C(word)"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = MixedLM.from_formula("y ~ f * e", groups="group", re_formula="0", data=crossed_frame(delta),
                                   vc_formula={c: formulas[c] for c in components}).fit(reml=True, method=["powell"])
    assert fit.converged
    return fit


def test_the_planted_interaction_is_recovered_and_statsmodels_own_fit_agrees():
    delta = _crossed(0, prompts=10, words=8, sd=(0.7, 0.3, 0.5), planted=1.5)
    ours = mixed_model(delta)
    means = delta.mean(axis=(0, 3))
    # Balanced: the GLS estimate of the ±½-coded interaction is the DoD of the cell means, exactly.
    assert ours["coefficient"] == pytest.approx((means[0, 0] - means[0, 1]) - (means[1, 0] - means[1, 1]), rel=1e-8)
    assert abs(ours["coefficient"] - 1.5) < 3 * ours["se"] and ours["p"] < 1e-4 and ours["converged"]
    reference = _statsmodels_fit(delta)
    assert ours["coefficient"] == pytest.approx(reference.params["f:e"], rel=1e-8)
    assert ours["se"] == pytest.approx(reference.bse["f:e"], rel=1e-3)
    assert ours["p"] == pytest.approx(reference.pvalues["f:e"], rel=1e-3)
    assert [ours["ci"]["low"], ours["ci"]["high"]] == pytest.approx(list(reference.conf_int().loc["f:e"]), rel=1e-3)
    vcomp = dict(zip(reference.model.exog_vc.names, reference.vcomp))
    assert ours["variance_components"]["word"] == pytest.approx(vcomp["word"], rel=1e-3)
    assert ours["variance_components"]["prompt"] == pytest.approx(vcomp["prompt"], rel=1e-3)
    assert ours["variance_components"]["residual"] == pytest.approx(reference.scale, rel=1e-3)


def test_the_fit_does_not_depend_on_the_unit_of_delta():
    delta = _crossed(1, prompts=6, words=5, sd=(0.5, 1.0, 0.8), planted=0.4)
    plain, tiny = mixed_model(delta), mixed_model(delta * 1e-8)
    assert tiny["z"] == pytest.approx(plain["z"], rel=1e-6) and tiny["p"] == pytest.approx(plain["p"], rel=1e-6)
    assert tiny["coefficient"] == pytest.approx(plain["coefficient"] * 1e-8, rel=1e-6)
    assert tiny["variance_components"]["word"] == pytest.approx(plain["variance_components"]["word"] * 1e-16,
                                                                rel=1e-5)


def test_a_component_on_the_boundary_is_fitted_as_absent():
    delta = next(d for d in (_crossed(seed, 8, 5, (0.0, 1.0, 1.0), 0.0) for seed in range(50))
                 if anova_components(d)["prompt"] == 0)
    ours = mixed_model(delta)
    reference = _statsmodels_fit(delta, ("word",))
    assert ours["at_zero"] == ["prompt"] and ours["variance_components"]["prompt"] == 0
    assert ours["p"] == pytest.approx(reference.pvalues["f:e"], rel=1e-3)
    assert ours["variance_components"]["word"] == pytest.approx(reference.vcomp[0], rel=1e-3)


def test_variance_components_by_expected_mean_squares_by_hand():
    delta = _crossed(2, prompts=4, words=3, sd=(1.0, 1.0, 0.5), planted=0.0)
    y = delta.reshape(4, 12)  # (prompt, word), words in cell order
    grand = y.mean()
    ss_e = sum((y[p, w] - y[:, w].mean() - y[p].mean() + grand) ** 2 for p in range(4) for w in range(12))
    ms_e = ss_e / (3 * 11)
    ss_w = sum(4 * (y[:, w].mean() - y[:, 3 * (w // 3): 3 * (w // 3) + 3].mean()) ** 2 for w in range(12))
    ms_w = ss_w / (12 - 4)
    ms_p = 12 * sum((y[p].mean() - grand) ** 2 for p in range(4)) / 3
    expected = {"word": max((ms_w - ms_e) / 4, 0), "prompt": max((ms_p - ms_e) / 12, 0), "residual": ms_e}
    assert anova_components(delta) == pytest.approx(expected, rel=1e-10)


def test_min_f_prime_by_hand_on_a_small_table():
    hand = min_f_prime({"F": 4.0, "df": [1, 4]}, {"F": 6.0, "df": [1, 28]})
    df = 100 / (16 / 28 + 36 / 4)  # (F1 + F2)² / (F1²/n2 + F2²/n1)
    assert (hand["F"], hand["df"][1], hand["p"]) == pytest.approx((2.4, df, stats.f.sf(2.4, 1, df)), rel=1e-12)
    delta = _crossed(3, prompts=3, words=3, sd=(0.5, 0.4, 0.3), planted=0.6)
    contrast = lambda x: (x[..., 0, 0] - x[..., 0, 1]) - (x[..., 1, 0] - x[..., 1, 1])  # noqa: E731
    per_prompt = contrast(delta.mean(axis=3))  # F1: a paired t² of the per-prompt interaction contrasts
    f1 = per_prompt.mean() ** 2 / (per_prompt.var(ddof=1) / 3)
    words = delta.mean(axis=0)  # F2: the by-word two-way ANOVA's interaction F
    f2 = 3 * contrast(words.mean(-1)) ** 2 / 4 / (((words - words.mean(-1, keepdims=True)) ** 2).sum() / 8)
    ours = min_f_prime(by_prompt(delta), by_word(delta))
    assert ours["F"] == pytest.approx(f1 * f2 / (f1 + f2), rel=1e-9)
    assert ours["df"][1] == pytest.approx((f1 + f2) ** 2 / (f1**2 / 8 + f2**2 / 2), rel=1e-9)


def test_no_variance_is_nan_not_an_error_and_the_noise_floor_is_the_spread():
    assert np.isnan(mixed_model(np.zeros((3, 2, 2, 4)))["p"])
    noise = np.zeros((2, 2, 2, 2))
    noise[0, 0, 0, 0] = 4e-6
    floor = noise_floor(noise)
    assert floor["max_abs_dlogit"] == 4e-6 and floor["sd_dlogit"] == pytest.approx(noise.std())
    assert floor["difference_of_differences"] == pytest.approx(4e-6 / 4)  # one of 2 prompts × 2 words
