"""The paper's numbers, once: each with its value, its unit, where the paper reports it and the text the report
shows. The report, the study, the stage tables and the KL banners all read them here (METHOD's headline numbers).

``value`` is the number a rule or a comparison may use (None where the paper states no single number); ``text`` is
the paper's figure as the tables show it. Units: "fraction" (0.864 is 86.4%), "ratio", "nats" (per token), "count",
"F" (an F statistic), "p", "logits", "r" (Spearman), "squared norm", "feature" (a feature index), "yes/no".
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperNumber:
    text: str
    value: float | None
    unit: str
    where: str


def _n(text: str, value: float | None, unit: str, where: str) -> PaperNumber:
    return PaperNumber(text, value, unit, where)


STAGE1, SEQ, JOINT = "stage 1 results (TopK SAE)", "sequential NFM results", "joint training results"
PARAMS, KL_SEQ, KL_JOINT = "parameter count", "KL pathology test, sequential", "KL test of the joint model"
ORTHO, BIMODAL = "orthogonality analysis", "bimodal squared-norm inspection"
FOUND, CLAMP = "feature discovery (2×2 stimuli)", "clamping and the 2×2 logit test"

PAPER: dict[str, PaperNumber] = {
    "sae1.variance_explained": _n("86.4%", 0.864, "fraction", STAGE1),
    "sae1.mse": _n("0.136", 0.136, "normalized MSE", STAGE1),
    "sae1.l0_fraction": _n("2.05%", 0.0205, "fraction", STAGE1),
    "sae1.dead_fraction": _n("0%", 0.0, "fraction", STAGE1),
    "nfm.error_reduction_train": _n("23.18%", 0.2318, "fraction", SEQ),
    "nfm.error_reduction_val": _n("23.43%", 0.2343, "fraction", SEQ),
    "nfm.residual_mse_before_val": _n("0.3672", 0.3672, "normalized MSE", SEQ),
    "nfm.residual_mse_after_val": _n("0.2811", 0.2811, "normalized MSE", SEQ),
    "nfm.linear_share": _n("95.5%", 0.955, "fraction", SEQ),
    "nfm.interaction_share": _n("4.5%", 0.045, "fraction", SEQ),
    "joint.joint_mse": _n("0.162", 0.162, "normalized MSE", JOINT),
    "joint.sae_part_mse": _n("0.275", 0.275, "normalized MSE", JOINT),
    "joint.improvement": _n("41.3%", 0.413, "fraction", JOINT),
    "joint.sequential_improvement": _n("23%", 0.23, "fraction", JOINT),
    "joint.linear_share": _n("94.0%", 0.940, "fraction", JOINT),
    "joint.interaction_share": _n("6.0%", 0.060, "fraction", JOINT),
    "joint.mean_abs_linear": _n("0.347", 0.347, "normalized units", JOINT),
    "joint.mean_abs_interaction": _n("0.022", 0.022, "normalized units", JOINT),
    "joint.parameters_total": _n("496,106,700", 496_106_700, "count", PARAMS),
    "joint.parameters_unique": _n("336,106,700", 336_106_700, "count", PARAMS),
    "joint.nfm_linear_share": _n("32.3%", 0.323, "fraction", PARAMS),
    "joint.nfm_embeddings_share": _n("3% (with MLP)", 0.03, "fraction", PARAMS),
    "kl14.sae_ratio": _n("2.99x", 2.99, "ratio", KL_SEQ),
    "kl14.sae_nfm_ratio": _n("2.1x", 2.1, "ratio", KL_SEQ),
    "kl14.kl_reduction": _n("29.8%", 0.298, "fraction", KL_SEQ),
    "kl14.linear_t": _n("t = 806.3", 806.3, "t", KL_SEQ),
    "kl14.interaction_reduction": _n("0.9%", 0.009, "fraction", KL_SEQ),
    "kl14.measurements": _n("17.8M", 17.8e6, "count", KL_SEQ),
    "kl18.full_reduction": _n("51.9% (headline 51.6%)", 0.519, "fraction", KL_JOINT),
    "kl18.headline_reduction": _n("51.6%", 0.516, "fraction", KL_JOINT),
    "kl18.linear_reduction": _n("50.9%", 0.509, "fraction", KL_JOINT),
    "kl18.interaction_reduction": _n("8.6%", 0.086, "fraction", KL_JOINT),
    "kl18.kl_t": _n("t > 15.8", 15.8, "t", KL_JOINT),
    "kl18.ce_full_reduction": _n("26.2%", 0.262, "fraction", KL_JOINT),
    "kl18.ce_linear_reduction": _n("25.7%", 0.257, "fraction", KL_JOINT),
    "kl18.ce_interaction_reduction": _n("4.2%", 0.042, "fraction", KL_JOINT),
    "kl18.ce_t": _n("t > 10.3", 10.3, "t", KL_JOINT),
    "kl18.measurements": _n("3.2M", 3.2e6, "count", KL_JOINT),
    "ortho.components_standalone": _n("866", 866, "count", ORTHO),
    "ortho.components_joint": _n("863", 863, "count", ORTHO),
    "ortho.cosine_standalone": _n("0.0147", 0.0147, "mean |cosine|", ORTHO),
    "ortho.cosine_joint": _n("0.0148", 0.0148, "mean |cosine|", ORTHO),
    "ortho.standalone_bimodal": _n("no (unimodal, mean ≈0.395)", 0.0, "yes/no", BIMODAL),
    "ortho.joint_bimodal": _n("yes", 1.0, "yes/no", BIMODAL),
    "ortho.joint_low_mode": _n("≈0.05", 0.05, "squared norm", BIMODAL),
    "ortho.joint_high_mode": _n("≈0.37", 0.37, "squared norm", BIMODAL),
    "bimodal.split": _n("0.2", 0.2, "squared norm", BIMODAL),
    **{f"bimodal.{share}_{side}": _n(f"{100 * value:.1f}%", value, "fraction", BIMODAL)
       for share, low, high in (("interaction", 0.828, 0.713), ("linear", 0.331, 0.290),
                                ("nonlinear", 0.497, 0.423), ("residual", 0.172, 0.287))
       for side, value in (("low", low), ("high", high))},
    **{f"bimodal.{share}_r": _n(f"{'+' if r > 0 else '−'}{abs(r):.3f}", r, "r", BIMODAL)
       for share, r in (("interaction", -0.987), ("linear", -0.866), ("nonlinear", -0.922), ("residual", 0.987))},
    "sparsity.gini": _n("0.49 (feature 17512)", 0.49, "Gini", "NFM weight-row inspection"),
    "sparsity.effective_rank": _n("133.5 of 300", 133.5, "effective rank", "NFM weight-row inspection"),
    "discovery.formality": _n("feature 21781", 21781, "feature", FOUND),
    "discovery.emotion": _n("feature 21607", 21607, "feature", FOUND),
    "selection.F": _n("26.72 (feature 4022)", 26.72, "F", FOUND),
    "selection.p": _n("2.85e-9", 2.85e-9, "p", FOUND),
    "selection.counterexample_F": _n("0.022 (feature 1113)", 0.022, "F", FOUND),
    "selection.counterexample_p": _n("0.996", 0.996, "p", FOUND),
    "clamp.F_m-4": _n("5.06", 5.06, "F", CLAMP),
    "clamp.F_m0": _n("5.17", 5.17, "F", CLAMP),
    "clamp.F_m4": _n("4.38", 4.38, "F", CLAMP),
    "clamp.dod_m-4": _n("7e-4", 7e-4, "logits", CLAMP),
    "clamp.dod_m0": _n("1e-4", 1e-4, "logits", CLAMP),
    "clamp.dod_m4": _n("4e-4", 4e-4, "logits", CLAMP),
    "clamp.significant": _n("yes (F = 5.06, p = 0.027)", 0.027, "p", CLAMP),
    "clamp.linear_control": _n("0.000 (it moved no logit)", 0.0, "logits", CLAMP),
}


def text(key: str) -> str:
    """The paper's figure as tables show it; "—" for a figure the paper does not give."""
    return PAPER[key].text if key else "—"


