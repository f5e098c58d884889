"""REPORT.md and report.json: every headline number of the paper beside this run's, read from the stage outputs, and
whether the paper's qualitative claim holds here under a written rule (METHOD's headline numbers)."""
from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from common.checkpoint import atomic_save_json, atomic_save_text, load_json

STAGE_FILES = {
    "sae1": "sae1/metrics.json", "nfm": "nfm/metrics.json", "sae2": "sae2/metrics.json", "joint": "joint/metrics.json",
    "kl14": "kl14/results.json", "kl14_original": "kl14_original/results.json", "ortho": "ortho/results.json",
    "bimodal": "bimodal/results.json", "kl18": "kl18/results.json", "kl18_original": "kl18_original/results.json",
}
ALPHA = 0.01


@dataclass(frozen=True)
class Row:
    section: str
    name: str
    paper: str  # the paper's figure, as it states it
    source: str  # "stage:key.path" of this run's value
    kind: str = "pct"  # pct | num | int | bool
    original: str | None = None  # the same figure under --original_eval, where the KL stages ran both ways
    rule: str = ""  # the claim's written rule ("" where the row is a figure, not a claim)
    check: Callable[[dict[str, Any], str], bool] | None = None  # (outputs, "" or "_original") → holds?


def _fmt(value: Any, kind: str) -> str:
    if isinstance(value, bool) or kind == "bool":
        return "yes" if value else "no"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "int":
        return f"{int(value):,}"
    return f"{value:.4g}"


def _t(outputs: dict, stage: str, condition: str, test: str) -> dict:
    return outputs[stage]["conditions"][condition]["tests"][test]["paired"]


def _above(stage: str, condition: str, test: str) -> Callable[[dict, str], bool]:
    """The first sample is above the second with paired p < 0.01."""
    def check(outputs: dict, suffix: str) -> bool:
        paired = _t(outputs, stage + suffix, condition, test)
        return paired["t"] > 0 and paired["p"] < ALPHA
    return check


def _kl(stage: str, cond: str, key: str) -> str:
    return f"{stage}:conditions.{cond}.{key}"


def _reduces(section: str, name: str, paper: str, stage: str, condition: str, metric: str) -> Row:
    """A KL or CE reduction against the reference, both evaluations, held to "reduction > 0 with paired p < 0.01"."""
    test = metric.replace("_reduction", "_reference_minus_condition")
    return Row(section, name, paper, _kl(stage, condition, metric), "pct", _kl(stage + "_original", condition, metric),
               "reduction > 0 with paired p < 0.01", _above(stage, condition, test))


