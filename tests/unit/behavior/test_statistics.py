"""The behavioral statistics (SPEC §10) against statsmodels and scipy run here directly, and hand computations."""
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.formula.api import ols
from statsmodels.stats.anova import AnovaRM, anova_lm
from statsmodels.stats.multitest import multipletests

from common.analysis.weight_rows import gini, row_statistics, untrained_gini_reference
from common.behavior.screens import active_in, screen_interaction, screen_oneway, screen_t
from common.behavior.statistics import (
    bh_fdr,
    by_word,
    holm,
    interaction_f_balanced,
    logit_2x2,
    long_frame,
    null_percentile,
    word_permutation_p,
)

P, W = 5, 8
RTOL = 1e-9
FORMALITY, EMOTION = ("formal", "casual"), ("high", "low")


def _delta(seed: int, planted: float = 0.0, noise: float = 0.1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    delta = rng.normal(0.0, noise, (P, 2, 2, W))
    delta[:, 0, 0] += planted  # formal_high only
    return delta


def _hand_frame(delta: np.ndarray) -> pd.DataFrame:
    rows = []
    for p in range(delta.shape[0]):
        for fi, f in enumerate(FORMALITY):
            for ei, e in enumerate(EMOTION):
                for w in range(delta.shape[3]):
                    rows.append({"prompt": p, "formality": f, "emotion": e, "word": f"{f}_{e}_{w}",
                                 "y": delta[p, fi, ei, w]})
    return pd.DataFrame(rows)


def _anova(frame: pd.DataFrame, formula: str) -> pd.DataFrame:
    return anova_lm(ols(formula, data=frame).fit(), typ=2)


def _close(ours: dict, f: float, p: float, df: tuple[int, int]) -> None:
    np.testing.assert_allclose([ours["F"], ours["p"]], [f, p], rtol=RTOL)
    assert ours["df"] == list(df)


def test_planted_interaction_is_recovered():
    result = logit_2x2(_delta(0, planted=0.5), permutations=2000, seed=0)
    assert result["by_word"]["p"] < 1e-4 and result["by_word"]["df"] == [1, 4 * W - 4]
    assert result["permutation_p"] < 1e-3
    assert result["by_prompt"]["p"] < 1e-3 and result["pooled"]["p"] < 1e-4
    assert result["difference_of_differences"] == pytest.approx(0.5, abs=0.05)
    assert result["cell_means"]["formal_high"] == pytest.approx(0.5, abs=0.05)
    assert result["by_word"]["formality"]["mean_diff"] == pytest.approx(0.25, abs=0.05)
    assert result["by_word"]["emotion"]["mean_diff"] == pytest.approx(0.25, abs=0.05)
    assert (result["n_prompts"], result["n_words"]) == (P, W)


def test_no_interaction_rejects_at_the_nominal_rate():
    seeds = 200
    rejections = sum(by_word(_delta(seed))["p"] < 0.05 for seed in range(seeds))
    low, high = stats.binom.interval(0.999, seeds, 0.05)
    assert low <= rejections <= high, rejections


def test_each_test_equals_statsmodels_on_the_same_frame():
    delta = _delta(3, planted=0.05, noise=0.2)
    delta += np.random.default_rng(4).normal(0, 0.3, (P, 1, 1, 1))  # prompt offsets
    frame = _hand_frame(delta)
    pd.testing.assert_frame_equal(long_frame(delta), frame, check_dtype=False)
    result = logit_2x2(delta, permutations=200)
    term = "C(formality):C(emotion)"

    words = frame.groupby(["formality", "emotion", "word"], as_index=False)["y"].mean()
    table = _anova(words, "y ~ C(formality) * C(emotion)")
    _close(result["by_word"], table.loc[term, "F"], table.loc[term, "PR(>F)"], (1, 4 * W - 4))
    for name, key in (("formality", "C(formality)"), ("emotion", "C(emotion)")):
        _close(result["by_word"][name], table.loc[key, "F"], table.loc[key, "PR(>F)"], (1, 4 * W - 4))
    np.testing.assert_allclose(interaction_f_balanced(delta.mean(axis=0)), table.loc[term, "F"], rtol=RTOL)
    formal, casual = frame[frame.formality == "formal"].y.mean(), frame[frame.formality == "casual"].y.mean()
    assert result["by_word"]["formality"]["mean_diff"] == pytest.approx(formal - casual, rel=RTOL)

    cells = frame.groupby(["prompt", "formality", "emotion"], as_index=False)["y"].mean()
    rm = AnovaRM(cells, "y", "prompt", within=["formality", "emotion"]).fit().anova_table
    _close(result["by_prompt"], rm.loc["formality:emotion", "F Value"], rm.loc["formality:emotion", "Pr > F"],
           (1, P - 1))
    _close(result["by_prompt"]["emotion"], rm.loc["emotion", "F Value"], rm.loc["emotion", "Pr > F"], (1, P - 1))

    blocked = _anova(frame, "y ~ C(prompt) + C(formality) * C(emotion)")
    _close(result["pooled"], blocked.loc[term, "F"], blocked.loc[term, "PR(>F)"], (1, 4 * P * W - 4 - (P - 1)))
    plain = _anova(frame, "y ~ C(formality) * C(emotion)")
    _close(result["pooled_unblocked"], plain.loc[term, "F"], plain.loc[term, "PR(>F)"], (1, 4 * P * W - 4))


def test_permutation_p_equals_a_count_over_anova_lm_refits():
    words = _delta(5, planted=0.08).mean(axis=0)
    draws = 100
    result = word_permutation_p(words, permutations=draws, seed=7)
    flat = words.reshape(-1)
    # The same draws as the function's, each refitted by statsmodels.
    order = np.random.default_rng(7).permuted(np.broadcast_to(np.arange(flat.size), (draws, flat.size)), axis=1)
    labels = pd.DataFrame({"formality": np.repeat(FORMALITY, 2 * W), "emotion": np.tile(np.repeat(EMOTION, W), 2)})
    term = "C(formality):C(emotion)"

    def refit(y: np.ndarray) -> float:
        return float(_anova(labels.assign(y=y), "y ~ C(formality) * C(emotion)").loc[term, "F"])

    observed = refit(flat)
    refits = np.array([refit(flat[o]) for o in order])
    np.testing.assert_allclose(interaction_f_balanced(flat[order].reshape(draws, 2, 2, W)), refits, rtol=RTOL)
    assert result["F"] == pytest.approx(observed, rel=RTOL)
    assert result["p"] == (1 + np.count_nonzero(refits >= observed)) / (1 + draws)


def test_original_statistic_on_40_plus_40():
    delta = _delta(8, planted=0.02)
    formal_diffs, casual_diffs = [], []
    for p in range(P):  # list order: prompt, then word position
        for w in range(W):
            formal_diffs.append(delta[p, 0, 0, w] - delta[p, 0, 1, w])
            casual_diffs.append(delta[p, 1, 0, w] - delta[p, 1, 1, w])
    assert len(formal_diffs) == len(casual_diffs) == 40
    expected = stats.f_oneway(formal_diffs, casual_diffs)
    ours = logit_2x2(delta, permutations=10)["original_pseudo_interaction"]
    _close(ours, expected.statistic, expected.pvalue, (1, 78))
    t = stats.ttest_ind(formal_diffs, casual_diffs)
    assert ours["F"] == pytest.approx(t.statistic**2, rel=1e-9)
    assert stats.f.sf(5.06, 1, 78) == pytest.approx(0.0273, abs=5e-5)  # the paper's p from its F


def test_a_per_prompt_constant_changes_no_interaction_f():
    delta = _delta(9, planted=0.1)
    shifted = delta + np.array([3.0, -1.0, 0.5, 10.0, -7.0])[:, None, None, None]
    a, b = logit_2x2(delta, permutations=500), logit_2x2(shifted, permutations=500)
    for key in ("by_word", "by_prompt", "pooled", "original_pseudo_interaction"):
        assert b[key]["F"] == pytest.approx(a[key]["F"], rel=1e-7), key
        assert b[key]["df"] == a[key]["df"]
    assert b["permutation_p"] == a["permutation_p"]
    assert b["difference_of_differences"] == pytest.approx(a["difference_of_differences"], abs=1e-12)
    # Without the prompt block the offsets land in the residual: the reason the pooled test is blocked.
    assert b["pooled_unblocked"]["F"] < 0.5 * a["pooled_unblocked"]["F"]


def _screen_data():
    rng = np.random.default_rng(11)
    per_cell = 10
    formality = np.tile(np.repeat(["formal", "casual"], 2 * per_cell), 1)
    emotion = np.tile(np.repeat(["high", "low"], per_cell), 2)
    order = rng.permutation(formality.size)  # texts in no particular order
    formality, emotion = formality[order], emotion[order]
    values = rng.normal(size=(formality.size, 30))
    values[:, 3] += 1.5 * ((formality == "formal") & (emotion == "high"))
    values[:, 4] = np.where(rng.random(formality.size) < 0.7, 0.0, rng.exponential(size=formality.size))
    values[:, 5] = 0.0  # a dead feature
    values[:, 6] = 0.1  # constant, but not exactly representable
    return values, formality, emotion


SAMPLED = [0, 3, 4, 17, 29]


def test_screen_t_equals_ttest_ind():
    values, formality, emotion = _screen_data()
    high = emotion == "high"
    ours = screen_t(values, high)
    for j in SAMPLED:
        expected = stats.ttest_ind(values[high, j], values[~high, j], equal_var=True)
        np.testing.assert_allclose([ours["t"][j], ours["p"][j]], [expected.statistic, expected.pvalue], rtol=RTOL)
    assert np.isnan(ours["t"][[5, 6]]).all() and np.isnan(ours["p"][[5, 6]]).all()
    assert ours["df"] == values.shape[0] - 2


def test_screen_oneway_equals_f_oneway():
    values, formality, emotion = _screen_data()
    conditions = np.char.add(np.char.add(formality, "_"), emotion)
    ours = screen_oneway(values, conditions)
    for j in SAMPLED:
        expected = stats.f_oneway(*(values[conditions == c, j] for c in np.unique(conditions)))
        np.testing.assert_allclose([ours["F"][j], ours["p"][j]], [expected.statistic, expected.pvalue], rtol=RTOL)
    assert np.isnan(ours["F"][[5, 6]]).all() and np.isnan(ours["p"][[5, 6]]).all()
    assert ours["df"] == [3, values.shape[0] - 4]


def test_screen_interaction_equals_anova_lm():
    values, formality, emotion = _screen_data()
    ours = screen_interaction(values, formality, emotion)
    term = "C(formality):C(emotion)"
    for j in SAMPLED:
        frame = pd.DataFrame({"formality": formality, "emotion": emotion, "y": values[:, j]})
        table = _anova(frame, "y ~ C(formality) * C(emotion)")
        np.testing.assert_allclose([ours["F"][j], ours["p"][j]], [table.loc[term, "F"], table.loc[term, "PR(>F)"]],
                                   rtol=RTOL)
    assert np.isnan(ours["F"][[5, 6]]).all() and np.isnan(ours["p"][[5, 6]]).all()
    assert ours["df"] == [1, values.shape[0] - 4]
    assert np.nanargmax(ours["F"]) == 3  # the planted feature
    with pytest.raises(ValueError, match="balanced"):
        screen_interaction(values[1:], formality[1:], emotion[1:])


def test_active_in_counts_non_zero_texts():
    values = np.zeros((10, 3))
    values[:5, 0] = 1.0
    values[:4, 1] = -2.0
    values[:, 2] = 0.5
    assert active_in(values).tolist() == [True, False, True]
    assert active_in(values, min_texts=4).tolist() == [True, True, True]


def test_gini_and_row_statistics_by_hand():
    k = 300
    one_hot, constant, uniform = np.zeros(k), np.full(k, 0.7), np.full(k, -2.0)
    one_hot[17] = -3.0
    rng = np.random.default_rng(12)
    random_row = rng.normal(size=k) * (rng.random(k) < 0.5)
    rows = np.stack([one_hot, constant, uniform, random_row])
    result = row_statistics(rows)
    assert result["gini"][0] == pytest.approx((k - 1) / k, rel=1e-12)
    assert result["gini"][1] == pytest.approx(0.0, abs=1e-12) and result["gini"][2] == pytest.approx(0.0, abs=1e-12)
    x = np.abs(random_row)
    hand_gini = np.abs(x[:, None] - x[None, :]).sum() / (2 * k**2 * x.mean())  # mean-absolute-difference form
    assert result["gini"][3] == pytest.approx(hand_gini, rel=1e-12)
    assert result["effective_rank"][2] == pytest.approx(k, rel=1e-12)
    assert result["effective_rank"][0] == pytest.approx(1.0, rel=1e-12)
    share = x[x > 0] / x.sum()
    assert result["effective_rank"][3] == pytest.approx(np.exp(-(share * np.log(share)).sum()), rel=1e-12)
    assert result["l0"].tolist() == [1, k, k, np.count_nonzero(random_row)]
    assert result["l1"][0] == 3.0 and result["l2"][2] == pytest.approx(2.0 * np.sqrt(k))
    assert result["max_abs"][3] == x.max() and result["std"][3] == pytest.approx(np.std(random_row, ddof=1))
    assert np.isnan(gini(np.zeros((1, 5)))).all()


def test_untrained_gini_reference_is_near_sqrt2_minus_1():
    reference = untrained_gini_reference(300, n_rows=1000, seed=0)
    assert reference["mean"] == pytest.approx(np.sqrt(2) - 1, abs=0.01)
    assert 0.005 < reference["std"] < 0.05
    assert reference["asymptotic"] == pytest.approx(0.41421356, rel=1e-7)


def test_holm_and_bh_equal_multipletests_and_keep_nan():
    p = np.array([0.01, np.nan, 0.04, 0.03, 0.5, np.nan, 0.001])
    finite = np.isfinite(p)
    for ours, method in ((holm(p), "holm"), (bh_fdr(p), "fdr_bh")):
        assert np.isnan(ours[~finite]).all()
        np.testing.assert_allclose(ours[finite], multipletests(p[finite], method=method)[1], rtol=1e-12)
    assert np.isnan(holm([np.nan, np.nan])).all()
    assert holm(np.array([[0.01, 0.02]])).shape == (1, 2)


def test_null_percentile_counts_half_the_ties():
    result = null_percentile(5.0, [1.0, 2.0, 5.0, 5.0, 9.0, np.nan])
    assert result == {"percentile": pytest.approx(60.0), "n": 5}
    assert null_percentile(100.0, np.arange(200))["percentile"] == pytest.approx(50.25)
    assert np.isnan(null_percentile(1.0, [])["percentile"])


def test_bad_delta_shape_is_refused():
    with pytest.raises(ValueError, match="prompts, 2 formality"):
        logit_2x2(np.zeros((5, 4, 8)))
    with pytest.raises(ValueError, match="non-finite"):
        by_word(np.full((5, 2, 2, 8), np.nan))


def test_a_clamp_that_changes_nothing_gives_nan_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = by_word(np.zeros((3, 2, 2, 4)))
    assert np.isnan(result["F"]) and np.isnan(result["p"])
