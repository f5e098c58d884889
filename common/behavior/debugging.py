"""part13's debugging tools (METHOD §10; the original's part13b, 13c and 13d): the clean model's greedy generations for
the prompt sets, the same with the primary SAE's reconstruction spliced in at the layer and what that splice costs
against the clean model (KL and top-1 agreement per prompt), and a checkpoint's SAE on held-out text (L0, dead,
most frequent and strongest features, reconstruction error by position)."""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from common.behavior.stimuli import load_stimuli
from common.data.activations import ActivationStream, NormStats
from common.lm.hooks import patch_layer
from common.lm.model import LoadedLM
from common.models.sae import TopKSAE

Splice = Callable[[Tensor], Tensor]  # the layer's residual (B, T, d) → what replaces it


def prompt_sets(stimuli: str | None) -> dict[str, list[str]]:
    """The prompt sets of the stimulus file: each design's prompts (the powered one's and the paper's)."""
    return {name: design.prompts for name, design in load_stimuli(stimuli).designs("design").items()}


def prompt_ids(lm: LoadedLM, prompt: str) -> Tensor:
    """(1, T) ids of a prompt as the model reads it (BOS first where its tokenizer adds one)."""
    return torch.tensor([lm.tokenizer(prompt)["input_ids"]], device=lm.device)


def sae_splice(sae: TopKSAE, norm: NormStats, decode: str, first_position: int, prompt_length: int) -> Splice:
    """The residual replaced by the SAE's de-normalized reconstruction at every position, BOS left alone where the
    tokenizer adds one (the original's splice: a delta patch with no clamp would change nothing)."""

    def splice(hidden: Tensor) -> Tensor:
        with torch.no_grad(), torch.autocast(hidden.device.type, enabled=False):
            x = norm.normalize(hidden.float())
            recon = norm.denormalize(sae.decode(*sae.encode(x.reshape(-1, x.shape[-1])), decode)).reshape(x.shape)
        first = first_position if hidden.shape[1] == prompt_length else 0  # only the prompt's pass holds BOS
        recon[:, :first] = hidden[:, :first].float()
        return recon

    return splice


def generate(lm: LoadedLM, ids: Tensor, tokens: int, layer: int, splice: Splice | None = None) -> list[int]:
    """The greedy continuation of ``ids`` (1, T), ``tokens`` long, with ``splice`` at the layer on every forward
    (the prompt's and each new token's) where given."""
    model = lm.model
    pad = lm.tokenizer.pad_token_id or lm.tokenizer.eos_token_id
    with torch.no_grad(), (patch_layer(model, layer, splice) if splice else contextlib.nullcontext()):
        generated = model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                                   pad_token_id=pad, attention_mask=torch.ones_like(ids))
    return generated[0, ids.shape[1]:].tolist()


def splice_cost(lm: LoadedLM, ids: Tensor, layer: int, splice: Splice, first_position: int) -> dict[str, float]:
    """KL(clean ‖ spliced) of the next-token distributions, mean over the positions of ``ids`` (1, T) after BOS, and
    the share of those positions where the two models' top token agrees; both on the same tokens (teacher forced)."""
    with torch.no_grad():
        clean = torch.log_softmax(lm.model(ids).logits[0, first_position:].float(), dim=-1)
        with patch_layer(lm.model, layer, splice):
            spliced = torch.log_softmax(lm.model(ids).logits[0, first_position:].float(), dim=-1)
    kl = (clean.exp() * (clean - spliced)).sum(-1)
    return {"kl": float(kl.mean()), "kl_max": float(kl.max()),
            "top1_agreement": float((clean.argmax(-1) == spliced.argmax(-1)).float().mean()),
            "positions": int(kl.numel())}


