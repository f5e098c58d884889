"""The study's seeds question (METHOD §11): every report row of the seeded chain on each seed (the KL rows under both
evaluations), mean ± sd, on how many seeds each claim's rule holds, and the claims counted as independent ones."""
from __future__ import annotations

import statistics
from typing import Any

from common.reporting.report import lookup, original_source, paper_figure, section_of
from common.reporting.rows import ROWS, Row
from common.reporting.study_plan import MAIN, SEED_STAGES, seed_variants
from common.reporting.study_tables import Runs, rule_holds

# Rows of other sections that repeat another row's claim: the SAE + NFM ratio is below the SAE's exactly when the
# SAE + NFM KL reduction is above 0 (the two rows differ only in the reduction's p-value).
SAME_CLAIM = {"kl14:conditions.sae_nfm.kl_ratio_eps_random": "kl14:conditions.sae_nfm.kl_reduction"}
ORIGINAL = " (original evaluation)"
COUNTING = ("a claim is a report row with a rule, under each evaluation it ran; left out: rows whose value the "
            "architecture fixes (parameter shares) and rows that repeat another row's claim (a share and 1 minus it, "
            "a ratio below another exactly when a reduction is above 0)")


def _value(outputs: dict[str, Any], source: str) -> Any:
    try:
        return lookup(outputs, source)
    except (KeyError, TypeError):
        return None


def _entry(row: Row, runs: Runs, done: list[str], original: bool) -> dict[str, Any]:
    source = original_source(row.source) if original else row.source
    values = [_value(runs.outputs(v), source) for v in done]
    holds = [rule_holds(row, runs.outputs(v), original) for v in done]
    numeric = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    whole = len(numeric) == len(values)
    repeats = row.complement_of or SAME_CLAIM.get(row.source)
    return {"name": f"{section_of(row)}: {row.name}" + (ORIGINAL if original else ""), "paper": paper_figure(row),
            "kind": row.kind, "source": source, "values": values,
            "mean": statistics.fmean(numeric) if whole and numeric else None,
            "sd": statistics.stdev(numeric) if whole and len(numeric) > 1 else None,
            "rule": row.rule.text if row.rule else "", "holds": holds,
            "holds_count": None if row.rule is None else sum(bool(h) for h in holds),
            "claim": row.rule is not None and not row.fixed and repeats is None,
            "left_out": "fixed by the architecture" if row.fixed else ("repeats " + repeats if repeats else None)}


def seeds(runs: Runs) -> dict[str, Any]:
    variants = [MAIN, *seed_variants(runs.study_dir)]
    done = [v for v in variants if all(stage in runs.outputs(v) for stage in SEED_STAGES)]
    rows = []
    for row in ROWS:
        if row.stage in SEED_STAGES and done:
            rows.append(_entry(row, runs, done, False))
            if row.original:
                rows.append(_entry(row, runs, done, True))
    commands = {v: {stage: runs.command(v, stage) for stage in SEED_STAGES} for v in done}
    seeds_of = {v: (0 if v == MAIN else int(v.removeprefix("seed"))) for v in done}
    section = {"seeds": [seeds_of[v] for v in done], "variants": done, "rows": rows, "commands": commands,
               "counting": COUNTING}
    claims = [r for r in rows if r["claim"]]
    every = [r for r in claims if r["holds_count"] == len(done)]
    never = [r for r in claims if r["holds_count"] == 0]
    varies = [r for r in claims if r not in every and r not in never]
    section["claims"] = {"rows_with_a_rule": sum(r["rule"] != "" for r in rows), "independent": len(claims),
                         "hold_on_every_seed": len(every), "fail_on_every_seed": len(never), "vary": len(varies)}
    if len(done) < 2:
        section["finding"] = "not run"
        return section
    counts = section["claims"]
    failing = "; ".join(r["name"] for r in never)
    differing = "; ".join(f"{r['name']} holds on {r['holds_count']}/{len(done)}" for r in varies)
    section["finding"] = (
        f"Over {len(done)} seeds, {counts['rows_with_a_rule']} rows carry a rule and {counts['independent']} of them "
        f"are independent claims. {counts['hold_on_every_seed']} hold on every seed, "
        f"{counts['fail_on_every_seed']} fail on every seed" + (f" ({failing})" if failing else "")
        + f", and {counts['vary']} differ between seeds" + (f" ({differing})" if differing else "") + ".")
    return section


def claim_lines(section: dict[str, Any]) -> list[str]:
    counts = section["claims"]
    return [f"Claims: {counts['rows_with_a_rule']} rows with a rule; {counts['independent']} independent "
            f"({section['counting']}); {counts['hold_on_every_seed']} hold on every seed, "
            f"{counts['fail_on_every_seed']} fail on every seed, {counts['vary']} differ between seeds."]
