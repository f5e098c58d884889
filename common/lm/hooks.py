"""Read and write the residual stream at layer L = ``hidden_states[L]`` = the output of block ``L-1`` (METHOD §0).

One definition serves capture and patching, on unpadded windows of equal length, so no attention mask is ever needed.
Capture and patching hook block ``L-1`` of any causal LM; running the later blocks alone needs to know where a family
keeps its blocks, final norm, head and position information (``common.lm.families``), and a family it does not
know runs the whole model with the patch hook instead (correct, slower).
"""
from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from common.errors import UserError
from common.lm.families import decoder_blocks, exact_family

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)


class _StopForward(Exception):
    """Raised from the hook on block L-1 so the blocks after it never run; carries that block's output."""

    def __init__(self, hidden: Tensor) -> None:
        super().__init__()
        self.hidden = hidden


def check_layer(model_or_blocks: PreTrainedModel | int, layer: int) -> None:
    """Refuse a layer outside 1..num_layers-1 (of a model, or of a block count): ``hidden_states[num_layers]`` is
    after the final norm in HF, not the residual stream."""
    n = model_or_blocks if isinstance(model_or_blocks, int) else model_or_blocks.config.num_hidden_layers
    if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= n - 1:
        raise UserError(f"layer must be an integer from 1 to {n - 1} for this {n}-block model, got {layer!r}")


def capture_layer(model: PreTrainedModel, input_ids: Tensor, layer: int) -> Tensor:
    """The layer-L residual (B, T, d), running only blocks 0..L-1."""
    return capture_layers(model, input_ids, (layer,))[layer]


def capture_layers(model: PreTrainedModel, input_ids: Tensor, layers: tuple[int, ...]) -> dict[int, Tensor]:
    """The residuals at several layers (each (B, T, d)) from one forward that stops after the deepest of them."""
    for layer in layers:
        check_layer(model, layer)
    captured: dict[int, Tensor] = {}

    def keep(layer: int) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            captured[layer] = _residual(output)
            if layer == max(layers):
                raise _StopForward(captured[layer])
        return hook

    blocks = decoder_blocks(model)
    handles = [blocks[layer - 1].register_forward_hook(keep(layer)) for layer in set(layers)]
    # no_grad, not inference_mode: inference tensors cannot be saved for backward, and SAEs train on these. The base
    # model, not the LM: the head never runs anyway.
    try:
        with torch.no_grad():
            model.base_model(input_ids=input_ids, use_cache=False)
    except _StopForward:
        return captured
    finally:
        for handle in handles:
            handle.remove()
    raise RuntimeError(f"block {max(layers) - 1} never ran during the forward pass")


def capture_layer_and_logits(model: PreTrainedModel, input_ids: Tensor, layer: int) -> tuple[Tensor, Tensor]:
    """One full forward: the layer-L residual (B, T, d) and the final logits (B, T, V)."""
    check_layer(model, layer)
    captured: list[Tensor] = []

    def keep(module: torch.nn.Module, args: Any, output: Any) -> None:
        captured.append(_residual(output))

    handle = decoder_blocks(model)[layer - 1].register_forward_hook(keep)
    try:
        with torch.no_grad():
            logits = model(input_ids=input_ids, use_cache=False).logits
    finally:
        handle.remove()
    return captured[0], logits


def run_from_layer(model: PreTrainedModel, hidden: Tensor, layer: int, input_ids: Tensor | None = None,
                   positions: Tensor | None = None) -> Tensor:
    """Logits (B, T, V) from a layer-L residual: blocks L.., final norm, LM head, in the model's dtype.

    ``positions`` (B, P), where given, are the only positions the final norm and the head run at (logits (B, P, V)):
    the blocks still run at every position, since each position attends to the earlier ones (``last_positions`` picks
    the last alone: (B, 1, V)). ``input_ids`` (B or 1, T) are read only by the fallback, a full forward with the
    residual patched in, for a family whose later blocks cannot run alone exactly; the blocks before L then run for
    nothing.
    """
    check_layer(model, layer)
    family = exact_family(model, hidden.shape[1])
    if family is None:
        logits = _full_forward_from(model, hidden, layer, input_ids)
        return logits if positions is None else at_positions(logits, positions)
    decoder = getattr(model, family.base)
    hidden = hidden.to(model.dtype)
    position_ids = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
    block_inputs: dict[str, Any] = {"attention_mask": _causal_mask(model, hidden), "position_ids": position_ids}
    with torch.no_grad():
        if family.rotary:
            block_inputs["position_embeddings"] = decoder.rotary_emb(hidden, position_ids)
        for block in getattr(decoder, family.blocks)[layer:]:
            hidden = _residual(block(hidden, **block_inputs))
        if positions is not None:  # the norm works position by position, so it may follow the selection
            hidden = at_positions(hidden, positions)
        return model.get_output_embeddings()(getattr(decoder, family.norm)(hidden))


