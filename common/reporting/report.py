"""REPORT.md and report.json: every headline number of the paper beside this run's, read from the stage outputs, and
whether the paper's qualitative claim holds here under a written rule (METHOD's headline numbers)."""
from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from common.errors import UserError
from common.stages.pipeline import STAGES
from common.store.reads import load_json
from common.store.savers import atomic_save_json, atomic_save_text

# Each stage's output file, as reproduce.py runs the stages.
STAGE_FILES = {stage.name: f"{stage.name}/{stage.done_file}" for stage in STAGES}
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


def format_value(value: Any, kind: str) -> str:
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


def _both(section: str, name: str, paper: str, stage: str, key: str, kind: str = "num", rule: str = "",
          check: Callable[[dict[str, Any], str], bool] | None = None) -> Row:
    """A behavioral figure as trained and under --original_eval (the ``_original`` stage's same key)."""
    return Row(section, name, paper, f"{stage}:{key}", kind, f"{stage}_original:{key}", rule, check)


def _same_sign(factor: str) -> Callable[[dict[str, Any], str], bool]:
    def check(outputs: dict, suffix: str) -> bool:
        top = outputs["discovery" + suffix][factor]["top"][0]
        return (top["t"] > 0) == (top["t_heldout"] > 0)
    return check


def behavior_rows() -> list[Row]:
    """METHOD §10's report rows: the features found and selected, and the 2×2 logit test of the clamp."""
    found, chosen, test = "Features (part9b, part11)", "Selected secondary feature (part11)", "2×2 logit test (part13)"
    top, value = "ranked.interaction.0", "target_by_value"
    sparse = "NFM weight rows (part4)"
    rows = [
        Row(sparse, "most unequal embedding row: Gini", "0.49 (feature 17512)",
            "sparsity:embeddings.most_unequal.0.gini", "num"),
        Row(sparse, "its entropy effective rank", "133.5 of 300", "sparsity:embeddings.most_unequal.0.effective_rank",
            "num"),
        Row(sparse, "mean Gini of the embedding rows", "—", "sparsity:embeddings.means.gini", "num",
            rule="above an untrained row's", check=lambda o, s: o["sparsity"]["embeddings"]["means"]["gini"]
            > o["sparsity"]["embeddings"]["untrained_reference"]["mean"]),
        Row(sparse, "untrained |N(0, σ)| rows: Gini", "≈0.414 (√2 − 1)", "sparsity:embeddings.untrained_reference.mean",
            "num"),
    ]
    for factor, paper in (("formality", "21781"), ("emotion", "21607")):
        rows += [_both(found, f"{factor}: top primary feature's t", f"feature {paper}", "discovery",
                       f"{factor}.top.0.t"),
                 _both(found, f"{factor}: its t on the held-out texts", "— (not held out)", "discovery",
                       f"{factor}.top.0.t_heldout", rule="same sign as on the selecting texts",
                       check=_same_sign(factor))]
    rows += [
        _both(chosen, "top feature by the one-way F over the cells: F", "26.72 (feature 4022)", "selection",
              "by_omnibus_all_texts.F"),
        _both(chosen, "top feature by the one-way F over the cells: p", "2.85e-9", "selection",
              "by_omnibus_all_texts.p"),
        _both(chosen, "top feature by the interaction F: F (selecting texts)", "—", "selection", f"{top}.F"),
        _both(chosen, "its BH q over all features", "—", "selection", f"{top}.q_all", rule="< 0.05",
              check=lambda o, s: o["selection" + s]["ranked"]["interaction"][0]["q_all"] < 0.05),
        _both(chosen, "its interaction F on the held-out texts", "—", "selection", f"{top}.F_heldout",
              rule="held-out p < 0.05",
              check=lambda o, s: o["selection" + s]["ranked"]["interaction"][0]["p_heldout"] < 0.05),
        _both(chosen, "counterexample (lowest one-way F): F", "0.022 (feature 1113)", "selection",
              "counterexamples.0.F"),
        _both(chosen, "counterexample: p", "0.996", "selection", "counterexamples.0.p"),
    ]
    for m, original, dod in (("-4", "5.06", "7e-4"), ("0", "5.17", "1e-4"), ("4", "4.38", "4e-4")):
        rows += [_both(test, f"m = {m}: the original statistic F (df 1, 78)", original, "clamp",
                       f"{value}.{m}.original_pseudo_interaction.F"),
                 _both(test, f"m = {m}: by-word interaction p", "—", "clamp", f"{value}.{m}.by_word.p"),
                 _both(test, f"m = {m}: Holm p over every feature × multiplier", "— (uncorrected)", "clamp",
                       f"{value}.{m}.holm_p"),
                 _both(test, f"m = {m}: difference of differences (logits)", dod, "clamp",
                       f"{value}.{m}.difference_of_differences")]
    rows += [
        _both(test, "m = -4: by-prompt (repeated-measures) p", "—", "clamp", "by_prompt.p"),
        _both(test, "m = -4: word-label permutation p", "—", "clamp", "permutation_p"),
        _both(test, "m = -4: percentile of the by-word F among random features", "—", "clamp",
              "null_percentile.percentile"),
        _both(test, "m = -4: formality main effect (logits)", "—", "clamp", "by_word.formality.mean_diff"),
        _both(test, "m = -4: emotion main effect (logits)", "—", "clamp", "by_word.emotion.mean_diff"),
        _both(test, "m = -4: greedy tokens changed", "— (read by eye)", "clamp", "greedy_tokens_changed", "pct"),
        _both(test, "the interaction is significant (by-word Holm p)", "yes (F = 5.06, p = 0.027)", "clamp",
              "holm_p", rule="Holm p < 0.05 and the by-word F above 95% of random features'",
              check=lambda o, s: o["clamp" + s]["holm_p"] < 0.05
              and o["clamp" + s]["null_percentile"]["percentile"] >= 95),
        _both(test, "identity: max |Δlogit| at m = 1", "—", "clamp", "identity_max_abs_dlogit",
              rule="exactly 0 (the delta patch leaves the model alone)",
              check=lambda o, s: o["clamp" + s]["identity_max_abs_dlogit"] == 0),
        Row(test, "linear control, m = -4: mean |Δlogit|", "0.000 (it moved no logit)", "clamp_linear:mean_abs_dlogit",
            "num", rule="> 0 (its 'no interaction' counts only after a change)",
            check=lambda o, s: o["clamp_linear"]["mean_abs_dlogit"] > 0),
        Row(test, "linear control, m = -4: by-word interaction F", "—", "clamp_linear:by_word.F", "num"),
    ]
    return rows


