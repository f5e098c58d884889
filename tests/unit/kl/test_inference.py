"""common/kl/inference.py and the counts of common/kl/summary.py: per-window sums by hand, the bootstrap intervals
against the exact distribution of every resample of three windows, the window-level test against scipy on
per-window means, and the rules' fallback on a directory written before intervals existed."""
from __future__ import annotations

import functools
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from common.kl.inference import add_window_inference, per_window_sums
from common.kl.summary import summarize
from common.reporting.report import lookup, lookup_optional
from common.reporting.rows import ROWS
from common.store.savers import atomic_save_npz

# Three windows of two measured positions; two conditions ("sae" the reference) and two ε draws.
SAE = np.array([1.0, 3.0, 2.0, 2.0, 8.0, 4.0])
NFM = np.array([0.5, 1.5, 2.0, 1.0, 3.0, 3.0])
EPS = np.array([[1.0, 0.0], [1.0, 1.0], [2.0, 2.0], [0.5, 1.5], [1.0, 3.0], [0.0, 2.0]])
OWN = EPS / 2
ZERO = np.array([9.0, 9.0, 8.0, 8.0, 7.0, 1.0])
LABELS = {"sae": "SAE", "sae_nfm": "SAE + NFM"}


@pytest.fixture
def store(tmp_path: Path) -> Path:
    columns = {"window": np.array([10, 10, 11, 11, 12, 12], dtype=np.int32),
               "position": np.array([3, 40, 7, 9, 0, 126], dtype=np.int16)}
    for metric, shift in (("kl", 0.0), ("ce_next", 2.0), ("ce_argmax", 1.0)):
        columns.update({f"sae.{metric}": SAE + shift, f"sae_nfm.{metric}": NFM + shift,
                        f"eps_random.{metric}": EPS + shift, f"eps_own.sae_nfm.{metric}": OWN + shift,
                        f"zero_ablation.{metric}": ZERO + shift})
        if metric != "kl":
            columns[f"clean.{metric}"] = np.full(6, shift)
    for name in LABELS:
        columns[f"{name}.error_norm"] = np.ones(6)
    atomic_save_npz(columns.items(), tmp_path / "per_position.npz")
    return tmp_path / "per_position.npz"


def test_per_window_sums_by_hand(store: Path) -> None:
    sums = per_window_sums(store)
    assert sums["window"].tolist() == [10, 11, 12] and sums["positions"].tolist() == [2, 2, 2]
    assert sums["sae.kl"].tolist() == [4.0, 4.0, 12.0]
    assert sums["eps_random.kl"].tolist() == [1.5, 3.0, 3.0]  # each position's draws averaged first
    assert sums["zero_ablation.ce_next"].tolist() == [22.0, 20.0, 12.0]
    assert sums["clean.ce_argmax"].tolist() == [2.0, 2.0, 2.0] and "sae.error_norm" not in sums


