"""The study's "controls" question (METHOD §14): the controls that cost too much for the main job, run in one variant
folder beside the main run's models, and every control's verdict with its CI in one table (the main job's ridge map
read from the main run)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from common.kl.summary import PER_POSITION_FILE
from common.kl.windows import window_totals
from common.reporting.study_plan import Run
from common.reporting.study_tables import Runs, pct, quote
from common.training.window_cis import reduction_ci

VARIANT = "controls"
STAGES = ("nfm_linear", "nfm_shuffled", "nfm_beyond_ridge", "joint_linear", "sae_matched", "sae_untied",
          "sae_params", "kl_sae_matched", "kl_sae_untied", "kl_sae_params", "kl14_nfm_linear", "kl18_joint_linear",
          "planted_sweep", "planted_recipe_eps")
COLUMNS = ["estimate", "95% CI low", "95% CI high", "rule holds"]
# (row name, variant, stage, key of the {"estimate", "low", "high"} record, key of the verdict or None)
FIGURES = (
    ("joint vs SAE on its schedule, tied: 1 − MSE(joint)/MSE(SAE)", VARIANT, "sae_matched", "control.verdict",
     "control.holds"),
    ("joint vs untied SAE on its schedule", VARIANT, "sae_untied", "control.verdict", "control.holds"),
    ("joint vs parameter-matched SAE on its schedule", VARIANT, "sae_params", "control.verdict", "control.holds"),
    ("KL: joint vs SAE on its schedule, tied: 1 − KL(joint)/KL(SAE)", VARIANT, "kl_sae_matched", "control.verdict",
     "control.holds"),
    ("KL: joint vs untied SAE", VARIANT, "kl_sae_untied", "control.verdict", "control.holds"),
    ("KL: joint vs parameter-matched SAE", VARIANT, "kl_sae_params", "control.verdict", "control.holds"),
    ("ridge map of x: reduction of the SAE's error", "main", "ridge", "ridge_reduction", None),
    ("the NFM's reduction of the same error", "main", "ridge", "nfm_reduction", None),
    ("NFM − ridge map (points)", "main", "ridge", "nfm_minus_ridge", "holds"),
    ("NFM's reduction of what the ridge map leaves", VARIANT, "nfm_beyond_ridge", "control.verdict", "control.holds"),
    ("interaction pathway's own contribution, sequential (reconstruction)", VARIANT, "nfm_linear", "control.verdict",
     "control.holds"),
    ("interaction pathway's own contribution, joint: 1 − MSE(joint)/MSE(linear-only joint)", VARIANT, "joint_linear",
     "control.verdict", "control.holds"),
    ("shuffled NFM: gain", VARIANT, "nfm_shuffled", "control.reduction", None),
    ("intercept-only (mean training residual): gain", VARIANT, "nfm_shuffled", "control.intercept_reduction", None),
    ("shuffled − intercept-only", VARIANT, "nfm_shuffled", "control.verdict", "control.holds"),
)
KL_CONTRIBUTIONS = (("interaction pathway's own contribution, sequential (KL): 1 − KL(full NFM)/KL(linear-only NFM)",
                     "kl14", "kl14_nfm_linear", "sae_nfm.kl"),
                    ("interaction pathway's own contribution, joint (KL): 1 − KL(joint)/KL(linear-only joint)",
                     "kl18", "kl18_joint_linear", "joint_full.kl"))


def control_runs(preset: str, seeds: tuple[int, ...]) -> list[Run]:
    """One variant beside the main run, whose models and main-job ridge map it reads."""
    return [Run(VARIANT, STAGES)]


def _get(record: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(record, dict) or part not in record:
            return None
        record = record[part]
    return record


def _row(runs: Runs, name: str, variant: str, stage: str, record: dict | None, holds: Any, kind: str = "pct") -> dict:
    command = runs.command(variant, stage)
    values = [None] * 3 if record is None else [record.get("estimate"), record.get("low"), record.get("high")]
    return {"name": name, "paper": "", "kind": kind,
            "cells": [{"column": column, "variant": variant, "source": f"{variant}/{stage}", "value": value,
                       "command": command} for column, value in zip(COLUMNS, [*values, holds])]}


def kl_contribution(runs: Runs, full: str, linear: str, column: str) -> dict[str, Any] | None:
    """1 − ΣKL(with the interaction pathway) / ΣKL(the linear-only model), paired over the same windows."""
    stores = [runs.folder("main") / full / PER_POSITION_FILE, runs.folder(VARIANT) / linear / PER_POSITION_FILE]
    if not all(Path(store).is_file() for store in stores):
        return None
    (windows, with_it), (windows_linear, without) = (window_totals(store, [column]) for store in stores)
    if not np.array_equal(windows, windows_linear):
        return None
    ci = reduction_ci(with_it[column], without[column])
    return {**ci, "holds": bool(ci["low"] > 0)}


def planted_rows(runs: Runs) -> list[dict]:
    rows = []
    for stage, label in (("planted_sweep", "planted"), ("planted_recipe_eps", "planted, the pipeline's Adam eps")):
        results = runs.value(VARIANT, f"{stage}:strengths") or []
        for entry in results:
            for variant, what in (("true_codes", "NFM on the true codes"), ("sae_then_nfm", "SAE → NFM")):
                if variant in entry:
                    s, figures = entry["strength"], entry[variant]
                    rows.append(_row(runs, f"{label}, s = {s:g}, {what}: interaction gain", VARIANT, stage,
                                     figures["interaction_gain"], None))
                    rows.append(_row(runs, f"{label}, s = {s:g}, {what}: recall@|P|", VARIANT, stage,
                                     {"estimate": figures["recall"]}, None, "num"))
    return rows


def controls(runs: Runs) -> dict[str, Any]:
    rows = []
    for name, variant, stage, key, holds in FIGURES:
        record = runs.outputs(variant).get(stage)
        rows.append(_row(runs, name, variant, stage, _get(record, key), _get(record, holds) if holds else None))
    for name, full, linear, column in KL_CONTRIBUTIONS:
        figure = kl_contribution(runs, full, linear, column)
        rows.append(_row(runs, name, VARIANT, linear, figure, None if figure is None else figure["holds"]))
    rows += planted_rows(runs)
    section = {"columns": COLUMNS, "rows": rows}
    section["finding"] = finding(section)
    return section


def _estimate(section: dict, name: str) -> float | None:
    row = next((row for row in section["rows"] if row["name"] == name), None)
    return None if row is None else row["cells"][0]["value"]


def _holds(section: dict, name: str) -> str:
    row = next(row for row in section["rows"] if row["name"] == name)
    value = row["cells"][3]["value"]
    return "not run" if value is None else "holds" if value else "fails"


def finding(section: dict) -> str:
    """One sentence per control family, each number read from the table above it."""
    names = [row["name"] for row in section["rows"]]
    value = {name: _estimate(section, name) for name in names}
    if all(v is None for v in value.values()):
        return "not run"
    saes = FIGURES[0][0], FIGURES[1][0], FIGURES[2][0]
    parts = [
        "Against SAEs trained on the joint model's own schedule the joint model's held-out MSE is lower by "
        + ", ".join(f"{pct(value[name])} ({label}: {_holds(section, name)})"
                    for name, label in zip(saes, ("tied", "untied", "parameter-matched"))),
        f"a ridge map of x removes {pct(value[FIGURES[6][0]])} of the SAE's error, the NFM "
        f"{pct(value[FIGURES[7][0]])} (NFM above ridge: {_holds(section, FIGURES[8][0])}), and the NFM removes "
        f"{pct(value[FIGURES[9][0]])} of what the ridge map leaves ({_holds(section, FIGURES[9][0])})",
        f"the interaction pathway's own contribution is {pct(value[FIGURES[10][0]])} sequential and "
        f"{pct(value[FIGURES[11][0]])} joint for reconstruction, {pct(value[KL_CONTRIBUTIONS[0][0]])} and "
        f"{pct(value[KL_CONTRIBUTIONS[1][0]])} for KL",
        f"the shuffled NFM gains {pct(value[FIGURES[12][0]])} against the intercept's {pct(value[FIGURES[13][0]])} "
        f"(adds nothing: {_holds(section, FIGURES[14][0])})",
    ]
    recalls = [name for name in names if name.startswith("planted, s =") and name.endswith("recall@|P|")]
    if recalls:
        parts.append("planted pairs found (recall@|P|): " + ", ".join(
            f"{name.removeprefix('planted, ').removesuffix(': recall@|P|')} {quote(section, name, 0)}"
            for name in recalls))
    return "; ".join(parts) + "."
