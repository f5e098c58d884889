"""The one pipeline of the behavioral scripts (METHOD §10): a layer-L residual through the stage-1 SAE, the NFM and the
secondary SAE, every intermediate returned by name, and the clamp patch that changes one feature and nothing else.

As trained (the default, METHOD §10 decision 3): z-scored input, the SAE at the inference K and top-N the NFM
checkpoint records, the bi-interaction, the patch at ``hidden_states[L]``. ``--original_eval``: raw activations, the
SAE's trained K, every code into the NFM, the plain sum Σ f_i v_i, the patch one block later (``EvalSettings``, as
part14's). The clamp (decision 4): ``delta`` adds to the residual only what the clamp changes in the pipeline's
output, so a multiplier of 1 is the clean model bit for bit and the SAE and NFM errors are kept; ``replace`` (the
original's) puts the whole pipeline output with the clamp in place of the residual.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, get_args

import torch
from torch import Tensor

from common.config.modes import ClampMode, Patch, Pathway
from common.data.activations import NormStats
from common.models.codes import select_top_n
from common.models.nfm import NFM
from common.models.sae import TopKSAE
from common.models.settings import EvalSettings

PATCHES, PATHWAYS, CLAMP_MODES = get_args(Patch), get_args(Pathway), get_args(ClampMode)


class PipelineOutput(NamedTuple):
    """Per row (N rows): every step from the residual to the reconstruction, in the space the models work in
    (normalized as trained, raw under --original_eval), except ``reconstruction``, which is in raw space."""

    x: Tensor  # (N, d): the SAE's input
    top_acts: Tensor  # (N, K): primary codes at the inference K
    top_indices: Tensor  # (N, K)
    nfm_acts: Tensor  # (N, top-N): the codes the NFM is fed
    nfm_indices: Tensor  # (N, top-N)
    sae_recon: Tensor  # (N, d)
    linear: Tensor  # (N, d): the NFM's linear output
    h: Tensor  # (N, k): the bi-interaction (or the plain sum)
    hidden: Tensor  # (N, k): Linear1(h) before the ReLU
    secondary_input: Tensor | None  # (N, k): hidden z-scored with the secondary SAE's stats
    secondary_acts: Tensor | None  # (N, K2)
    secondary_indices: Tensor | None  # (N, K2)
    interaction: Tensor  # (N, d): the NFM's interaction output
    reconstruction: Tensor  # (N, d) raw: de-normalized sae_recon + linear + interaction


@dataclass(frozen=True)
class Clamp:
    """Scale (``multiply``) or set (``set``) the code of ``feature`` on ``pathway``: a secondary feature of the
    interaction pathway, or a primary feature's linear-term contribution (the linear control). Pathway
    ``direction``: no feature, but ``value`` times the unit ``vector`` (d, raw activation space) added at every
    patched position to what the unclamped ``base`` pathway gives (the random-direction null, METHOD §10 decision 8):
    the residual itself under --patch delta, the pipeline's output through that pathway under --patch replace."""

    pathway: str
    feature: int
    value: float
    mode: str = "multiply"
    vector: Tensor | None = field(default=None, compare=False, repr=False)
    base: str = "secondary"

    def code_change(self, code: Tensor) -> Tensor:
        """(N,) how much the clamp moves the code: (m − 1)·c when multiplying by m, v − c when setting it to v."""
        return (self.value - 1) * code if self.mode == "multiply" else self.value - code


