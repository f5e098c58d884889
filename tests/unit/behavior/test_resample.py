"""common/behavior/resample.py: the bootstrap over words and prompts, one resampled design recomputed by hand, and the
dose-response slope of a Δ exactly linear in m (METHOD §10 decision 8)."""
import numpy as np
import pytest

from common.behavior.resample import crossed_bootstrap, word_values


def _delta(seed: int, prompts: int = 4, words: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 1, (1, 2, 2, words)) + rng.normal(0, 0.5, (prompts, 2, 2, words))


def test_a_resampled_design_is_the_prompts_and_words_drawn_by_hand():
    delta = _delta(0)
    drawn = word_values(delta[None], draws=3, seed=7)
    rng = np.random.default_rng(7)  # the draws in the order word_values takes them: prompts, then words
    prompts = rng.integers(0, 4, size=(3, 4))
    words = rng.integers(0, 3, size=(3, 1, 4, 3))
    for b in range(3):
        for cell in range(4):
            for slot in range(3):
                word = words[b, 0, cell, slot]
                by_hand = np.mean([delta[p].reshape(4, 3)[cell, word] for p in prompts[b]])
                assert drawn[b, 0, cell, slot] == pytest.approx(by_hand, rel=1e-12)


def test_the_point_estimates_are_the_designs_own():
    delta = _delta(1)
    result = crossed_bootstrap(delta[None], [-4.0], 0, draws=200, seed=0)
    means = delta.mean(axis=(0, 3))
    dod = (means[0, 0] - means[0, 1]) - (means[1, 0] - means[1, 1])
    words = delta.mean(axis=0)
    sd = np.sqrt(((words - words.mean(-1, keepdims=True)) ** 2).sum() / (4 * 3 - 4))
    assert result["logits"] == pytest.approx(dod) and result["word_sd"] == pytest.approx(sd)
    assert result["in_word_sds"] == pytest.approx(dod / sd)
    assert result["ci"]["low"] < dod < result["ci"]["high"] and result["ci"]["level"] == 0.95
    assert "dose_response" not in result  # one multiplier: no slope


def test_a_constant_effect_has_a_degenerate_interval():
    delta = np.zeros((5, 2, 2, 4))
    delta[:, 0, 0] = 0.3
    result = crossed_bootstrap(delta[None], [2.0], 0, draws=100, seed=0)
    assert result["ci"]["low"] == pytest.approx(0.3) and result["ci"]["high"] == pytest.approx(0.3)


def test_the_slope_of_a_delta_linear_in_m_is_its_difference_of_differences():
    pattern = _delta(2)
    multipliers = [-4.0, -2.0, 0.0, 2.0, 4.0]
    by_value = np.stack([(m - 1) * pattern for m in multipliers])  # Δ = (m − 1) · pattern, as a linear clamp gives
    result = crossed_bootstrap(by_value, multipliers, 0, draws=300, seed=3)
    unit = crossed_bootstrap(pattern[None], [2.0], 0, draws=300, seed=3)  # the same draws, at m − 1 = 1
    assert result["dose_response"]["slope"] == pytest.approx(unit["logits"], rel=1e-9)
    assert result["dose_response"]["ci"]["low"] == pytest.approx(unit["ci"]["low"], rel=1e-9)
    assert result["dose_response"]["ci"]["high"] == pytest.approx(unit["ci"]["high"], rel=1e-9)
    assert result["by_multiplier"]["0"] == pytest.approx(-unit["logits"], rel=1e-9)