def rows() -> list[Row]:
    seq, joint = "kl14", "kl18"
    reduces = "reduction > 0 with paired p < 0.01"
    return [
        Row("Stage 1: TopK SAE", "variance explained", "86.4%", "sae1:variance_explained", rule="> 0.80",
            check=lambda o, s: o["sae1"]["variance_explained"] > 0.80),
        Row("Stage 1: TopK SAE", "reconstruction MSE (normalized)", "0.136", "sae1:mse", "num"),
        Row("Stage 1: TopK SAE", "active features (L0 / F)", "2.05%", "sae1:l0_fraction"),
        Row("Stage 1: TopK SAE", "dead features", "0%", "sae1:dead_fraction", rule="< 1%",
            check=lambda o, s: o["sae1"]["dead_fraction"] < 0.01),
        Row("Stage 2: sequential NFM", "residual error reduction, train", "23.18%", "nfm:error_reduction_train",
            rule="> 0", check=lambda o, s: o["nfm"]["error_reduction_train"] > 0),
        Row("Stage 2: sequential NFM", "residual error reduction, validation", "23.43%", "nfm:error_reduction_val",
            rule="> 0", check=lambda o, s: o["nfm"]["error_reduction_val"] > 0),
        Row("Stage 2: sequential NFM", "residual MSE before → after, validation (before)", "0.3672",
            "nfm:residual_mse_before_val", "num"),
        Row("Stage 2: sequential NFM", "residual MSE before → after, validation (after)", "0.2811",
            "nfm:residual_mse_after_val", "num"),
        Row("Stage 2: sequential NFM", "linear share of mean |output|", "95.5%", "nfm:linear_share",
            rule="linear > interaction",
            check=lambda o, s: o["nfm"]["linear_share"] > o["nfm"]["interaction_share"]),
        Row("Stage 3: secondary SAE", "variance explained of the interaction vectors", "—", "sae2:variance_explained"),
        Row("Stage 5: joint", "joint reconstruction MSE (held out)", "0.162", "joint:joint_mse", "num"),
        Row("Stage 5: joint", "its own SAE path alone, MSE", "0.275", "joint:sae_part_mse", "num"),
        Row("Stage 5: joint", "improvement over its own SAE path", "41.3%", "joint:improvement",
            rule="joint improvement > sequential improvement (stage 2, validation)",
            check=lambda o, s: o["joint"]["improvement"] > o["nfm"]["error_reduction_val"]),
        Row("Stage 5: joint", "improvement over the standalone stage-1 SAE", "—", "joint:improvement_vs_standalone",
            rule="> 0", check=lambda o, s: o["joint"]["improvement_vs_standalone"] > 0),
        Row("Stage 5: joint", "linear share of mean |output|", "94.0%", "joint:linear_share",
            rule="linear > interaction",
            check=lambda o, s: o["joint"]["linear_share"] > o["joint"]["interaction_share"]),
        Row("Stage 5: joint", "NFM linear share of parameters (paper's count)", "32.3%",
            "joint:parameters.paper_style.shares.nfm_linear", rule="within 1 point of 32.3%",
            check=lambda o, s: abs(o["joint"]["parameters"]["paper_style"]["shares"]["nfm_linear"] - 0.323) < 0.01),
        Row("Stage 5: joint", "embeddings share of parameters (paper's count)", "3% (with MLP)",
            "joint:parameters.paper_style.shares.nfm_embeddings"),
        Row("KL, sequential (part14)", "SAE KL / ε-random KL", "2.99x", _kl(seq, "sae", "kl_ratio_eps_random"), "num",
            _kl(seq + "_original", "sae", "kl_ratio_eps_random"), "> 1 with paired p < 0.01 (SAE above ε-random)",
            _above(seq, "sae", "kl_vs_eps_random")),
        Row("KL, sequential (part14)", "SAE + NFM KL / ε-random KL", "2.1x",
            _kl(seq, "sae_nfm", "kl_ratio_eps_random"), "num",
            _kl(seq + "_original", "sae_nfm", "kl_ratio_eps_random"), "below the SAE's ratio",
            lambda o, s: o[seq + s]["conditions"]["sae_nfm"]["kl_ratio_eps_random"]
            < o[seq + s]["conditions"]["sae"]["kl_ratio_eps_random"]),
        *[_reduces("KL, sequential (part14)", name, "29.8%", seq, condition, "kl_reduction") for name, condition in (
            ("KL reduction, SAE + full NFM", "sae_nfm"), ("KL reduction, SAE + NFM linear", "sae_linear"))],
        Row("KL, sequential (part14)", "KL reduction, SAE + NFM interaction", "0.9%",
            _kl(seq, "sae_interaction", "kl_reduction"), "pct",
            _kl(seq + "_original", "sae_interaction", "kl_reduction"), "smaller than the linear reduction",
            lambda o, s: o[seq + s]["conditions"]["sae_interaction"]["kl_reduction"]
            < o[seq + s]["conditions"]["sae_linear"]["kl_reduction"]),
        Row("KL, sequential (part14)", "measurements", "17.8M", f"{seq}:measurements", "int",
            f"{seq}_original:measurements"),
        Row("KL, joint (part18)", "joint SAE part KL / ε-random KL", "—",
            _kl(joint, "joint_sae", "kl_ratio_eps_random"), "num",
            _kl(joint + "_original", "joint_sae", "kl_ratio_eps_random"), "> 1 with paired p < 0.01",
            _above(joint, "joint_sae", "kl_vs_eps_random")),
        Row("KL, joint (part18)", "KL reduction, joint full", "51.9% (headline 51.6%)",
            _kl(joint, "joint_full", "kl_reduction"), "pct",
            _kl(joint + "_original", "joint_full", "kl_reduction"),
            f"{reduces}, and above the sequential SAE + NFM reduction",
            lambda o, s: _above(joint, "joint_full", "kl_reference_minus_condition")(o, s)
            and o[joint + s]["conditions"]["joint_full"]["kl_reduction"]
            > o[seq + s]["conditions"]["sae_nfm"]["kl_reduction"]),
        *[_reduces("KL, joint (part18)", name, paper, joint, condition, metric) for name, paper, condition, metric in (
            ("KL reduction, joint linear only", "50.9%", "joint_linear", "kl_reduction"),
            ("KL reduction, joint interaction only", "8.6%", "joint_interaction", "kl_reduction"),
            ("CE (next token) reduction, joint full", "26.2%", "joint_full", "ce_next_reduction"),
            ("CE (next token) reduction, joint linear only", "25.7%", "joint_linear", "ce_next_reduction"),
            ("CE (next token) reduction, joint interaction only", "4.2%", "joint_interaction", "ce_next_reduction"))],
        Row("KL, joint (part18)", "measurements", "3.2M", f"{joint}:measurements", "int",
            f"{joint}_original:measurements"),
        Row("Orthogonality (part16)", "PCA components for 90%, standalone (original definition)", "866",
            "ortho:saes.standalone.pca.original.components_90", "int"),
        Row("Orthogonality (part16)", "PCA components for 90%, joint (original definition)", "863",
            "ortho:saes.joint.pca.original.components_90", "int", rule="within 10% of the standalone SAE's",
            check=lambda o, s: abs(o["ortho"]["saes"]["joint"]["pca"]["original"]["components_90"]
                                   - o["ortho"]["saes"]["standalone"]["pca"]["original"]["components_90"])
            <= 0.1 * o["ortho"]["saes"]["standalone"]["pca"]["original"]["components_90"]),
        Row("Orthogonality (part16)", "PCA components for 90%, joint (standard, centred)", "—",
            "ortho:saes.joint.pca.standard.components_90", "int"),
        Row("Orthogonality (part16)", "mean |cosine| off the diagonal, standalone", "0.0147",
            "ortho:saes.standalone.cosine_offdiag.mean_abs", "num"),
        Row("Orthogonality (part16)", "mean |cosine| off the diagonal, joint", "0.0148",
            "ortho:saes.joint.cosine_offdiag.mean_abs", "num",
            rule="within 25% of random directions' mean |cosine|",
            check=lambda o, s: abs(o["ortho"]["saes"]["joint"]["cosine_offdiag"]["mean_abs"]
                                   / o["ortho"]["saes"]["joint"]["cosine_offdiag"]["random_directions_mean_abs"]
                                   - 1) < 0.25),
        Row("Squared norms (part16)", "standalone SAE bimodal", "no (unimodal, mean ≈0.395)",
            "ortho:saes.standalone.bimodality.bimodal", "bool", rule="not bimodal by the mixture rule",
            check=lambda o, s: not o["ortho"]["saes"]["standalone"]["bimodality"]["bimodal"]),
        Row("Squared norms (part16)", "joint SAE bimodal", "yes", "ortho:saes.joint.bimodality.bimodal", "bool",
            rule="bimodal by the mixture rule",
            check=lambda o, s: o["ortho"]["saes"]["joint"]["bimodality"]["bimodal"]),
        Row("Squared norms (part16)", "joint mixture: low mode mean", "≈0.05",
            "ortho:saes.joint.bimodality.two_component.means.0", "num"),
        Row("Squared norms (part16)", "joint mixture: high mode mean", "≈0.37",
            "ortho:saes.joint.bimodality.two_component.means.1", "num"),
        *[Row("Bimodal shares (part17)", f"{share} share, squared norm {side}", paper,
              f"bimodal:shares.{share}.mean_{'low' if side == '< split' else 'high'}",
              rule=(f"low {'>' if share != 'residual' else '<'} high with Student p < 0.01"
                    if side == "≥ split" else ""),
              check=(lambda o, s, share=share: (o["bimodal"]["shares"][share]["student"]["t"] > 0)
                     == (share != "residual")
                     and o["bimodal"]["shares"][share]["student"]["p"] < ALPHA) if side == "≥ split" else None)
          for share, low, high in (("interaction", "82.8%", "71.3%"), ("linear", "33.1%", "29.0%"),
                                   ("nonlinear", "49.7%", "42.3%"), ("residual", "17.2%", "28.7%"))
          for side, paper in (("< split", low), ("≥ split", high))],
        *[Row("Bimodal shares (part17)", f"Spearman r, squared norm vs {share} share", paper,
              f"bimodal:spearman_vs_squared_norm.{share}.r", "num",
              rule=f"{'negative' if sign < 0 else 'positive'} with p < 0.01",
              check=lambda o, s, share=share, sign=sign:
              sign * o["bimodal"]["spearman_vs_squared_norm"][share]["r"] > 0
              and o["bimodal"]["spearman_vs_squared_norm"][share]["p"] < ALPHA)
          for share, paper, sign in (("interaction", "−0.987", -1), ("linear", "−0.866", -1),
                                     ("nonlinear", "−0.922", -1), ("residual", "+0.987", 1))],
    ]


