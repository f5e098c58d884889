"""The study's bimodality question (METHOD §11, §13.3): the one verdict, as part16 wrote it into each variant's
``ortho/results.json`` (so STUDY.md and REPORT.md read the same value), for every decoder the study trained, with the
never-moved features set apart and the mixture fit as a description."""
from __future__ import annotations

from typing import Any

from common.reporting.report import STAGE_FILES
from common.reporting.study_tables import Figure, Runs, render

JOINT_VERDICT = "joint SAE bimodal (verdict)"
MOVED = "ortho:saes.joint.verdict.moved"
VERDICTS = [Figure("standalone SAE bimodal (verdict)", "ortho.standalone_bimodal",
                   "ortho:saes.standalone.verdict.bimodal", "bool"),
            Figure(JOINT_VERDICT, "ortho.joint_bimodal", "ortho:saes.joint.verdict.bimodal", "bool")]
VERDICT = ("the one verdict of METHOD §13.3, as REPORT.md's 'Squared norms (part16)' rows: never-moved features set "
           "apart, then the dip test (p < 0.05) and a KDE valley between the two highest modes on the moved ones")
NO_VALLEY = ("A — for a KDE valley ratio or a low-mode share: the moved features' KDE has a single mode, so there is "
             "no valley to split them at")
COLUMNS = ("decoder", "features", "never moved", "moved", "dip p (moved)", "KDE valley ratio", "verdict",
           "mixture rule on all features (description)", "low mode: rare / other firing")


def _variants(runs: Runs) -> list[str]:
    """The main run, then every study folder that holds a part16 result, in name order."""
    found = sorted(p.name for p in runs.study_dir.iterdir() if (p / STAGE_FILES["ortho"]).is_file()
                   and not p.is_symlink()) if runs.study_dir.is_dir() else []
    return ["main", *[name for name in found if name != "main"]]


def _entry(variant: str, sae: str, analysed: dict[str, Any]) -> dict[str, Any]:
    """One decoder's row from its part16 entry: the verdict, and the mixture rule as a description."""
    verdict = analysed["verdict"]
    moved, never = verdict["moved"], verdict["never_moved"]
    firing = moved.get("by_firing", {})
    return {"decoder": f"{variant}/{'sae1' if sae == 'standalone' else 'joint'}", "variant": variant, "sae": sae,
            "source": f"{variant}/ortho:saes.{sae}.verdict", "n": verdict["n"], "never_moved": never["count"],
            "moved": moved["n"], "dip_p": moved.get("dip", {}).get("p"),
            "valley_ratio": moved.get("kde", {}).get("ratio"),
            "bimodal": verdict["bimodal"], "mixture": analysed["bimodality"]["bimodal"],
            "low_share_rare": firing.get("low_share_rare"), "low_share_rest": firing.get("low_share_rest"),
            "reason": verdict.get("reason")}


def bimodality_section(runs: Runs) -> dict[str, Any]:
    entries = []
    for variant in _variants(runs):
        saes = runs.value(variant, "ortho:saes") or {}
        entries += [_entry(variant, sae, saes[sae]) for sae in ("standalone", "joint")
                    if "verdict" in saes.get(sae, {})]
    main = {e["sae"]: e for e in entries if e["variant"] == "main"}
    section = {"columns": list(COLUMNS), "entries": entries, "verdict": VERDICT}
    if len(main) < 2:
        section["finding"] = "not run"
        return section
    bimodal = [e["decoder"] for e in entries if e["bimodal"]]
    mixture_only = [e["decoder"] for e in entries if e["mixture"] and not e["bimodal"]]
    section["finding"] = (
        f"By the one verdict (REPORT.md's), {len(bimodal)} of {len(entries)} decoders are bimodal"
        + (f" ({', '.join(bimodal)})" if bimodal else "")
        + f"; the mixture rule alone would also call {len(mixture_only)} more bimodal. In the main run the standalone "
        f"SAE is {'bimodal' if main['standalone']['bimodal'] else 'not bimodal'} and the joint SAE "
        f"{'bimodal' if main['joint']['bimodal'] else 'not bimodal'} (dip p {render(main['joint']['dip_p'], 'num')}, "
        f"valley ratio {render(main['joint']['valley_ratio'], 'num')} on its {main['joint']['moved']:,} moved "
        "features).")
    return section


def bimodality_lines(section: dict[str, Any]) -> list[str]:
    lines = ["| " + " | ".join(section["columns"]) + " |", "|" + "---|" * len(section["columns"])]
    for e in section["entries"]:
        never = "unknown" if e["never_moved"] is None else f"{e['never_moved']:,}"
        lines.append(f"| {e['decoder']} | {e['n']:,} | {never} | {e['moved']:,} | {render(e['dip_p'], 'num')} "
                     f"| {render(e['valley_ratio'], 'num')} | {'bimodal' if e['bimodal'] else 'not bimodal'} "
                     f"| {render(e['mixture'], 'bool')} | {render(e['low_share_rare'], 'pct')} / "
                     f"{render(e['low_share_rest'], 'pct')} |")
    bimodal = sum(e["bimodal"] for e in section["entries"])
    mixture_only = sum(bool(e["mixture"]) and not e["bimodal"] for e in section["entries"])
    return [*lines, "", f"Bimodal by the verdict: {bimodal} of {len(section['entries'])} decoders; by the mixture rule "
            f"but not the verdict: {mixture_only}.", "", f"Verdict: {section['verdict']}. {NO_VALLEY}."]
