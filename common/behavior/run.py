"""A behavioral script's run (METHOD §10): the LM and the pipeline as the script opened them, and what the scripts
ask of them: the token ids of a text, per-text mean codes, prompt logits under clamps, greedy generations, and which
primary features feed a secondary one."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from common.behavior.pipeline import Clamp, Pipeline
from common.config.concepts import BehaviorConfig
from common.errors import UserError
from common.lm.hooks import capture_layer, last_positions, patch_layer, run_from_layer
from common.lm.model import LoadedLM
from common.models.codes import scatter_codes
from common.models.loading import (
    StageInput,
)
from common.runtime.context import Runtime
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


class PromptLogits(NamedTuple):
    clean: Tensor  # (V,) the clean model's logits at the prompt's last position
    patched: Tensor  # (len(clamps), V) each clamp's
    noise: Tensor | None  # (V,) the reference in a batch minus the reference alone: floating-point order only


def last_position_logits(run: BehaviorRun, prompt: str, clamps: list[Clamp]) -> PromptLogits:
    """The clean model's logits at the prompt's last position (V,), and each clamp's (len(clamps), V), in fp32: the
    blocks before the patch layer run once, the later ones for the clamps in batches. The first clamp is the
    reference every other one is read against: it is repeated at the head of each batch, so that a row and its
    reference always pass through the same kernels and no batching noise enters their difference. The reference's
    first batched row against its pass alone is the same computation in another floating-point order: ``noise``
    (None where no clamp follows the reference)."""
    ids = token_ids(run, prompt)
    residual = capture_layer(run.lm.model, ids, run.layer)

    def last_logits(hidden: Tensor) -> Tensor:  # (B, V) fp32
        return run_from_layer(run.lm.model, hidden, run.layer, ids, positions=last_positions(hidden))[:, -1].float()

    clean = last_logits(residual)[0]
    if not clamps:
        return PromptLogits(clean, clean.new_zeros(0, clean.shape[0]), None)
    reference, rest = clamps[0], clamps[1:]
    logits = [last_logits(run.pipeline.patched(residual, reference, run.patch, run.first_position))]  # alone, as clean
    noise = None
    for start in range(0, len(rest), CLAMP_BATCH - 1):
        chunk = [reference, *rest[start : start + CLAMP_BATCH - 1]]
        patched = run.pipeline.patched(residual.expand(len(chunk), -1, -1), chunk, run.patch, run.first_position)
        batch = last_logits(patched)
        logits.append(batch[1:] - batch[:1] + logits[0])  # each row's change, against the reference of its batch
        noise = batch[0] - logits[0][0] if noise is None else noise
    return PromptLogits(clean, torch.cat(logits), noise)


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
