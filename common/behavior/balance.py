"""Are a design's cells matched (METHOD §10 decision 8)? A per-word quantity, word frequency (wordfreq's Zipf) or the
clean model's baseline logit, summarized per cell with a one-way ANOVA over the four cells and the 2×2 contrasts: a
cell that differs in it could carry a formality × emotion difference of its own into Δlogit."""
from __future__ import annotations

import importlib.util
import logging
import warnings
from typing import Any

import numpy as np
from scipy import stats

from common.behavior.stimuli import CELLS

log = logging.getLogger(__name__)
ZIPF_LANGUAGE = "en"


def cell_balance(values: dict[str, list[float]]) -> dict[str, Any]:
    """Per cell: mean and SD (ddof 1) of the words' values; the one-way ANOVA over the cells (``f_oneway``); the
    formality (formal − casual), emotion (high − low) and interaction ((fh − fl) − (ch − cl)) contrasts of the cell
    means."""
    arrays = {cell: np.asarray(values[cell], dtype=np.float64) for cell in CELLS}
    means = np.array([arrays[cell].mean() for cell in CELLS])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on constant input; F and p are then NaN
        oneway = stats.f_oneway(*arrays.values())
    return {"cell_means": dict(zip(CELLS, means.tolist())),
            "cell_sds": {cell: float(arrays[cell].std(ddof=1)) for cell in CELLS},
            "oneway": {"F": float(oneway.statistic), "p": float(oneway.pvalue)},
            "formality": float(means[:2].mean() - means[2:].mean()),
            "emotion": float(means[[0, 2]].mean() - means[[1, 3]].mean()),
            "interaction": float((means[0] - means[1]) - (means[2] - means[3]))}


def zipf_balance(words: dict[str, list[str]]) -> dict[str, Any]:
    """``cell_balance`` of each word's Zipf frequency (``wordfreq.zipf_frequency(word, "en")``: log10 of its
    frequency per billion words, offline); NaN where wordfreq is not installed (the GPU machines lack it)."""
    if importlib.util.find_spec("wordfreq") is None:
        log.info("wordfreq is not installed: the cells' word frequencies are reported as NaN")
        return {**cell_balance({cell: [float("nan")] * 2 for cell in CELLS}), "source": "wordfreq is not installed"}
    from wordfreq import zipf_frequency

    zipf = {cell: [zipf_frequency(word, ZIPF_LANGUAGE) for word in words[cell]] for cell in CELLS}
    return {**cell_balance(zipf), "source": f"wordfreq zipf_frequency(word, {ZIPF_LANGUAGE!r})"}


def baseline_balance(baseline: np.ndarray) -> dict[str, Any]:
    """``cell_balance`` of each word's clean-model logit (``baseline`` (P, 2, 2, W), at each prompt's last position)
    averaged over the prompts."""
    words = np.asarray(baseline, dtype=np.float64).mean(axis=0).reshape(4, -1)
    return {**cell_balance({cell: words[c] for c, cell in enumerate(CELLS)}),
            "source": "the clean model's logit of each word at the prompts' last position, averaged over the prompts"}
