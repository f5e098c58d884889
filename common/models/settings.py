"""How the chain of models runs on a layer's residual (METHOD §4, §10): as trained (z-scored input, the inference K
and top-N the NFM trained with, the bi-interaction, the patch at the capture layer) or as the original evaluated
(raw activations, the SAE's trained K, every code into the NFM, the patch one block later). The KL tests and the
behavioral pipeline both read it."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class EvalSettings:
    """How the SAE and NFM are run on the residual: ``normalize`` (z-score in, de-normalize out), the SAE's ``k``, the
    NFM's ``top_n`` (None: all k codes), the interaction ``pooling`` ("bi" or the original's "sum"), and
    ``layer_offset`` (0, or 1 for the original's patch one block after the capture point)."""

    normalize: bool
    k: int
    top_n: int | None
    pooling: str
    layer_offset: int

    def record(self) -> dict[str, Any]:
        return asdict(self)


def trained_settings(k: int, top_n: int | None) -> EvalSettings:
    return EvalSettings(normalize=True, k=k, top_n=top_n, pooling="bi", layer_offset=0)


def original_settings(trained_k: int, pooling: str) -> EvalSettings:
    return EvalSettings(normalize=False, k=trained_k, top_n=None, pooling=pooling, layer_offset=1)