def last_positions(hidden: Tensor) -> Tensor:
    """(B, 1): each row's last position of ``hidden`` (B, T, ...), for ``run_from_layer(positions=...)``."""
    return torch.full((hidden.shape[0], 1), hidden.shape[1] - 1, device=hidden.device)


def at_positions(values: Tensor, positions: Tensor) -> Tensor:
    """``values`` (B, T, ...) at each row's own ``positions`` (B, P): (B, P, ...)."""
    return values[torch.arange(values.shape[0], device=values.device).unsqueeze(1), positions]


def _full_forward_from(model: PreTrainedModel, hidden: Tensor, layer: int, input_ids: Tensor | None) -> Tensor:
    if input_ids is None:
        raise ValueError(f"{type(model).__name__} runs from a layer only through a full forward, which needs the "
                         "input ids")
    _log_fallback(type(model).__name__)
    if input_ids.shape[0] != hidden.shape[0]:
        input_ids = input_ids.expand(hidden.shape[0], -1)
    with patch_layer(model, layer, lambda _: hidden), torch.no_grad():
        return model(input_ids=input_ids, use_cache=False).logits


@functools.cache
def _log_fallback(model_class: str) -> None:
    """Once per model class and process: the fallback is correct but runs the blocks before the layer every time."""
    log.info("%s: the blocks after the patch layer cannot run alone exactly (an unknown family, sliding-window masks "
             "or soft-capping), so every patched pass is a full forward with the patch hook", model_class)


@contextlib.contextmanager
def patch_layer(model: PreTrainedModel, layer: int, replace: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """While active, every forward replaces the layer-L residual ``h`` by ``replace(h)`` (cast back to the model's
    dtype)."""
    check_layer(model, layer)

    def swap(module: torch.nn.Module, args: Any, output: Any) -> Any:
        hidden = _residual(output)
        patched = replace(hidden)
        if patched.shape != hidden.shape:
            raise ValueError(f"patch_layer: replace() returned shape {tuple(patched.shape)}, "
                             f"expected {tuple(hidden.shape)}")
        patched = patched.to(hidden.dtype)
        return (patched, *output[1:]) if isinstance(output, tuple) else patched

    # Ahead of other hooks, so observers (transformers 5's own output_hidden_states hooks, installed on first use)
    # see the patched residual whichever was registered first.
    handle = decoder_blocks(model)[layer - 1].register_forward_hook(swap, prepend=True)
    try:
        yield
    finally:
        handle.remove()


def _residual(output: Any) -> Tensor:
    # Llama blocks return a tensor in transformers 5; other families (and 4.x) return (hidden, ...) tuples.
    return output[0] if isinstance(output, tuple) else output


def _causal_mask(model: PreTrainedModel, hidden: Tensor) -> Tensor | None:
    """The mask the full forward would use for an unpadded batch.

    SDPA turns ``attention_mask=None`` into ``is_causal=True`` whenever T > 1 (read in transformers 5.17 and 5.24), and
    the full forward also passes None there, so both run the same kernel; flash attention is causal by itself. Eager
    attention adds its mask to the scores, so it needs the explicit upper-triangular -inf.
    """
    implementation = model.config._attn_implementation
    if implementation == "sdpa" or implementation.startswith("flash"):
        return None
    if implementation == "eager":
        length = hidden.shape[1]
        blocked = torch.full((length, length), torch.finfo(hidden.dtype).min, dtype=hidden.dtype, device=hidden.device)
        return blocked.triu(1)[None, None]
    raise UserError(f"run_from_layer supports sdpa, eager and flash attention, not {implementation!r}")
