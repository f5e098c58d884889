"""REPORT.md's rows as data: each names the value it shows once (``source``, "stage:key.path"), the paper's figure
(a key of ``common.paper``), and, where the row is a claim, its written rule, which is checked on that value.
A row of a stage that also ran under ``--original_eval`` shows that run's value beside it (``original``)."""
from __future__ import annotations

from dataclasses import dataclass

from common.reporting.rules import (
    Rule,
    above,
    above_source,
    below,
    below_source,
    ci_excludes,
    interval_above,
    is_false,
    is_true,
    paired_above,
    ratio_within,
    within,
    within_fraction_of,
)


@dataclass(frozen=True)
class Row:
    source: str  # "stage:key.path" of this run's value
    name: str
    paper: str = ""  # a key of common.paper.PAPER, or a literal figure in quotes ('"…"'); "" for none
    kind: str = "pct"  # pct | num | int | bool
    rule: Rule | None = None
    original: bool = False  # the same key of the stage's _original run, where the KL or behavioral stage ran both
    section: str | None = None  # default: the stage's section in common.registry
    ci: str | None = None  # "stage:key.path" of the value's confidence interval {"low", "high", "level"}
    if_fails: str = ""  # a control's row: what a failing result would mean (METHOD §14)
    fixed: bool = False  # the architecture fixes the value (a parameter share): no claim a seed could change
    complement_of: str | None = None  # the source of the row whose claim this one repeats (a share and 1 - it)

    @property
    def stage(self) -> str:
        return self.source.split(":", 1)[0]


def _kl(stage: str, condition: str, key: str) -> str:
    return f"{stage}:conditions.{condition}.{key}"


def _kl_claim(stage: str, condition: str, figure: str, test: str, null: float, text: str) -> tuple[Rule, str]:
    """A KL/CE figure's rule "its 99% CI over windows excludes the null" (METHOD §13.1) and that interval's source.
    Directories written before the intervals existed fall back to the position-level paired p < 0.01 they hold."""
    ci = _kl(stage, condition, f"ci99.{figure}")
    fallback = paired_above(_kl(stage, condition, f"tests.{test}.paired"), text)
    return interval_above(ci, null, text, fallback), ci


def _reduces(name: str, paper: str, stage: str, condition: str, metric: str = "kl_reduction") -> Row:
    """A KL or CE reduction against the reference, both evaluations, held to "its 99% CI excludes 0"."""
    test = metric.replace("_reduction", "_reference_minus_condition")
    rule, ci = _kl_claim(stage, condition, metric, test, 0.0, REDUCES)
    return Row(_kl(stage, condition, metric), name, paper, rule=rule, original=True, ci=ci)


def _above_eps_random(stage: str, condition: str, name: str, paper: str) -> Row:
    rule, ci = _kl_claim(stage, condition, "kl_ratio_eps_random", "kl_vs_eps_random", 1.0, ABOVE_EPS_RANDOM)
    return Row(_kl(stage, condition, "kl_ratio_eps_random"), name, paper, "num", rule, original=True, ci=ci)


def _ci95(stage: str, condition: str, figure: str) -> str:
    return _kl(stage, condition, f"ci95.{figure}")


def _counts(stage: str) -> list[Row]:
    """What a KL stage measured: windows (the unit of its intervals), measured positions, measurements."""
    return [Row(f"{stage}:windows", "windows", "", "int", original=True),
            Row(f"{stage}:positions", "measured positions (windows × positions measured in each)", "", "int",
                original=True),
            Row(f"{stage}:measurements", "measurements (measured positions × (conditions + ε draws))",
                f"{stage}.measurements", "int", original=True)]


REDUCES = "reduction > 0: its 99% CI over windows excludes 0 (older runs: paired p < 0.01)"
ABOVE_EPS_RANDOM = "> 1: its 99% CI over windows excludes 1 (older runs: paired p < 0.01)"
SQUARED_NORMS = "Squared norms (part16)"
ORTHO = "ortho:saes.{}"
SHARE_PAPER = (("interaction", "low"), ("linear", "low"), ("nonlinear", "low"), ("residual", "high"))
CONTROLLED = "bimodal:controlled"
VERDICT = "bimodal by the verdict of METHOD §13.3 (dip test and KDE valley, never-moved features set apart)"
VERDICT_NOT = "not " + VERDICT

