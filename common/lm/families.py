"""Where each decoder family keeps what running its later blocks alone needs (METHOD §12): the blocks, the final
norm and the position information (the LM head is every HF model's ``get_output_embeddings()``). One small record per
family; any other causal LM is handled by finding its block list and running it whole (``common.lm.hooks``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from common.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@dataclass(frozen=True)
class DecoderFamily:
    """Attribute names in the HF causal LM of these ``model_type``s."""

    model_types: tuple[str, ...]
    base: str  # the causal LM's decoder (its ``base_model``)
    blocks: str  # the decoder's block list
    norm: str  # the decoder's final norm (the unembedding is the model's own get_output_embeddings())
    rotary: bool  # True: every block takes the rotary (cos, sin); False: absolute positions are already in the residual


FAMILIES = (
    DecoderFamily(("llama", "mistral", "qwen2", "qwen3"), "model", "layers", "norm", rotary=True),
    DecoderFamily(("gpt2",), "transformer", "h", "ln_f", rotary=False),
    DecoderFamily(("gpt_neox",), "gpt_neox", "layers", "final_layer_norm", rotary=True),
)
_BY_TYPE = {model_type: family for family in FAMILIES for model_type in family.model_types}


def family_of(model: PreTrainedModel) -> DecoderFamily | None:
    return _BY_TYPE.get(model.config.model_type)


def exact_family(model: PreTrainedModel, length: int) -> DecoderFamily | None:
    """The family record when its blocks, run alone on an unpadded window of ``length`` tokens with no mask, compute
    what the full forward does; ``None`` otherwise.

    A sliding window shorter than the window changes the mask (Mistral applies its window to every layer, Qwen2/3 to
    the layers ``layer_types`` marks); logit or attention soft-capping lives outside the adapter's reach.
    """
    family = family_of(model)
    if family is None:
        return None
    config = model.config
    window = getattr(config, "sliding_window", None)
    sliding = "sliding_attention" in (getattr(config, "layer_types", None) or ()) or config.model_type == "mistral"
    if sliding and window is not None and length > window:
        return None
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "attn_logit_softcapping", None):
        return None
    return family


def decoder_blocks(model: PreTrainedModel) -> nn.ModuleList:
    """The model's decoder blocks in order: the family's own list, or else the one module list as long as the
    config's layer count."""
    family = family_of(model)
    if family is not None:
        return getattr(getattr(model, family.base), family.blocks)
    n = model.config.num_hidden_layers
    for module in model.modules():  # pre-order, so an outer list of n blocks is met before any list inside a block
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise UserError(f"cannot find the {n} decoder blocks of {type(model).__name__}: no module list of that length")
