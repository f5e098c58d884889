"""The original's way of evaluating the KL tests, frozen as ``bench_kl``'s baseline: it shares nothing with
``common.kl.evaluator`` (a change there cannot move it), only the conditions' reconstructions and the draw scheme
the two must agree on (one unit vector per token and draw, from a generator seeded by the window's index).

For every patch the whole model runs again with a forward hook on block L−1 that swaps the residual, and the patch's
full log-softmax gives its KL and CEs at every position 0..T−2. Llama-layout models only (``model.model.layers``).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

Reconstruct = Callable[[Tensor], dict[str, Tensor]]


@dataclass
class OriginalWay:
    model: Any  # a transformers causal LM of the Llama layout
    layer: int
    reconstruct: Reconstruct
    reference: str
    num_epsilon_samples: int = 3
    seed: int = 0

    def _forward(self, input_ids: Tensor, replace: Tensor | None) -> tuple[Tensor, Tensor]:
        """The whole model once: (the residual at the layer as it was, the logits) with ``replace`` swapped in."""
        seen: list[Tensor] = []

        def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
            hidden = output[0] if isinstance(output, tuple) else output
            seen.append(hidden)
            if replace is None:
                return None
            swapped = replace.to(hidden.dtype)
            return (swapped, *output[1:]) if isinstance(output, tuple) else swapped

        handle = self.model.model.layers[self.layer - 1].register_forward_hook(hook)
        try:
            with torch.no_grad():
                logits = self.model(input_ids=input_ids, use_cache=False).logits
        finally:
            handle.remove()
        return seen[0], logits

    def _patches(self, raw: Tensor, windows: list[int]) -> list[tuple[str, Tensor]]:
        batch, length, width = raw.shape
        recons = {name: recon.float().reshape(batch, length, width)
                  for name, recon in self.reconstruct(raw.reshape(-1, width)).items()}
        patches = list(recons.items())
        norms = {name: (recon - raw).norm(dim=-1, keepdim=True) for name, recon in recons.items()}
        generators = [torch.Generator(device=raw.device).manual_seed(self.seed * 1_000_003 + w) for w in windows]
        for _ in range(self.num_epsilon_samples):
            units = []
            for generator in generators:
                gaussian = torch.randn(raw.shape[1:], generator=generator, device=raw.device)
                units.append(gaussian / gaussian.norm(dim=-1, keepdim=True))
            unit = torch.stack(units)
            for name in recons:
                series = "eps_random" if name == self.reference else f"eps_own.{name}"
                patches.append((series, raw + norms[name] * unit))
        patches.append(("zero_ablation", torch.zeros_like(raw)))
        return patches

    def evaluate(self, input_ids: Tensor, windows: list[int]) -> dict[str, np.ndarray]:
        residual, clean_logits = self._forward(input_ids, None)
        raw = residual.float()
        clean = torch.log_softmax(clean_logits[:, :-1].float(), dim=-1)
        clean_probs = clean.exp()
        next_tokens, argmax = input_ids[:, 1:], clean.argmax(-1)
        columns: dict[str, list[Tensor]] = {
            "clean.ce_next": [-clean.gather(-1, next_tokens[..., None])[..., 0]], "clean.ce_argmax": [-clean.amax(-1)]}
        for series, patched in self._patches(raw, windows):
            if not series.startswith(("eps", "zero")):
                columns[f"{series}.error_norm"] = [(patched - raw).norm(dim=-1)[:, :-1]]
            _, logits = self._forward(input_ids, patched)
            log_q = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            values = {"kl": (clean_probs * (clean - log_q)).sum(-1),
                      "ce_next": -log_q.gather(-1, next_tokens[..., None])[..., 0],
                      "ce_argmax": -log_q.gather(-1, argmax[..., None])[..., 0]}
            for metric, value in values.items():
                columns.setdefault(f"{series}.{metric}", []).append(value)
        batch, positions = next_tokens.shape
        out = {"window": np.repeat(np.asarray(windows, dtype=np.int32), positions),
               "position": np.tile(np.arange(positions, dtype=np.int16), batch)}
        for name, values in columns.items():
            stacked = torch.stack(values, dim=-1) if name.startswith("eps") else values[0]
            out[name] = stacked.reshape(batch * positions, *stacked.shape[2:]).float().cpu().numpy()
        return out
