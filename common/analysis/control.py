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


def resample_ranks(dense: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``scipy.stats.rankdata(values[..., idx], axis=-1)`` (average ranks, 1-based) for each row of values, from
    ``dense`` (arrays, n): their dense ranks (0-based, ties sharing one), without sorting each resample: an entry's
    rank is the count of entries below it plus half its own count, + 1/2. ``idx`` (resamples, n) indexes the values;
    the result is (arrays, resamples, n)."""
    arrays, n = dense.shape
    codes = dense[:, idx].reshape(-1, idx.shape[-1])  # one row per (array, resample)
    offsets = (np.arange(codes.shape[0]) * n)[:, None]
    counts = np.bincount((codes + offsets).ravel(), minlength=codes.shape[0] * n).reshape(codes.shape[0], n)
    table = np.cumsum(counts, axis=1) - counts + (counts + 1) / 2.0
    return np.take_along_axis(table, codes, axis=1).reshape(arrays, *idx.shape)


def _dense(values: np.ndarray) -> np.ndarray:
    return stats.rankdata(values, method="dense").astype(np.int64) - 1


def _draws(squared: np.ndarray, shares: dict[str, np.ndarray], low: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Bootstrap draws (shares × DRAWS) of each share's low − high gap (the groups resampled apart, the split held)
    and of its Spearman r with the squared norm (features resampled in pairs)."""
    values = np.stack([shares[name] for name in SHARES])
    below, above = np.flatnonzero(low), np.flatnonzero(~low)
    dense = np.stack([_dense(squared), *(_dense(shares[name]) for name in SHARES)])

    def gaps(low_idx: np.ndarray, high_idx: np.ndarray, axis: int = -1) -> np.ndarray:
        return values[:, low_idx].mean(axis=-1) - values[:, high_idx].mean(axis=-1)

    def correlations(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        ranks = resample_ranks(dense, idx)  # (1 + shares, resamples, n): the squared norm's, then each share's
        return stats.pearsonr(ranks[:1], ranks[1:], axis=-1).statistic

    options = dict(vectorized=True, n_resamples=DRAWS, batch=BATCH, confidence_level=LEVEL, method="percentile")
    gap = stats.bootstrap((below, above), gaps, paired=False, rng=np.random.default_rng(seed), **options)
    r = stats.bootstrap((np.arange(len(squared)),), correlations, rng=np.random.default_rng(seed), **options)
    return {"gap": gap.bootstrap_distribution, "r": r.bootstrap_distribution}


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
        squared = norms["decoder"] ** 2
        shares = pathway_shares(norms["decoder"], norms["linear"], norms["nonlinear"])
        models[name] = describe_model(squared, shares)
        # the two models' resamples are independent
        draws[name] = _draws(squared, shares, squared < models[name]["split"], seed + offset)
    sizes = (models["trained"]["n"], models["untrained"]["n"])
    out: dict[str, Any] = {"split_rule": SPLIT_RULE, "trained_features": TRAINED_FEATURES,
                           "untrained_features": UNTRAINED_FEATURES, **models,
                           "difference_of_differences": {}, "spearman_difference": {}}
    for index, share in enumerate(SHARES):
        gap_t, gap_u = draws["trained"]["gap"][index], draws["untrained"]["gap"][index]
        r_t, r_u = draws["trained"]["r"][index], draws["untrained"]["r"][index]
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
