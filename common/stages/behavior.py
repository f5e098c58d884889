"""What the five behavioral scripts share (METHOD §10): the checkpoints loaded and checked against each other and the
LM, the pipeline built as trained or as the original evaluated, per-text mean codes of the stimuli, prompt logits
under a clamp, greedy generations, and the output folder with its ``results.json``."""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from common.analysis.decoders import read_results
from common.behavior.pipeline import Clamp, Pipeline
from common.behavior.statistics import bh_fdr
from common.behavior.stimuli import CELLS, load_stimuli, tokens_per_cell, words_per_cell
from common.config.concepts import BehaviorConfig
from common.data.activations import ActivationStream, NormStats
from common.errors import UserError
from common.lm.hooks import capture_layer, patch_layer, run_from_layer
from common.lm.model import LoadedLM
from common.models.codes import scatter_codes
from common.models.loading import (
    StageInput,
    check_nfm_on_sae,
    check_secondary_on,
    load_nfm,
    load_sae,
    load_secondary,
)
from common.models.nfm import NFM
from common.models.sae import TopKSAE
from common.models.settings import EvalSettings, original_settings, trained_settings
from common.runtime.context import Runtime
from common.stages.finish import write_results
from common.stages.opening import open_stage
from common.store.fingerprints import git_commit
from common.store.lock import OutputDir

log = logging.getLogger(__name__)
CLAMP_BATCH = 32  # clamped passes per batch (logits are (batch, T, vocabulary): keep it small)


@dataclass
class BehaviorRun:
    cfg: BehaviorConfig
    rt: Runtime
    lm: LoadedLM
    pipeline: Pipeline
    sources: list[StageInput]
    out: OutputDir
    layer: int  # where the residual is read and patched: L as trained, L + 1 under --original_eval
    first_position: int  # 1 where the tokenizer adds a BOS: it is neither averaged over nor patched
    patch: str  # delta or replace
    record: dict[str, Any]  # the LM's provenance

    def describe(self) -> dict[str, Any]:
        return {**self.record, "original_eval": self.cfg.original_eval, **self.pipeline.settings.record(),
                "patch": self.patch, "patch_layer": self.layer, "first_position": self.first_position,
                "inputs": {source.flag.lstrip("-"): source.record() for source in self.sources},
                "config": dataclasses.asdict(self.cfg), "git_commit": git_commit()}


@dataclass
class BehaviorInputs:
    """The checkpoints of a behavioral script, checked against each other, and how they are evaluated."""

    sources: list[StageInput]
    settings: EvalSettings
    sae: TopKSAE
    norm: NormStats
    nfm: NFM
    secondary: TopKSAE | None = None
    secondary_norm: NormStats | None = None


def read_behavior_inputs(cfg: BehaviorConfig, secondary: bool) -> BehaviorInputs:
    sae, norm, sae_source = load_sae(cfg.sae1_model_path)
    nfm, nfm_source = load_nfm(cfg.nfm_model_path)
    check_nfm_on_sae(nfm_source, sae, sae_source, norm)
    if cfg.original_eval:
        settings = original_settings(sae.k, pooling="sum")
    else:
        settings = trained_settings(nfm_source.config["sae_k"], nfm_source.config["top_n_features"])
    inputs = BehaviorInputs([sae_source, nfm_source], settings, sae, norm, nfm)
    if secondary:
        second, second_norm, second_source = load_secondary(cfg.interaction_sae_path)
        check_secondary_on(second_source, nfm_source, sae_source)
        if second.d_model != nfm.embed_dim:
            raise UserError(f"{second_source.what} decomposes {second.d_model}-wide vectors, but the NFM's interaction "
                            f"vectors are {nfm.embed_dim} wide")
        inputs.sources.append(second_source)
        inputs.secondary, inputs.secondary_norm = second, second_norm
    return inputs


def open_run(cfg: BehaviorConfig, secondary: bool = True, lm_dtype: torch.dtype | None = None,
             check_more: Callable[[list[StageInput]], None] | None = None) -> BehaviorRun:
    """Every check before anything is written (``check_more``: a script's own inputs, checked against the
    checkpoints before the LM is loaded), then the LM and the pipeline."""

    def read_inputs() -> BehaviorInputs:
        inputs = read_behavior_inputs(cfg, secondary)
        if check_more is not None:
            check_more(inputs.sources)
        return inputs

    opened, inputs = open_stage(cfg, read_inputs, lm_dtype)
    device = opened.rt.device
    pipeline = Pipeline(inputs.sae.to(device), inputs.norm.to(device), inputs.nfm.to(device), inputs.settings,
                        opened.rt.decode, None if inputs.secondary is None else inputs.secondary.to(device),
                        None if inputs.secondary_norm is None else inputs.secondary_norm.to(device))
    patch = cfg.patch if getattr(cfg, "patch", None) else ("replace" if cfg.original_eval else "delta")
    return BehaviorRun(cfg, opened.rt, opened.lm, pipeline, inputs.sources, opened.out, opened.patch_layer,
                       int(opened.lm.adds_bos), patch, opened.record)