class FeatureTally:
    """Running per-feature and per-position sums of an SAE over held-out rows (normalized space)."""

    def __init__(self, num_features: int, window: int) -> None:
        self.fired = torch.zeros(num_features, dtype=torch.float64)
        self.act_sum = torch.zeros(num_features, dtype=torch.float64)
        self.act_max = torch.zeros(num_features, dtype=torch.float64)
        self.error = torch.zeros(window, dtype=torch.float64)  # Σ over windows of the row's squared error
        self.energy = torch.zeros(window, dtype=torch.float64)  # Σ over windows of the row's squared norm
        self.count = torch.zeros(window, dtype=torch.float64)
        self.l0_sum, self.rows = 0.0, 0

    def add(self, x: Tensor, acts: Tensor, indices: Tensor, recon: Tensor, first_position: int) -> None:
        """One batch of windows: ``x`` and ``recon`` (B, T, d), the codes (B, T, K)."""
        live = acts[:, first_position:] > 0
        idx, values = indices[:, first_position:][live].cpu(), acts[:, first_position:][live].double().cpu()
        self.fired += torch.bincount(idx, minlength=self.fired.numel()).double()
        self.act_sum += torch.bincount(idx, weights=values, minlength=self.fired.numel())
        self.act_max.scatter_reduce_(0, idx, values, reduce="amax")
        self.l0_sum += float(live.sum())
        self.rows += int(live.shape[0] * live.shape[1])
        span = slice(first_position, x.shape[1])
        self.error[span] += ((x - recon)[:, span].double() ** 2).sum(-1).sum(0).cpu()
        self.energy[span] += (x[:, span].double() ** 2).sum(-1).sum(0).cpu()
        self.count[span] += x.shape[0]


def feature_statistics(sae: TopKSAE, norm: NormStats, stream: ActivationStream, indices: list[int], k: int,
                       first_position: int, decode: str, batch_size: int) -> FeatureTally:
    """The SAE at ``k`` over the given windows of ``stream``, BOS left out where the tokenizer adds one."""
    tally = FeatureTally(sae.num_features, stream.text.window)
    for start in tqdm(range(0, len(indices), batch_size), desc="windows", unit="batch", leave=False):
        raw = stream.windows(indices[start : start + batch_size]).to(sae.W_dec.device).float()
        with torch.no_grad():
            x = norm.normalize(raw)
            flat = x.reshape(-1, x.shape[-1])
            acts, idx = sae.encode(flat, k)
            recon = sae.decode(acts, idx, decode)
        shape = (*x.shape[:2], -1)
        tally.add(x, acts.reshape(shape), idx.reshape(shape), recon.reshape(x.shape), first_position)
    return tally


def summarize_features(tally: FeatureTally, top_n: int) -> dict[str, Any]:
    """L0, dead features, the most frequent and the strongest features, and the reconstruction error by position (in
    the SAE's normalized space: the mean squared error of a row, and the share of the rows' squared norm, i.e. of
    their variance about the training mean, left unexplained)."""
    share = (tally.fired / max(1, tally.rows)).numpy()
    mean_active = (tally.act_sum / tally.fired.clamp(min=1)).numpy()
    strongest = np.argsort(-tally.act_max.numpy(), kind="stable")[:top_n]
    frequent = np.argsort(-share, kind="stable")[:top_n]
    seen = tally.count > 0

    def row(i: int) -> dict[str, Any]:
        return {"feature": int(i), "firing_fraction": float(share[i]), "mean_when_active": float(mean_active[i]),
                "max": float(tally.act_max[i])}

    return {"rows": tally.rows, "l0_mean": tally.l0_sum / max(1, tally.rows),
            "dead": {"count": int((tally.fired == 0).sum()), "fraction": float((tally.fired == 0).double().mean()),
                     "rule": "never active on the held-out rows"},
            "most_frequent": [row(i) for i in frequent], "strongest": [row(i) for i in strongest],
            "unexplained_share": float(tally.error.sum() / tally.energy.sum()),
            "error_by_position": {"positions": torch.nonzero(seen).flatten().tolist(),
                                  "squared_error": (tally.error[seen] / tally.count[seen]).tolist(),
                                  "unexplained_share": (tally.error[seen] / tally.energy[seen]).tolist()}}
