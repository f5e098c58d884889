"""The study's regime question (METHOD §11): stages 1, 2 and 5 in fp32, in the original's fp16, and in fp32 with
Adam's second moment flushed to zero where fp16 would underflow it, each at every seed, and whether the joint SAE's
bimodality (the one verdict, METHOD §13.3) follows the regime, the optimizer or neither."""
from __future__ import annotations

from typing import Any

from common.paper import text as paper_text
from common.reporting.study_bimodality import JOINT_VERDICT, MOVED, NO_VALLEY, VERDICTS
from common.reporting.study_plan import regime_variant
from common.reporting.study_tables import Column, Figure, Runs, quote, render, table

STAGE1 = [Figure("stage 1 variance explained", "sae1.variance_explained", "sae1:variance_explained"),
          Figure("stage 1 dead features", "sae1.dead_fraction", "sae1:dead_fraction")]
REGIMES = (("fp32", "fp32"), ("fp16", "faithful-fp16"), ("flush", "fp32 + flushed Adam"))
RARE = "firing on < 0.1% of held-out rows"
LOW_RARE, LOW_REST = f"joint: low-mode share of moved features {RARE}", "joint: low-mode share of the other moved"
RULE = ("bimodality follows the optimizer where the joint SAE is bimodal (the verdict) on every fp16 seed and every "
        "flushed-Adam seed and on no fp32 seed; the regime (fp16 arithmetic beyond Adam's underflow) where it is "
        "bimodal on every fp16 seed and on no fp32 or flushed-Adam seed; neither otherwise")


def regime_seeds(runs: Runs) -> list[int]:
    """Seed 0 and every seed some regime's variant folder holds."""
    found = {0}
    for folder in runs.study_dir.glob("*seed*"):
        tail = folder.name.rsplit("seed", 1)[1]
        if folder.is_dir() and tail.isdigit():
            found.add(int(tail))
    return sorted(found)


def _summary(section: dict[str, Any], seeds: list[int]) -> dict[str, Any]:
    """Per regime: on how many of its seeds that ran each SAE is bimodal (rendered "k/n")."""
    rows = []
    for index, (_, label) in enumerate(REGIMES):
        columns = range(index * len(seeds), (index + 1) * len(seeds))
        counts = []
        for name in ("standalone SAE bimodal (verdict)", JOINT_VERDICT):
            values = [v for v in (_value(section, name, c) for c in columns) if v is not None]
            counts.append((sum(values), len(values)))
        rows.append({"regime": label, "standalone": counts[0], "joint": counts[1]})
    return {"columns": ["regime", "standalone SAE bimodal on", "joint SAE bimodal on"], "rows": rows}


def _value(section: dict[str, Any], name: str, column: int) -> Any:
    return next(row for row in section["rows"] if row["name"] == name)["cells"][column]["value"]


def _follows(summary: dict[str, Any]) -> str:
    (fp32, n32), (fp16, n16), (flush, nflush) = (row["joint"] for row in summary["rows"])
    if not n16 or not n32:
        return "cannot be told (a regime has no finished run)"
    if fp16 == n16 and fp32 == 0 and nflush and flush == nflush:
        return "follows the optimizer: Adam's underflowed second moment alone reproduces it in fp32"
    if fp16 == n16 and fp32 == 0 and flush == 0:
        return "follows the regime: fp16 arithmetic beyond Adam's underflow makes it"
    return "follows neither the regime nor the optimizer alone"


def regime(runs: Runs) -> dict[str, Any]:
    seeds = regime_seeds(runs)
    columns = [Column(f"{label} seed {seed}", regime_variant(name, seed)) for name, label in REGIMES for seed in seeds]
    section = table(runs, columns, [
        *STAGE1,
        Figure("stage 2 residual error reduction, validation", "nfm.error_reduction_val", "nfm:error_reduction_val"),
        Figure("stage 5 improvement over its own SAE path", "joint.improvement", "joint:improvement"),
        *VERDICTS,
        Figure("joint features that never moved", "", "ortho:saes.joint.verdict.never_moved.fraction"),
        Figure("joint: dip test p on moved features", "", f"{MOVED}.dip.p", "num"),
        Figure("joint: KDE valley ratio on moved features", "", f"{MOVED}.kde.ratio", "num"),
        Figure(LOW_RARE, "", f"{MOVED}.by_firing.low_share_rare"),
        Figure(LOW_REST, "", f"{MOVED}.by_firing.low_share_rest")])
    section["summary"] = summary = _summary(section, seeds)
    section["rule"], section["note"] = RULE, NO_VALLEY
    if not any(row["joint"][1] for row in summary["rows"][1:]):
        section["finding"] = "not run"
        return section
    counts = {row["regime"]: f"{row['joint'][0]}/{row['joint'][1]}" for row in summary["rows"]}
    fp16_first = len(seeds)  # the column of fp16 at seed 0
    section["finding"] = (
        f"The joint SAE is bimodal by the verdict on {counts['fp32']} fp32 seeds, {counts['faithful-fp16']} "
        f"fp16 seeds and {counts['fp32 + flushed Adam']} flushed-Adam seeds: by the written rule its bimodality "
        f"{_follows(summary)}. At seed 0 in fp16, {quote(section, LOW_RARE, fp16_first)} of the moved features "
        f"{RARE} lie in the low mode against {quote(section, LOW_REST, fp16_first)} of the others (fp32: "
        f"{quote(section, LOW_RARE, 0)} and {quote(section, LOW_REST, 0)}); stage 2's reduction is "
        f"{quote(section, 'stage 2 residual error reduction, validation', fp16_first)} in fp16 against "
        f"{quote(section, 'stage 2 residual error reduction, validation', 0)} in fp32 (paper "
        f"{paper_text('nfm.error_reduction_val')}).")
    return section


def summary_lines(summary: dict[str, Any]) -> list[str]:
    lines = ["| " + " | ".join(summary["columns"]) + " |", "|---|---|---|"]
    for row in summary["rows"]:
        counts = [f"{k}/{n} seeds" if n else render(None, "num") for k, n in (row["standalone"], row["joint"])]
        lines.append(f"| {row['regime']} | {counts[0]} | {counts[1]} |")
    return lines