ROWS: list[Row] = [
    Row("sae1:variance_explained", "variance explained", "sae1.variance_explained", rule=above(0.80, "> 0.80"),
        ci="sae1:ci.variance_explained"),
    Row("sae1:mse", "reconstruction MSE (normalized)", "sae1.mse", "num", ci="sae1:ci.mse"),
    Row("sae1:l0_fraction", "active features (L0 / F)", "sae1.l0_fraction"),
    Row("sae1:dead_fraction", "dead features", "sae1.dead_fraction", rule=below(0.01, "< 1%")),
    Row("nfm:error_reduction_train", "residual error reduction, train", "nfm.error_reduction_train",
        rule=above(0, "> 0")),
    Row("nfm:error_reduction_val", "residual error reduction, validation", "nfm.error_reduction_val",
        rule=above(0, "> 0"), ci="nfm:ci.error_reduction_val"),
    Row("nfm:residual_mse_before_val", "residual MSE before → after, validation (before)",
        "nfm.residual_mse_before_val", "num", ci="nfm:ci.residual_mse_before_val"),
    Row("nfm:residual_mse_after_val", "residual MSE before → after, validation (after)", "nfm.residual_mse_after_val",
        "num", ci="nfm:ci.residual_mse_after_val"),
    Row("nfm:linear_share", "linear share of mean |output|", "nfm.linear_share",
        rule=above_source("nfm:interaction_share", "linear > interaction")),
    Row("sae2:variance_explained", "variance explained of the interaction vectors", ci="sae2:ci.variance_explained"),
    Row("sae2:dead_fraction", "dead features of the secondary SAE", rule=below(0.01, "< 1% (as stage 1)")),
    Row("joint:joint_mse", "joint reconstruction MSE (held out)", "joint.joint_mse", "num", ci="joint:ci.joint_mse"),
    Row("joint:sae_part_mse", "its own SAE path alone, MSE", "joint.sae_part_mse", "num", ci="joint:ci.sae_part_mse"),
    Row("joint:improvement", "improvement over its own SAE path", "joint.improvement",
        rule=above_source("nfm:error_reduction_val",
                          "joint improvement > sequential improvement (stage 2, validation)"),
        ci="joint:ci.improvement"),
    Row("joint:improvement_vs_standalone", "improvement over the standalone stage-1 SAE", rule=above(0, "> 0"),
        ci="joint:ci.improvement_vs_standalone"),
    Row("joint:linear_share", "linear share of mean |output|", "joint.linear_share",
        rule=above_source("joint:interaction_share", "linear > interaction")),
    Row("joint:parameters.paper_style.shares.nfm_linear", "NFM linear share of parameters (paper's count)",
        "joint.nfm_linear_share", rule=within(0.323, 0.01, "within 1 point of 32.3%"), fixed=True),
    Row("joint:parameters.paper_style.shares.nfm_embeddings", "embeddings share of parameters (paper's count)",
        "joint.nfm_embeddings_share", fixed=True),
    _above_eps_random("kl14", "sae", "SAE KL / ε-random KL", "kl14.sae_ratio"),
    Row(_kl("kl14", "sae_nfm", "kl_ratio_eps_random"), "SAE + NFM KL / ε-random KL", "kl14.sae_nfm_ratio", "num",
        below_source(_kl("kl14", "sae", "kl_ratio_eps_random"), "below the SAE's ratio"), original=True,
        ci=_ci95("kl14", "sae_nfm", "kl_ratio_eps_random")),
    _reduces("KL reduction, SAE + full NFM", "kl14.kl_reduction", "kl14", "sae_nfm"),
    _reduces("KL reduction, SAE + NFM linear", "kl14.kl_reduction", "kl14", "sae_linear"),
    Row(_kl("kl14", "sae_interaction", "kl_reduction"), "KL reduction, SAE + NFM interaction",
        "kl14.interaction_reduction",
        rule=below_source(_kl("kl14", "sae_linear", "kl_reduction"), "smaller than the linear reduction"),
        original=True, ci=_ci95("kl14", "sae_interaction", "kl_reduction")),
    *_counts("kl14"),
    _above_eps_random("kl18", "joint_sae", "joint SAE part KL / ε-random KL", ""),
    Row(_kl("kl18", "joint_full", "kl_reduction"), "KL reduction, joint full", "kl18.full_reduction",
        rule=_kl_claim("kl18", "joint_full", "kl_reduction", "kl_reference_minus_condition", 0.0, REDUCES)[0]
        & above_source(_kl("kl14", "sae_nfm", "kl_reduction"), "above the sequential SAE + NFM reduction"),
        original=True, ci=_kl("kl18", "joint_full", "ci99.kl_reduction")),
    _reduces("KL reduction, joint linear only", "kl18.linear_reduction", "kl18", "joint_linear"),
    _reduces("KL reduction, joint interaction only", "kl18.interaction_reduction", "kl18", "joint_interaction"),
    _reduces("CE (next token) reduction, joint full", "kl18.ce_full_reduction", "kl18", "joint_full",
             "ce_next_reduction"),
    _reduces("CE (next token) reduction, joint linear only", "kl18.ce_linear_reduction", "kl18", "joint_linear",
             "ce_next_reduction"),
    _reduces("CE (next token) reduction, joint interaction only", "kl18.ce_interaction_reduction", "kl18",
             "joint_interaction", "ce_next_reduction"),
    *_counts("kl18"),
    Row(ORTHO.format("standalone.pca.original.components_90"),
        "PCA components for 90%, standalone (original definition)", "ortho.components_standalone", "int"),
    Row(ORTHO.format("joint.pca.original.components_90"), "PCA components for 90%, joint (original definition)",
        "ortho.components_joint", "int",
        within_fraction_of(ORTHO.format("standalone.pca.original.components_90"), 0.1,
                           "within 10% of the standalone SAE's")),
    Row(ORTHO.format("joint.pca.standard.components_90"), "PCA components for 90%, joint (standard, centred)", "",
        "int"),
    Row(ORTHO.format("standalone.cosine_offdiag.mean_abs"), "mean |cosine| off the diagonal, standalone",
        "ortho.cosine_standalone", "num"),
    Row(ORTHO.format("joint.cosine_offdiag.mean_abs"), "mean |cosine| off the diagonal, joint", "ortho.cosine_joint",
        "num", ratio_within(ORTHO.format("joint.cosine_offdiag.mean_abs"),
                            ORTHO.format("joint.cosine_offdiag.random_directions_mean_abs"), 0.25,
                            "within 25% of random directions' mean |cosine|")),
    Row(ORTHO.format("standalone.verdict.bimodal"), "standalone SAE bimodal", "ortho.standalone_bimodal", "bool",
        is_false(VERDICT_NOT), section=SQUARED_NORMS),
    Row(ORTHO.format("joint.verdict.bimodal"), "joint SAE bimodal", "ortho.joint_bimodal", "bool",
        is_true(VERDICT), section=SQUARED_NORMS),
    *[Row(ORTHO.format(f"{sae}.verdict.never_moved.fraction"), f"{sae} features that never moved (set apart)",
          section=SQUARED_NORMS) for sae in ("standalone", "joint")],
    Row(ORTHO.format("joint.bimodality.two_component.means.0"), "joint mixture: low mode mean (a description)",
        "ortho.joint_low_mode", "num", section=SQUARED_NORMS),
    Row(ORTHO.format("joint.bimodality.two_component.means.1"), "joint mixture: high mode mean (a description)",
        "ortho.joint_high_mode", "num", section=SQUARED_NORMS),
    *[Row(f"{CONTROLLED}.trained.shares.{share}.mean_{side}",
          f"{share} share, squared norm {'< median' if side == 'low' else '≥ median'} (moved, active)",
          f"bimodal.{share}_{side}") for share, _ in SHARE_PAPER for side in ("low", "high")],
    *[Row(f"{CONTROLLED}.difference_of_differences.{share}.estimate",
          f"{share} share, low − high: trained minus untrained control", kind="pct",
          rule=ci_excludes(f"{CONTROLLED}.difference_of_differences.{share}", share != "residual",
                           f"99% CI {'above' if share != 'residual' else 'below'} 0"),
          ci=f"{CONTROLLED}.difference_of_differences.{share}",
          complement_of=None if share != "residual" else f"{CONTROLLED}.difference_of_differences.interaction.estimate")
      for share, _ in SHARE_PAPER],
    *[Row(f"{CONTROLLED}.trained.spearman.{share}.r", f"Spearman r, squared norm vs {share} share (moved, active)",
          f"bimodal.{share}_r", "num",
          ci_excludes(f"{CONTROLLED}.spearman_difference.{share}", share == "residual",
                      f"{'above' if share == 'residual' else 'below'} the untrained control's r "
                      "(99% CI of the difference)"),
          ci=f"{CONTROLLED}.trained.spearman.{share}.ci",
          complement_of=None if share != "residual" else f"{CONTROLLED}.trained.spearman.interaction.r")
      for share, _ in SHARE_PAPER],
    *[Row(f"{CONTROLLED}.untrained.spearman.{share}.r",
          f"Spearman r, squared norm vs {share} share (untrained control)", kind="num",
          ci=f"{CONTROLLED}.untrained.spearman.{share}.ci") for share, _ in SHARE_PAPER],
]
