"""The controls' changes to a model (METHOD §14): an NFM whose interaction pathway is removed."""
from __future__ import annotations

import torch

from common.models.nfm import NFM


def remove_interaction(nfm: NFM) -> NFM:
    """Zero the interaction pathway's output layer and freeze every interaction parameter (the embeddings and the
    MLP), so that its output is exactly 0 and it takes no gradient: the optimizer sees only the linear pathway. The
    model keeps its shape, so it saves, loads and evaluates wherever an NFM does."""
    with torch.no_grad():
        nfm.mlp[3].weight.zero_()
        nfm.mlp[3].bias.zero_()
    for parameter in (nfm.embeddings, *nfm.mlp.parameters()):
        parameter.requires_grad_(False)
    return nfm