def test_intervals_are_the_exact_bootstrap_distributions_extremes_and_tests_are_scipys(store: Path) -> None:
    results = summarize(store, LABELS, "sae", num_draws=2)
    assert (results["windows"], results["positions"], results["positions_per_window"]) == (3, 6, 2)
    assert results["zero_ablation"]["kl"] == {"mean": 7.0, "median": 8.0, "std": pytest.approx(np.std(ZERO, ddof=1))}
    assert results["zero_ablation"]["ce_next"]["mean"] == 9.0
    sums = per_window_sums(store)
    add_window_inference(results, sums, "sae", seed=0)
    sae_w, nfm_w, eps_w = np.array([4.0, 4.0, 12.0]), np.array([2.0, 3.0, 6.0]), np.array([1.5, 3.0, 3.0])
    picks = [list(pick) for pick in itertools.product(range(3), repeat=3)]
    exact = {"kl_ratio_eps_random": [sae_w[p].sum() / eps_w[p].sum() for p in picks],
             "kl_reduction": [1 - nfm_w[p].sum() / sae_w[p].sum() for p in picks]}
    sae, nfm = results["conditions"]["sae"], results["conditions"]["sae_nfm"]
    # 2,000 draws of 27 equally likely resamples: the 0.5%..2.5% and 97.5%..99.5% quantiles land on the extremes
    for entry, figure in ((sae, "kl_ratio_eps_random"), (nfm, "kl_reduction")):
        for key, level in (("ci95", 0.95), ("ci99", 0.99)):
            interval = entry[key][figure]
            assert interval["level"] == level and interval["windows"] == 3 and interval["draws"] == 2_000
            assert interval["low"] == pytest.approx(min(exact[figure]), rel=1e-12)
            assert interval["high"] == pytest.approx(max(exact[figure]), rel=1e-12)
            assert interval["estimate"] == pytest.approx(entry[figure], rel=1e-12)
    assert "kl_reduction" not in sae["ci95"] and set(nfm["ci95"]) == {
        f"{metric}_{figure}" for metric in ("kl", "ce_next", "ce_argmax")
        for figure in ("ratio_eps_random", "ratio_eps_own_norm", "reduction")}
    # the window-level test: scipy's paired t on per-window means; the position-level one stays beside it
    by_window = nfm["tests"]["kl_reference_minus_condition"]["by_window"]
    expected = stats.ttest_rel(sae_w / 2, nfm_w / 2)
    assert by_window == {"t": pytest.approx(expected.statistic, rel=1e-12),
                         "p": pytest.approx(expected.pvalue, rel=1e-12), "windows": 3}
    versus_eps = sae["tests"]["kl_vs_eps_random"]["by_window"]
    assert versus_eps["t"] == pytest.approx(stats.ttest_rel(sae_w / 2, eps_w / 2).statistic, rel=1e-12)
    own = nfm["tests"]["kl_vs_eps_own_norm"]["by_window"]
    assert own["t"] == pytest.approx(stats.ttest_rel(nfm_w / 2, eps_w / 4).statistic, rel=1e-12)
    assert nfm["tests"]["kl_reference_minus_condition"]["paired"]["t"] == pytest.approx(
        stats.ttest_rel(SAE, NFM).statistic, rel=1e-12)


def test_a_directory_without_intervals_still_gets_a_verdict_from_its_paired_tests(store: Path) -> None:
    """Written before intervals existed: the CI cells read nothing, and each rule falls back to the position-level
    paired test its file holds; with intervals the same rows read them."""
    old = summarize(store, {"sae": "SAE", "sae_nfm": "SAE + NFM"}, "sae", num_draws=2)
    new = json.loads(json.dumps(old))
    add_window_inference(new, per_window_sums(store), "sae", seed=0)
    rows = [row for row in ROWS if row.stage == "kl14" and row.rule is not None
            and row.source.split(".")[1] in ("sae", "sae_nfm") and "ci99" in (row.ci or "")]
    assert len(rows) == 2  # the SAE's ratio to ε-random and the SAE + NFM reduction
    for row in rows:
        condition = row.source.split(".")[1]
        test = "kl_vs_eps_random" if "ratio" in row.source else "kl_reference_minus_condition"
        null = 1.0 if "ratio" in row.source else 0.0
        for results, has_interval in ((old, False), (new, True)):
            outputs = {"kl14": results}
            read = functools.partial(lookup, outputs)
            assert (lookup_optional(outputs, row.ci) is not None) == has_interval
            if has_interval:
                expected = lookup(outputs, row.ci)["low"] > null
            else:
                paired = results["conditions"][condition]["tests"][test]["paired"]
                expected = paired["t"] > 0 and paired["p"] < 0.01
            assert row.rule.check(lookup(outputs, row.source), read) == expected
            # here the six positions are too few for p < 0.01, while every resample of windows clears the null
            assert expected == has_interval