def read_earlier(folder: str, flag: str, analysis: str, sources: list[StageInput]) -> dict[str, Any]:
    """An earlier behavioral script's ``results.json``, refused when it holds another analysis or was made with
    other checkpoints than ``sources`` (by the weights sha256 it recorded)."""
    results = read_results(folder, flag, analysis)
    for source in sources:
        recorded = results["inputs"].get(source.flag.lstrip("-"), {}).get("weights_sha256")
        if recorded != source.record()["weights_sha256"]:
            raise UserError(f"{flag} {folder} was made with another {source.what}")
    return results


def token_ids(run: BehaviorRun, text: str) -> Tensor:
    """(1, T) ids of one text as the model reads it (BOS first where the tokenizer adds one)."""
    return torch.tensor([run.lm.tokenizer(text)["input_ids"]], device=run.rt.device)


class TextMeans(NamedTuple):
    primary: Tensor  # (n texts, F): each text's mean primary code (inference K) over its real tokens
    secondary: Tensor | None  # (n texts, F2): the same for the secondary SAE's codes
    tokens: Tensor  # (n texts,) real tokens averaged over


def text_means(run: BehaviorRun, texts: list[str]) -> TextMeans:
    """One text per forward, unpadded, so every position is a real token; BOS left out of the mean."""
    primary, secondary, tokens = [], [], []
    pipe = run.pipeline
    for text in tqdm(texts, desc="stimuli", unit="text", leave=False, disable=len(texts) < 50):
        residual = capture_layer(run.lm.model, token_ids(run, text), run.layer)[0, run.first_position:]
        if residual.shape[0] == 0:
            raise UserError(f"the stimulus {text!r} has no token after BOS")
        out = pipe.run(residual.float())
        primary.append(scatter_codes(out.top_acts, out.top_indices, pipe.sae.num_features).mean(0))
        if out.secondary_acts is not None:
            secondary.append(scatter_codes(out.secondary_acts, out.secondary_indices,
                                           pipe.secondary.num_features).mean(0))
        tokens.append(residual.shape[0])
    return TextMeans(torch.stack(primary).cpu(), torch.stack(secondary).cpu() if secondary else None,
                     torch.tensor(tokens))


def last_position_logits(run: BehaviorRun, prompt: str, clamps: list[Clamp]) -> tuple[Tensor, Tensor]:
    """The clean model's logits at the prompt's last position (V,), and each clamp's (len(clamps), V), in fp32: the
    blocks before the patch layer run once, the later ones for the clamps in batches. The first clamp is the
    reference every other one is read against: it is repeated at the head of each batch, so that a row and its
    reference always pass through the same kernels and no batching noise enters their difference."""
    ids = token_ids(run, prompt)
    residual = capture_layer(run.lm.model, ids, run.layer)
    clean = run_from_layer(run.lm.model, residual, run.layer, ids)[0, -1].float()
    if not clamps:
        return clean, clean.new_zeros(0, clean.shape[0])
    reference, rest = clamps[0], clamps[1:]
    logits = [run_from_layer(run.lm.model, run.pipeline.patched(residual, reference, run.patch, run.first_position),
                             run.layer, ids)[0, -1].float()[None]]  # alone, as the clean pass: the identity check
    for start in range(0, len(rest), CLAMP_BATCH - 1):
        chunk = [reference, *rest[start : start + CLAMP_BATCH - 1]]
        patched = run.pipeline.patched(residual.expand(len(chunk), -1, -1), chunk, run.patch, run.first_position)
        batch = run_from_layer(run.lm.model, patched, run.layer, ids)[:, -1].float()
        logits.append(batch[1:] - batch[:1] + logits[0])  # each row's change, against the reference of its batch
    return clean, torch.cat(logits)