class Pipeline:
    """The three models run on raw residual rows (N, d), as ``settings`` says; all on one device, in fp32."""

    def __init__(self, sae: TopKSAE, norm: NormStats, nfm: NFM, settings: EvalSettings, decode: str,
                 secondary: TopKSAE | None = None, secondary_norm: NormStats | None = None) -> None:
        self.sae, self.nfm, self.settings, self.decode = sae.eval(), nfm.eval(), settings, decode
        self.norm, self.secondary, self.secondary_norm = norm, secondary, secondary_norm
        if secondary is not None:
            secondary.eval()

    def to_raw(self, recon: Tensor) -> Tensor:
        return self.norm.denormalize(recon) if self.settings.normalize else recon.float()

    def raw_scale(self) -> Tensor | float:
        """What a change in the models' space is multiplied by in raw space: σ as trained, 1 on raw activations."""
        return self.norm.std if self.settings.normalize else 1.0

    def run(self, raw: Tensor) -> PipelineOutput:
        with torch.no_grad(), torch.autocast(raw.device.type, enabled=False):
            x = self.norm.normalize(raw) if self.settings.normalize else raw.float()
            top_acts, top_indices = self.sae.encode(x, self.settings.k)
            sae_recon = self.sae.decode(top_acts, top_indices, self.decode).float()
            nfm_acts, nfm_indices = select_top_n(top_acts, top_indices, self.settings.top_n)
            parts = self.nfm.parts(nfm_acts, nfm_indices, self.decode, self.settings.pooling)
            secondary_input = secondary_acts = secondary_indices = None
            if self.secondary is not None:
                secondary_input = self.secondary_norm.normalize(parts.hidden)
                secondary_acts, secondary_indices = self.secondary.encode(secondary_input)
            reconstruction = self.to_raw(sae_recon + parts.linear + parts.interaction)
        return PipelineOutput(x, top_acts, top_indices, nfm_acts, nfm_indices, sae_recon, parts.linear, parts.h,
                              parts.hidden, secondary_input, secondary_acts, secondary_indices, parts.interaction,
                              reconstruction)

    def secondary_code_without(self, out: PipelineOutput, primary: int, secondary: int) -> Tensor:
        """(N,) the code of secondary feature ``secondary`` with primary feature ``primary`` taken out of the NFM's
        input (all active features but that one): the attribution of METHOD §10 decision 3. One feature alone would
        not do: its bi-interaction with nothing is 0."""
        with torch.no_grad(), torch.autocast(out.x.device.type, enabled=False):
            acts = torch.where(out.nfm_indices == primary, torch.zeros_like(out.nfm_acts), out.nfm_acts)
            hidden = self.nfm.parts(acts, out.nfm_indices, self.decode, self.settings.pooling).hidden
            codes, indices = self.secondary.encode(self.secondary_norm.normalize(hidden))
            return (codes * (indices == secondary)).sum(-1)

    def output_change(self, out: PipelineOutput, clamp: Clamp, patch: str) -> Tensor:
        """(N, d) in the models' space: with ``delta``, what the clamp changes in the pipeline's output; with
        ``replace``, the whole clamped output (the secondary pathway then runs through the secondary SAE's
        reconstruction, as the original did)."""
        with torch.no_grad(), torch.autocast(out.x.device.type, enabled=False):
            if clamp.pathway == "linear":
                # The linear term is Σ_i f_i W_lin[i] + b: only feature i's term changes, by (new − f_i)·W_lin[i].
                change = self._code_change(out.nfm_acts, out.nfm_indices, clamp) * self.nfm.linear_weight[clamp.feature]
                return change if patch == "delta" else out.sae_recon + out.linear + change + out.interaction
            if clamp.pathway == "none":
                return torch.zeros_like(out.x) if patch == "delta" else out.sae_recon + out.linear + out.interaction
            if clamp.pathway == "direction":  # raw space → the models' space, where ``patched`` scales by σ again
                shift = (clamp.value * clamp.vector.to(out.x) / self.raw_scale()).expand_as(out.x)
                return shift if patch == "delta" else self.output_change(out, Clamp(clamp.base, 0, 1.0), patch) + shift
            hidden = self._clamped_hidden(out, clamp, patch)
            interaction = self.nfm.readout(hidden)
            if patch == "delta":
                return interaction - out.interaction
            return out.sae_recon + out.linear + interaction

    def _clamped_hidden(self, out: PipelineOutput, clamp: Clamp, patch: str) -> Tensor:
        if self.secondary is None:
            raise ValueError("clamping a secondary feature needs the secondary SAE")
        # The secondary decode is linear: changing code j by Δ moves the reconstruction by Δ·W_dec2[j] (a set code
        # reaches a feature that was not active too).
        step = self._code_change(out.secondary_acts, out.secondary_indices, clamp) * self.secondary.W_dec[clamp.feature]
        if patch == "delta":  # moved from the true hidden vector, so the secondary SAE's own error stays in
            return out.hidden + step * self.secondary_norm.std
        recon = self.secondary.decode(out.secondary_acts, out.secondary_indices, self.decode)
        return self.secondary_norm.denormalize(recon + step)

    @staticmethod
    def _code_change(acts: Tensor, indices: Tensor, clamp: Clamp) -> Tensor:
        """(N, 1) the change of the clamped feature's code in each row (its code is 0 where it is not active)."""
        code = (acts * (indices == clamp.feature)).sum(-1)
        return clamp.code_change(code).unsqueeze(-1)

    def patched(self, raw: Tensor, clamps: Clamp | list[Clamp], patch: str, first_position: int = 0) -> Tensor:
        """The residual (B, T, d) with a clamp applied at every position from ``first_position`` on (BOS, where the
        tokenizer adds one, is left alone): one clamp for every row, or a list with one clamp per row (a batch of
        generations, each under its own clamp)."""
        batch, length, width = raw.shape
        per_row = clamps if isinstance(clamps, list) else [clamps] * batch
        if len(per_row) != batch:
            raise ValueError(f"{len(per_row)} clamps for a batch of {batch}")
        if raw.stride(0) == 0:  # one residual expanded to every row (a prompt under many clamps): run it once
            out = self.run(raw[0].float())
            change = torch.stack([self.output_change(out, clamp, patch) for clamp in per_row])
        else:
            out = self.run(raw.reshape(-1, width).float())
            change = torch.cat([self.output_change(_rows(out, b * length, (b + 1) * length), clamp, patch)
                                for b, clamp in enumerate(per_row)]).reshape(batch, length, width)
        if patch == "delta":
            new = raw.float() + change * self.raw_scale()
        else:
            new = self.to_raw(change.reshape(-1, width)).reshape(batch, length, width)
        new[:, :first_position] = raw[:, :first_position].float()
        return new


def _rows(out: PipelineOutput, start: int, stop: int) -> PipelineOutput:
    """The same intermediates for rows [start, stop) only."""
    return PipelineOutput(*(None if t is None else t[start:stop] for t in out))
