"""The tokens a primary feature's decoder direction promotes and suppresses (METHOD §15): the direction in the
residual's own units (decoder rows live in z-scored units, so each is multiplied by the stage's σ where the pipeline
z-scores), scaled by the final norm's weight as the logit lens does, through the unembedding."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from common.behavior.feature_scan import token_text
from common.behavior.run import BehaviorRun
from common.lm.families import family_of

LENS_TOKENS = 10  # tokens shown at each end


def final_norm_weight(model: Any) -> Tensor | None:
    """The decoder's final norm's weight, or None for a family this project has no record of."""
    family = family_of(model)
    if family is None:
        return None
    return getattr(getattr(getattr(model, family.base), family.norm), "weight", None)


def lens_logits(run: BehaviorRun, features: list[int]) -> tuple[Tensor, bool]:
    """(len(features), vocabulary) logits of the features' decoder directions, and whether the final norm's weight
    was applied."""
    model = run.lm.model
    directions = run.pipeline.sae.W_dec.detach()[features].float()
    if run.pipeline.settings.normalize:
        directions = directions * run.pipeline.norm.std.float()
    weight = final_norm_weight(model)
    if weight is not None:
        directions = directions * weight.detach().float().to(directions.device)
    unembedding = model.get_output_embeddings().weight.detach().float()[: len(run.lm.tokenizer)]
    with torch.no_grad():
        return directions.to(unembedding.device) @ unembedding.T, weight is not None


def logit_lens(run: BehaviorRun, features: list[int], tokens: int = LENS_TOKENS) -> dict[int, dict[str, Any]]:
    """Per feature: its top and bottom tokens through the unembedding, with their logits."""
    if not features:
        return {}
    logits, with_norm = lens_logits(run, features)
    tokenizer = run.lm.tokenizer
    out = {}
    for row, feature in enumerate(features):
        ends = {}
        for end, largest in (("top", True), ("bottom", False)):
            values, ids = logits[row].topk(min(tokens, logits.shape[1]), largest=largest)
            ends[end] = [{"token": token_text(tokenizer, i), "token_id": i, "logit": v}
                         for v, i in zip(values.tolist(), ids.tolist())]
        out[feature] = {**ends, "final_norm_weight": with_norm, "sigma_scaled": run.pipeline.settings.normalize}
    return out
