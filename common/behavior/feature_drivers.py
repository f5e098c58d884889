"""Which primary features drive each selected secondary feature (METHOD §10 decision 3, §15): part11's attribution
by ablation (the mean drop of a secondary code over the texts' tokens when one primary feature is taken out of the
NFM's input, all others kept) for several secondary features at once, every primary's ablation of a text in one
batch. ``common.behavior.run.attribution`` is the plain reference, one primary and one secondary feature per pass;
the tests hold this to it."""
from __future__ import annotations

from typing import Any

import torch

from common.behavior.feature_scan import codes_of
from common.behavior.run import BehaviorRun, token_ids
from common.lm.hooks import capture_layer


def drivers(run: BehaviorRun, texts: list[str], secondaries: list[int],
            primaries: list[int]) -> dict[int, list[dict[str, Any]]]:
    """Per secondary feature: every primary's mean code drop and active share, largest |drop| first."""
    pipe = run.pipeline
    drop = torch.zeros(len(primaries), len(secondaries), dtype=torch.float64)
    active = torch.zeros(len(primaries), dtype=torch.float64)
    tokens = 0
    removed_features = torch.tensor(primaries, device=run.rt.device).view(-1, 1, 1)
    for text in texts:
        residual = capture_layer(run.lm.model, token_ids(run, text), run.layer)[0, run.first_position:]
        out = pipe.run(residual.float())
        base = codes_of(out.secondary_acts, out.secondary_indices, secondaries)  # (T, S)
        rows, width = out.nfm_acts.shape
        removed = out.nfm_indices.unsqueeze(0) == removed_features  # (P, T, N): primary p's place in each row
        acts = torch.where(removed, torch.zeros_like(out.nfm_acts), out.nfm_acts).reshape(-1, width)
        indices = out.nfm_indices.expand(len(primaries), rows, width).reshape(-1, width)
        with torch.no_grad(), torch.autocast(residual.device.type, enabled=False):
            hidden = pipe.nfm.parts(acts, indices, pipe.decode, pipe.settings.pooling).hidden
            codes, code_indices = pipe.secondary.encode(pipe.secondary_norm.normalize(hidden))
        without = codes_of(codes, code_indices, secondaries).reshape(len(primaries), rows, len(secondaries))
        drop += (base.unsqueeze(0) - without).sum(1).double().cpu()
        active += removed.any(-1).sum(1).double().cpu()
        tokens += rows
    return {s: sorted(({"primary": p, "mean_code_drop": float(drop[i, j]) / tokens,
                        "active_share": float(active[i]) / tokens} for i, p in enumerate(primaries)),
                      key=lambda row: -abs(row["mean_code_drop"]))
            for j, s in enumerate(secondaries)}