def lookup(outputs: dict[str, Any], source: str) -> Any:
    """``"stage:key.path"`` → the value in that stage's output file; a missing key is an error, never a blank."""
    stage, path = source.split(":", 1)
    value = outputs[stage]
    for key in path.split("."):
        value = value[int(key)] if isinstance(value, list) else value[key]
    return value


def evaluate_rows(outputs: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for row in rows():
        entry = {"section": row.section, "name": row.name, "paper": row.paper, "source": row.source,
                 "value": lookup(outputs, row.source), "kind": row.kind, "rule": row.rule}
        if row.original:
            entry["original_source"] = row.original
            entry["original_value"] = lookup(outputs, row.original)
        if row.check:
            entry["holds"] = bool(row.check(outputs, ""))
            if row.original and row.section.startswith("KL"):
                entry["holds_original"] = bool(row.check(outputs, "_original"))
        out.append(entry)
    return out


def _hardware() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, {gpu}; "
            f"torch {torch.__version__}")


def write_report(out_dir: Path, args: dict[str, Any], timings: dict[str, dict]) -> Path:
    """Read every stage's output file, evaluate the rows, write report.json and REPORT.md; returns REPORT.md's path."""
    out_dir = Path(out_dir)
    outputs = {stage: load_json(out_dir / path) for stage, path in STAGE_FILES.items() if (out_dir / path).is_file()}
    missing = sorted(set(STAGE_FILES) - set(outputs))
    table = evaluate_rows(outputs) if not missing else []
    sae1 = load_json(out_dir / "sae1" / "config.json") if (out_dir / "sae1" / "config.json").is_file() else {}
    header = {
        "preset": args.get("preset"),
        "model_id": sae1.get("model_id"), "model_fingerprint": sae1.get("model_fingerprint"),
        "layer": sae1.get("layer"),
        "training_text": sae1.get("data", {}).get("text"),
        "evaluation_text": outputs.get("kl14", {}).get("evaluation", {}).get("text"),
        "stage1_rows": {k: sae1.get("data", {}).get(k) for k in ("train_rows", "val_rows")},
        "precision_regime": sae1.get("precision_regime"), "decode_path": sae1.get("decode_path"),
        "hardware": _hardware(),
        "stage_seconds": {name: round(t["seconds"], 1) for name, t in timings.items()},
        "missing_stages": missing,
    }
    atomic_save_json({"header": header, "rows": table}, out_dir / "report.json")
    path = out_dir / "REPORT.md"
    atomic_save_text(_markdown(header, table, out_dir), path)
    return path