def value(key: str) -> float:
    number = PAPER[key].value
    if number is None:
        raise KeyError(f"the paper gives no single number for {key}")
    return number


def _t(key: str) -> str:
    return PAPER[key].text


# Each stage's line under its printed table: the paper's figures for that table, read from PAPER.
BANNERS: dict[str, str] = {
    "kl14": (f"paper (original evaluation): SAE {_t('kl14.sae_ratio')} ε-random, SAE + NFM {_t('kl14.sae_nfm_ratio')}, "
             f"a {_t('kl14.kl_reduction')} KL reduction; linear {_t('kl14.kl_reduction')} ({_t('kl14.linear_t')}), "
             f"interaction {_t('kl14.interaction_reduction')}; {_t('kl14.measurements')} measurements"),
    "kl18": (f"paper (original evaluation): joint KL reduction {_t('kl18.headline_reduction')} (headline); components "
             f"linear {_t('kl18.linear_reduction')} / interaction {_t('kl18.interaction_reduction')} / both "
             f"{PAPER['kl18.full_reduction'].value:.1%} ({_t('kl18.kl_t')}); CE {_t('kl18.ce_linear_reduction')} / "
             f"{_t('kl18.ce_interaction_reduction')} / {_t('kl18.ce_full_reduction')} ({_t('kl18.ce_t')}); "
             f"{_t('kl18.measurements')} measurements"),
    "ortho": (f"paper (F=50,000, d=3,200): {_t('ortho.components_standalone')} / {_t('ortho.components_joint')} PCA "
              f"components for 90% (original definition); mean |cos| {_t('ortho.cosine_standalone')} / "
              f"{_t('ortho.cosine_joint')}, what random directions give; squared norms unimodal (mean ~0.395) "
              "standalone, bimodal joint"),
    "discovery": (f"paper (OpenLLaMA-3B, original sentences): {PAPER['discovery.formality'].value:.0f} for formality, "
                  f"{PAPER['discovery.emotion'].value:.0f} for emotion (top |t|, no held-out test)"),
    "selection": (f"paper (original sentences, 10 per cell): feature 4022, one-way F = {PAPER['selection.F'].value}, "
                  f"p = {_t('selection.p')} (df (3, 36)); counterexample 1113, F = "
                  f"{PAPER['selection.counterexample_F'].value}, p = {_t('selection.counterexample_p')}"),
    "meaning": "paper: feature 4022 labelled \"that\" by an LLM reading its examples (the original's clamp never "
               "reached the model)",
    "clamp": (f"paper: feature 4022 at m = -4, the original statistic F = {_t('clamp.F_m-4')}, p = "
              f"{PAPER['clamp.significant'].value} (df (1, 78); {_t('clamp.F_m0')} at m = 0, {_t('clamp.F_m4')} at "
              f"m = 4), a difference of differences of {_t('clamp.dod_m-4')} logits, uncorrected over 25 tests"),
}
