"""common/behavior/power.py: the simulated power of the by-word test recovers the analytic power of a balanced two-way
ANOVA, itself held to a noncentral t (METHOD §10 decision 8)."""
import numpy as np
import pytest
from scipy import stats

from common.behavior.power import analytic_power, detectable_effect, null_draws, simulated_power

COMPONENTS = {"word": 1.0, "prompt": 0.25, "residual": 0.5}


def _noncentral_t_power(dod: float, prompts: int, words: int, alpha: float = 0.05) -> float:
    """F(1, df) = t²: the two-sided t test of the interaction contrast, whose SE is √(4σ²/W)."""
    df = 4 * words - 4
    se = np.sqrt(4 * (COMPONENTS["word"] + COMPONENTS["residual"] / prompts) / words)
    critical = stats.t.isf(alpha / 2, df)
    return stats.nct.sf(critical, df, dod / se) + stats.nct.cdf(-critical, df, dod / se)


@pytest.mark.parametrize("prompts, words", [(5, 8), (26, 40)])
def test_simulated_power_recovers_the_analytic_power(prompts: int, words: int):
    contrasts, errors = null_draws(COMPONENTS, prompts, words, simulations=4_000, seed=0)
    for dod in (0.0, 0.6, 1.2, 2.0):
        analytic = analytic_power(dod, COMPONENTS, prompts, words)
        assert analytic == pytest.approx(_noncentral_t_power(dod, prompts, words), abs=1e-6)
        assert simulated_power(dod, contrasts, errors, words) == pytest.approx(analytic, abs=0.03), dod


def test_the_detectable_effect_has_the_asked_power():
    result = detectable_effect(COMPONENTS, prompts=5, words=8, simulations=4_000, seed=1)
    assert analytic_power(result["logits"], COMPONENTS, 5, 8) == pytest.approx(0.8, abs=0.03)
    assert result["logits"] == pytest.approx(result["analytic_logits"], rel=0.05)
    assert result["in_word_sds"] == pytest.approx(result["logits"] / np.sqrt(1.0 + 0.5 / 5))
    more = detectable_effect(COMPONENTS, prompts=26, words=40, simulations=4_000, seed=1)
    assert more["logits"] < result["logits"] / 2  # five times the words: about √5 smaller


def test_no_variance_has_no_detectable_effect():
    assert np.isnan(detectable_effect({"word": 0.0, "prompt": 0.0, "residual": 0.0}, 5, 8)["logits"])