def _markdown(header: dict, table: list[dict], out_dir: Path) -> str:
    lines = ["# Reproduction report", ""]
    for key, value in header.items():
        if key == "stage_seconds":
            total = sum(value.values())
            value = ", ".join(f"{k} {v:.0f} s" for k, v in value.items()) + f" (total {total / 60:.1f} min)"
        lines.append(f"- **{key.replace('_', ' ')}**: {value}")
    lines += ["", "Values are read from each stage's output file (`source`); fractions are shown as percents.",
              "\"this run\" evaluates every model as it was trained; "
              "\"original eval\" is `--original_eval` (METHOD §4).",
              "\"holds\" applies the written rule to this run's value "
              "(and to the original evaluation where there is one).", ""]
    section = None
    for row in table:
        if row["section"] != section:
            section = row["section"]
            lines += ["", f"## {section}", "",
                      "| figure | paper | this run | original eval | rule | holds | source |",
                      "|---|---|---|---|---|---|---|"]
        original = _fmt(row["original_value"], row["kind"]) if "original_value" in row else ""
        holds = "" if "holds" not in row else ("yes" if row["holds"] else "**no**")
        if "holds_original" in row:
            holds += f" / {'yes' if row['holds_original'] else '**no**'}"
        lines.append(f"| {row['name'].replace('|', chr(92) + '|')} | {row['paper']} "
                     f"| {_fmt(row['value'], row['kind'])} | {original} | {row['rule']} "
                     f"| {holds} | `{row['source']}` |")
    lines += ["", "## Figures", ""]
    for png in sorted(out_dir.glob("*/*.png")):
        lines.append(f"![{png.parent.name}/{png.name}]({png.relative_to(out_dir).as_posix()})")
    return "\n".join(lines) + "\n"