def lookup(outputs: dict[str, Any], source: str) -> Any:
    """``"stage:key.path"`` → the value in that stage's output file; a missing key is an error, never a blank."""
    stage, path = source.split(":", 1)
    value = outputs[stage]
    try:
        for key in path.split("."):
            value = value[int(key)] if isinstance(value, list) else value[key]
    except (KeyError, IndexError, ValueError, TypeError):
        raise UserError(f"the report reads {source}, which {STAGE_FILES[stage]} does not hold: it was written by an "
                        f"older version of the stage; delete {stage}/ and re-run to write it again") from None
    return value


def evaluate_rows(outputs: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for row in rows() + behavior_rows():
        entry = {"section": row.section, "name": row.name, "paper": row.paper, "source": row.source,
                 "value": lookup(outputs, row.source), "kind": row.kind, "rule": row.rule}
        if row.original:
            entry["original_source"] = row.original
            entry["original_value"] = lookup(outputs, row.original)
        if row.check:
            entry["holds"] = bool(row.check(outputs, ""))
            if row.original:
                entry["holds_original"] = bool(row.check(outputs, "_original"))
        out.append(entry)
    return out


def _hardware() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, {gpu}; "
            f"torch {torch.__version__}")


def study_findings(study_file: Path | None, preset: str | None) -> dict[str, Any] | None:
    """The findings of the study of this preset (study.py's study.json), or None where there is none."""
    if study_file is None or not Path(study_file).is_file():
        return None
    study = load_json(Path(study_file))
    if study.get("preset") != preset:
        return None
    return {"file": str(study_file), "date": study.get("date"), "git_commit": study.get("git_commit"),
            "command": study.get("command"),
            "findings": {name: {"title": question["title"], "finding": question["finding"]}
                         for name, question in study["questions"].items()}}


def write_report(out_dir: Path, args: dict[str, Any], timings: dict[str, dict], study_file: Path | None = None) -> Path:
    """Read every stage's output file, evaluate the rows, write report.json and REPORT.md; returns REPORT.md's path.
    ``study_file``: a study.json of this preset, quoted in the "Why the numbers differ" section."""
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
        "stage_peak_memory_bytes": {name: _peak_memory(output) for name, output in outputs.items()},
        "missing_stages": missing,
        "study": study_findings(study_file, args.get("preset")),
    }
    atomic_save_json({"header": header, "rows": table}, out_dir / "report.json")
    path = out_dir / "REPORT.md"
    atomic_save_text(_markdown(header, table, out_dir), path)
    return path


def _peak_memory(output: dict[str, Any]) -> int | None:
    """The stage's own record of its peak memory: CUDA's allocator peak where it ran on a GPU, else its peak RSS."""
    used = output.get("resources", {})
    return used.get("cuda_max_memory_allocated_bytes", used.get("peak_rss_bytes"))


