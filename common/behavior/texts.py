"""The stimuli of a behavioral script as texts with their cells and the held-out split (METHOD §10 decision 2), and
features ranked on the selecting texts with their held-out values."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from common.behavior.run import BehaviorRun
from common.behavior.statistics import bh_fdr
from common.behavior.stimuli import CELLS, load_stimuli, tokens_per_cell, words_per_cell
from common.errors import UserError


@dataclass
class StimulusSet:
    """One set of the 2×2 stimuli, flattened to texts with their cell and factor levels and the held-out split."""

    texts: list[str]
    cell: np.ndarray  # (n,) index into CELLS
    formality: np.ndarray  # (n,) index into FORMALITY (0 formal, 1 casual)
    emotion: np.ndarray  # (n,) index into EMOTION (0 high, 1 low)
    select: np.ndarray  # (n,) bool: the texts features are chosen on
    report: np.ndarray  # (n,) bool: the texts the chosen features are reported on
    record: dict[str, Any]


def stimulus_set(run: BehaviorRun, name: str) -> StimulusSet:
    """``--split even_odd`` (the default, METHOD §10 decision 2): even-numbered sentences of each cell select, the
    odd ones report; ``none``: all texts do both."""
    cfg = run.cfg
    stimuli = load_stimuli(cfg.stimuli)
    cells = {cell: texts[: cfg.sentences_per_cell] for cell, texts in stimuli.sets[name].items()}
    texts, cell, position = [], [], []
    for c, key in enumerate(CELLS):
        texts += cells[key]
        cell += [c] * len(cells[key])
        position += list(range(len(cells[key])))
    cell_index, position = np.asarray(cell), np.asarray(position)
    even = position % 2 == 0
    select, report = (even, ~even) if cfg.split == "even_odd" else (np.ones_like(even), np.ones_like(even))
    if min(len(v) for v in cells.values()) < 4:
        raise UserError(f"{stimuli.source}: the {name} set needs at least 4 sentences per cell for the split")
    record = {"file": stimuli.source, "set": name, "sentences_per_cell": {k: len(v) for k, v in cells.items()},
              "words_per_cell": words_per_cell(cells), "tokens_per_cell": tokens_per_cell(cells, run.lm.tokenizer),
              "split": cfg.split, "texts_selecting": int(select.sum()), "texts_reporting": int(report.sum())}
    return StimulusSet(texts, cell_index, cell_index // 2, cell_index % 2, select, report, record)


def ranked(select: dict, report: dict, full: dict, stat: str, eligible: np.ndarray, top_n: int,
           absolute: bool = False) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Features ranked by ``stat`` on the selecting texts (eligible ones only: finite and active in enough texts), each
    with its value on the held-out texts and on all texts, and the BH q over all eligible features on all texts."""
    score = np.abs(select[stat]) if absolute else select[stat]
    usable = eligible & np.isfinite(score) & np.isfinite(full["p"])
    order = np.flatnonzero(usable)[np.argsort(-score[usable], kind="stable")]
    q = np.full(score.shape, np.nan)
    q[usable] = bh_fdr(full["p"][usable])
    rows = [{"feature": int(i), stat: float(select[stat][i]), "p": float(select["p"][i]),
             f"{stat}_heldout": float(report[stat][i]), "p_heldout": float(report["p"][i]),
             f"{stat}_all": float(full[stat][i]), "p_all": float(full["p"][i]), "q_all": float(q[i])}
            for i in order[:top_n]]
    return order, rows