def greedy(run: BehaviorRun, prompt: str, clamps: list[Clamp | None], new_tokens: int) -> list[list[int]]:
    """Greedy continuations of the prompt, one per clamp (``None``: the clean model), all in one batch of equal
    lengths, with each row's clamp patched in at every step through the layer hook (so it reaches the model as
    generate runs it); as token ids."""
    ids = token_ids(run, prompt).expand(len(clamps), -1)
    per_row = [Clamp("none", 0, 0.0) if clamp is None else clamp for clamp in clamps]
    clean_rows = [b for b, clamp in enumerate(clamps) if clamp is None]

    def replace(hidden: Tensor) -> Tensor:
        first = run.first_position if hidden.shape[1] == ids.shape[1] else 0  # only the prompt's pass holds BOS
        patched = run.pipeline.patched(hidden, per_row, run.patch, first)
        patched[clean_rows] = hidden[clean_rows].float()  # the clean model's rows, whatever the patch
        return patched

    model = run.lm.model
    pad = run.lm.tokenizer.pad_token_id or run.lm.tokenizer.eos_token_id
    with torch.no_grad(), patch_layer(model, run.layer, replace):
        generated = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                   pad_token_id=pad, attention_mask=torch.ones_like(ids))
    return generated[:, ids.shape[1]:].tolist()


def finish(run: BehaviorRun, results: dict[str, Any], plot: Callable[[Path], None]) -> dict[str, Any]:
    """Plots, then ``results.json`` last, holding the folder's lock."""
    with run.out.writing(clear=run.cfg.overwrite):
        plot(run.out.path)
        write_results(run.out.path, results)
    return results


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


def attribution(run: BehaviorRun, texts: list[str], secondary: int, primaries: list[int]) -> list[dict[str, Any]]:
    """How much each primary feature feeds secondary feature ``secondary``: the mean drop of its code over the
    texts' tokens when that primary feature is taken out of the NFM's input (METHOD §10 decision 3), with the share
    of tokens where the primary feature was active at all."""
    change = {i: 0.0 for i in primaries}
    active = {i: 0 for i in primaries}
    tokens = 0
    for text in texts:
        residual = capture_layer(run.lm.model, token_ids(run, text), run.layer)[0, run.first_position:]
        out = run.pipeline.run(residual.float())
        base = (out.secondary_acts * (out.secondary_indices == secondary)).sum(-1)
        for i in primaries:
            change[i] += float((base - run.pipeline.secondary_code_without(out, i, secondary)).sum())
            active[i] += int((out.nfm_indices == i).any(-1).sum())
        tokens += residual.shape[0]
    rows = [{"primary": i, "mean_code_drop": change[i] / tokens, "active_share": active[i] / tokens} for i in primaries]
    return sorted(rows, key=lambda row: -abs(row["mean_code_drop"]))


Examples = dict[int, list[tuple[float, int, int]]]  # feature -> its largest codes as (code, window, position)


def top_examples(run: BehaviorRun, stream: ActivationStream, indices: list[int], features: list[int], examples: int,
                 batch_size: int) -> tuple[Examples, Tensor, dict[int, dict[str, float]]]:
    """Scan windows of a text (their activations from ``stream``, so from its cache where it has them): per feature
    its ``examples`` largest codes as (code, window, position), the token counts of the scanned real positions (for
    the labels' lift over corpus frequency), and each feature's mean code and active share over those positions."""
    text = stream.text
    vocab = len(run.lm.tokenizer)
    counts = torch.zeros(vocab, dtype=torch.float64)
    best: Examples = {f: [] for f in features}
    totals = {f: [0.0, 0] for f in features}
    wanted = torch.tensor(features, device=run.rt.device)
    for start in tqdm(range(0, len(indices), batch_size), desc="scan", unit="batch", leave=False):
        chunk = indices[start : start + batch_size]
        ids = torch.stack([text.get(i) for i in chunk])
        residual = stream.windows(chunk).to(run.rt.device)
        out = run.pipeline.run(residual.reshape(-1, residual.shape[-1]).float())
        hits = out.secondary_indices.unsqueeze(-1) == wanted  # (B·T, K2, n features)
        codes = (out.secondary_acts.unsqueeze(-1) * hits).sum(1).reshape(len(chunk), ids.shape[1], len(features))
        codes[:, : run.first_position] = 0  # BOS is no example
        counts += torch.bincount(ids[:, run.first_position:].flatten(), minlength=vocab).double()
        for j, feature in enumerate(features):
            feature_codes = codes[..., j]
            totals[feature][0] += float(feature_codes.sum())
            totals[feature][1] += int((feature_codes > 0).sum())
            values, flat = feature_codes.flatten().topk(min(examples, feature_codes.numel()))
            best[feature] += [(float(v), chunk[int(p) // ids.shape[1]], int(p) % ids.shape[1])
                              for v, p in zip(values, flat) if v > 0]
            best[feature] = sorted(best[feature], reverse=True)[:examples]
    positions = float(counts.sum())
    summary = {f: {"mean_code": totals[f][0] / positions, "active_share": totals[f][1] / positions} for f in features}
    return best, counts, summary