def _bytes(value: int | None) -> str:
    return "—" if value is None else f"{value / 2**30:.2f} GB" if value >= 2**30 else f"{value / 2**20:.0f} MB"


def _header_lines(header: dict[str, Any]) -> list[str]:
    rows = header["stage1_rows"]
    described = {
        "preset": header["preset"],
        "model": f"{header['model_id']} ({header['model_fingerprint']})",
        "layer": header["layer"],
        "training text": header["training_text"],
        "evaluation text": header["evaluation_text"],
        "stage-1 rows": (f"{rows['train_rows']:,} training, {rows['val_rows']:,} held out"
                         if rows.get("train_rows") is not None else "—"),
        "precision regime": header["precision_regime"],
        "decode path": header["decode_path"],
        "hardware": header["hardware"],
        "stages missing": ", ".join(header["missing_stages"]) or "none",
    }
    lines = [f"- **{key}**: {value}" for key, value in described.items()]
    seconds, memory = header["stage_seconds"], header["stage_peak_memory_bytes"]
    lines += ["", "## Time and memory per stage", "",
              "Wall time as `reproduce.py` measured it (all attempts of a resumed stage); peak memory as the stage "
              "recorded it (CUDA's allocator peak on a GPU, else the process's peak resident set).", "",
              "| stage | wall time | peak memory |", "|---|---|---|"]
    lines += [f"| {name} | {value:.0f} s | {_bytes(memory.get(name))} |" for name, value in seconds.items()]
    lines.append(f"| all | {sum(seconds.values()) / 60:.1f} min | |")
    return lines


def _study_lines(study: dict[str, Any] | None, preset: str | None) -> list[str]:
    lines = ["## Why the numbers differ", ""]
    if study is None:
        return [*lines, f"Not studied: no study of the {preset} preset was given (`reproduce.py --study`, by default "
                        f"`docs/results/{preset}-study.json`; `study.py` writes one).", ""]
    lines += [f"From `{study['file']}` ({study['date']}, commit {study['git_commit']}; `{study['command']}`):", ""]
    lines += [f"- **{entry['title']}.** {entry['finding']}" for entry in study["findings"].values()]
    return [*lines, ""]


def _markdown(header: dict, table: list[dict], out_dir: Path) -> str:
    lines = ["# Reproduction report", "", *_study_lines(header.get("study"), header["preset"]),
             *_header_lines(header)]
    lines += ["", "Values are read from each stage's output file (`source`); fractions are shown as percents.",
              "\"this run\" evaluates every model as it was trained; "
              "\"original eval\" is `--original_eval` (METHOD §4).",
              "\"holds\" applies the written rule to this run's value "
              "(and to the original evaluation where there is one).", ""]
    shown: set[str] = set()
    sections = list(dict.fromkeys(row["section"] for row in table))
    for section in sections:
        lines += ["", f"## {section}", "",
                  "| figure | paper | this run | original eval | rule | holds | source |",
                  "|---|---|---|---|---|---|---|"]
        stages = []
        for row in (row for row in table if row["section"] == section):
            stages += [row[key].split(":")[0] for key in ("source", "original_source") if key in row]
            lines.append(_markdown_row(row))
        lines += _figures(out_dir, [stage for stage in dict.fromkeys(stages) if stage not in shown])
        shown.update(stages)
    rest = [folder.name for folder in sorted(out_dir.iterdir()) if folder.is_dir() and folder.name not in shown]
    figures = _figures(out_dir, rest)
    if figures:
        lines += ["", "## Other figures", *figures]
    return "\n".join(lines) + "\n"


def _markdown_row(row: dict[str, Any]) -> str:
    original = format_value(row["original_value"], row["kind"]) if "original_value" in row else ""
    holds = "" if "holds" not in row else ("yes" if row["holds"] else "**no**")
    if "holds_original" in row:
        holds += f" / {'yes' if row['holds_original'] else '**no**'}"
    return (f"| {row['name'].replace('|', chr(92) + '|')} | {row['paper']} | {format_value(row['value'], row['kind'])} "
            f"| {original} | {row['rule']} | {holds} | `{row['source']}` |")


def _figures(out_dir: Path, stages: list[str]) -> list[str]:
    """The PNGs the given stages wrote, each under the section whose numbers it draws."""
    pngs = [png for stage in stages for png in sorted((out_dir / stage).glob("*.png"))]
    if not pngs:
        return []
    return ["", *[f"![{png.parent.name}/{png.name}]({png.relative_to(out_dir).as_posix()})" for png in pngs]]
