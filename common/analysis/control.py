"""Stage 7's untrained control (METHOD §7, §13.4): the pathway shares of the trained joint model's moved, active
features beside those of the same model at its initialization (what the starting scales alone give), both split by
one written rule, and the trained low-minus-high difference held against the untrained one with a bootstrap CI
over features."""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

from common.analysis.decoders import NEAR_INIT_TOLERANCE
from common.stats import pathway_shares, spearman

SHARES = ("interaction", "linear", "nonlinear", "residual")
LEVEL = 0.99  # the shares rule was "p < 0.01": its interval is 99%
DRAWS = 2_000
BATCH = 100  # resamples at a time: bounds the memory of the vectorized statistics
SPLIT_RULE = ("low: squared decoder norm below the median of the features analysed; high: at or above it (one rule "
              "for the trained model and its untrained control, the split held at that median when resampling)")
TRAINED_FEATURES = (f"moved and active: squared norm more than {NEAR_INIT_TOLERANCE:.0%} from its own initial one and "
                    "at least one firing on the held-out rows")
UNTRAINED_FEATURES = "every feature of the joint model as initialized from the run's seed (none moved)"
METHOD = "percentile bootstrap over features, the two models resampled independently"


def moved_and_active(squared: np.ndarray, initial: np.ndarray, firing: np.ndarray | None) -> np.ndarray:
    """The trained features analysed: moved from their initial squared norm and (where counts exist) fired."""
    moved = np.abs(squared - initial) > NEAR_INIT_TOLERANCE * initial
    return moved if firing is None else moved & (np.asarray(firing) > 0)


def _mean_gap(low: np.ndarray, high: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(low, axis=axis) - np.mean(high, axis=axis)


def _rank_r(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman's r along ``axis``: Pearson's r of the ranks (scipy's spearmanr takes no batch axis)."""
    return stats.pearsonr(stats.rankdata(x, axis=axis), stats.rankdata(y, axis=axis), axis=axis).statistic


def _distribution(samples: tuple[np.ndarray, ...], statistic: Any, paired: bool, seed: int) -> np.ndarray:
    result = stats.bootstrap(samples, statistic, paired=paired, vectorized=True, n_resamples=DRAWS, batch=BATCH,
                             confidence_level=LEVEL, method="percentile", rng=np.random.default_rng(seed))
    return result.bootstrap_distribution


def _interval(estimate: float, draws: np.ndarray, n_trained: int, n_untrained: int) -> dict[str, Any]:
    low, high = np.percentile(draws, [50 * (1 - LEVEL), 100 - 50 * (1 - LEVEL)])
    return {"estimate": estimate, "low": float(low), "high": float(high), "level": LEVEL, "draws": DRAWS,
            "method": METHOD, "n_trained": n_trained, "n_untrained": n_untrained}


def describe_model(squared: np.ndarray, shares: dict[str, np.ndarray]) -> dict[str, Any]:
    """One model's split (the median), group sizes, each share's group means and gap, and Spearman's r."""
    split = float(np.median(squared))
    low = squared < split
    groups = {name: (shares[name][low], shares[name][~low]) for name in SHARES}
    return {"n": int(len(squared)), "split": split, "n_low": int(low.sum()), "n_high": int((~low).sum()),
            "shares": {name: {"mean_low": float(below.mean()), "mean_high": float(above.mean()),
                              "difference": float(_mean_gap(below, above))} for name, (below, above) in groups.items()},
            "spearman": {name: spearman(squared, shares[name]) for name in SHARES}}


def controlled_shares(trained: dict[str, np.ndarray], untrained: dict[str, np.ndarray], seed: int = 0) -> dict:
    """``trained`` / ``untrained``: per-feature norms (``decoder``, ``linear``, ``nonlinear``) of the features
    analysed. Each model split at its median squared norm; for each share the difference of differences
    (trained low − high) − (untrained low − high) and the difference of Spearman r (trained − untrained), each with
    its 99% CI, and each r's own 99% CI."""
    models, draws = {}, {}
    for offset, (name, norms) in enumerate((("trained", trained), ("untrained", untrained))):
        model_seed = seed + offset  # the two models' resamples are independent
        squared = norms["decoder"] ** 2
        shares = pathway_shares(norms["decoder"], norms["linear"], norms["nonlinear"])
        models[name] = describe_model(squared, shares)
        low = squared < models[name]["split"]
        draws[name] = {share: (_distribution((shares[share][low], shares[share][~low]), _mean_gap, False, model_seed),
                               _distribution((squared, shares[share]), _rank_r, True, model_seed))
                       for share in SHARES}
    sizes = (models["trained"]["n"], models["untrained"]["n"])
    out: dict[str, Any] = {"split_rule": SPLIT_RULE, "trained_features": TRAINED_FEATURES,
                           "untrained_features": UNTRAINED_FEATURES, **models,
                           "difference_of_differences": {}, "spearman_difference": {}}
    for share in SHARES:
        (gap_t, r_t), (gap_u, r_u) = draws["trained"][share], draws["untrained"][share]
        estimate = models["trained"]["shares"][share]["difference"] - models["untrained"]["shares"][share]["difference"]
        out["difference_of_differences"][share] = _interval(estimate, gap_t - gap_u, *sizes)
        r_trained, r_untrained = (models[m]["spearman"][share]["r"] for m in ("trained", "untrained"))
        out["spearman_difference"][share] = _interval(r_trained - r_untrained, r_t - r_u, *sizes)
        models["trained"]["spearman"][share]["ci"] = _interval(r_trained, r_t, *sizes)
        models["untrained"]["spearman"][share]["ci"] = _interval(r_untrained, r_u, *sizes)
    return out


def control_lines(controlled: dict[str, Any]) -> list[str]:
    """The control's table: each share's groups in both models and the difference of differences with its CI."""
    if "trained" not in controlled:
        return [f"untrained control: not available ({controlled['reason']})"]
    trained, untrained = controlled["trained"], controlled["untrained"]
    pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
    lines = [f"Untrained control: trained {trained['n']:,} moved, active features split at {trained['split']:.4f}; "
             f"untrained {untrained['n']:,} features split at {untrained['split']:.4f} (the median of each)",
             f"{'share (%)':14}{'trained low / high':>20}{'untrained low / high':>22}"
             f"{'diff of diffs [99% CI]':>30}{'r trained / untrained':>24}"]
    for share in SHARES:
        t, u = trained["shares"][share], untrained["shares"][share]
        did = controlled["difference_of_differences"][share]
        r_t, r_u = trained["spearman"][share]["r"], untrained["spearman"][share]["r"]
        cells = (f"{pct(t['mean_low'])} / {pct(t['mean_high'])}", f"{pct(u['mean_low'])} / {pct(u['mean_high'])}",
                 f"{pct(did['estimate'])} [{pct(did['low'])}, {pct(did['high'])}]", f"{r_t:+.3f} / {r_u:+.3f}")
        lines.append(f"{share:14}{cells[0]:>20}{cells[1]:>22}{cells[2]:>30}{cells[3]:>24}")
    lines.append(f"({controlled['split_rule']}; {METHOD})")
    return lines
