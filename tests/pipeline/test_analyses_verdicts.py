"""part16's bimodality verdict and part17's untrained control (METHOD §13.3, §13.4) on the constructed checkpoints
(``tests/pipeline/conftest.py``): the untouched rows set apart, the difference of differences by hand."""
import numpy as np
import pytest
from scipy import stats

from tests.pipeline.analysis_checkpoints import N_HIGH, N_INIT, N_LOW_MOVED, N_SILENT, F, initial_joint


def test_part16_verdict_sets_the_untouched_features_apart(ortho_run, joint_weights):
    """The joint directory records seed 0 and its firing counts: its 100 untouched rows are exactly its initial ones
    and never fired, so they are set apart; the 900 moved ones hold the two populations. The other decoder has no
    seed or counts: nothing can be set apart."""
    verdict = ortho_run["saes"]["joint"]["verdict"]
    assert verdict["never_moved"] == {**verdict["never_moved"], "known": True, "count": N_INIT,
                                      "fraction": N_INIT / F}
    moved = verdict["moved"]
    assert moved["n"] == N_LOW_MOVED + N_HIGH and verdict["bimodal"]
    assert moved["dip"]["p"] < 0.05 and moved["kde"]["ratio"] < 0.9 and 0.08 < moved["low_mode_below"] < 0.25
    # the low mode is the 200 moved low rows, all firing on 5 of 1,000 rows; the 10 silent high rows are the rare ones
    assert moved["by_firing"]["rare"] == N_SILENT and moved["by_firing"]["low_share_rare"] == 0
    assert moved["by_firing"]["low_share_rest"] == pytest.approx(N_LOW_MOVED / (N_LOW_MOVED + N_HIGH - N_SILENT))
    stage1 = ortho_run["saes"]["stage1"]["verdict"]
    assert not stage1["never_moved"]["known"] and stage1["moved"]["n"] == F and not stage1["bimodal"]


def test_part17_untrained_control_by_hand(bimodal_run, joint_weights):
    """The moved, active features against the seed-0 initial model, each split at its own median; the difference of
    differences and the Spearman r recomputed here from the weights."""
    control = bimodal_run["controlled"]
    W = {name: t.double() for name, t in joint_weights.items() if name != "firing"}
    initial = initial_joint()
    untrained = {"W_dec": initial.sae.W_dec, "linear": initial.nfm.linear_weight, "embeddings": initial.nfm.embeddings}

    def shares_of(weights: dict) -> tuple[np.ndarray, dict]:
        decoder, linear, nonlinear = (weights[n].detach().double().norm(dim=1).numpy()
                                      for n in ("W_dec", "linear", "embeddings"))
        total = decoder + linear + nonlinear
        return decoder**2, {"interaction": (linear + nonlinear) / total, "residual": decoder / total}

    analysed = slice(N_INIT, F - N_SILENT)  # the untouched rows neither moved nor fired; the silent ones moved only
    sq_t, shares_t = shares_of({name: w[analysed] for name, w in W.items()})
    sq_u, shares_u = shares_of(untrained)
    assert (control["trained"]["n"], control["untrained"]["n"]) == (F - N_INIT - N_SILENT, F)  # the control has all F
    for share in ("interaction", "residual"):
        gaps = [values[sq < np.median(sq)].mean() - values[sq >= np.median(sq)].mean()
                for sq, values in ((sq_t, shares_t[share]), (sq_u, shares_u[share]))]
        did = control["difference_of_differences"][share]
        assert did["estimate"] == pytest.approx(gaps[0] - gaps[1], rel=1e-9)
        assert did["low"] < did["estimate"] < did["high"] and did["level"] == 0.99
        r = [stats.spearmanr(sq, values[share]).statistic for sq, values in ((sq_t, shares_t), (sq_u, shares_u))]
        assert control["spearman_difference"][share]["estimate"] == pytest.approx(r[0] - r[1], rel=1e-9)
    # the residual share is 1 - the interaction share: its gaps and r are the interaction's, negated
    assert control["difference_of_differences"]["residual"]["estimate"] == pytest.approx(
        -control["difference_of_differences"]["interaction"]["estimate"])
