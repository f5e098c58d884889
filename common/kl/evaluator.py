"""The KL / cross-entropy patching evaluator of METHOD §4 and §8, shared by part14 and part18.

For a batch of unpadded windows: run the blocks before the patch layer once and keep that residual, get the clean
logits from the later blocks, then for every patch replace the residual and run only the later blocks again. A patch
is a condition's reconstruction or an ε-random perturbation ``x + ‖x̂ − x‖·u`` (u a fresh random unit vector per
token); both live in raw activation space, where the LM reads them. ``shared_prefix=False`` is the original's way
(one whole forward with a patch hook per patch), kept as the reference the tests and the benchmark compare against.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from common.data.text import WindowedText
from common.lm.hooks import capture_layer, capture_layer_and_logits, patch_layer, run_from_layer
from common.runtime.distributed import ONE, World
from common.store.savers import atomic_save_npz

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# Raw residual rows (N, d) fp32 -> each condition's reconstruction in raw space (N, d), in a fixed order.
Reconstruct = Callable[[Tensor], dict[str, Tensor]]

EPS_RANDOM = "eps_random"  # the ε-random baseline at the reference condition's error norm
EPS_OWN = "eps_own"  # prefix of the second baseline: ε-random at each condition's own error norm
METRICS = ("kl", "ce_next", "ce_argmax")


def random_unit_vectors(shape: torch.Size, generator: torch.Generator) -> Tensor:
    """Independent uniformly random unit vectors along the last axis (a normalized Gaussian), fp32."""
    gaussian = torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)
    return gaussian / gaussian.norm(dim=-1, keepdim=True)


def epsilon_perturb(raw: Tensor, error_norm: Tensor, unit: Tensor) -> Tensor:
    """``raw + error_norm·unit``: a random error of the given norm per token (raw (..., d), error_norm (...))."""
    return raw + error_norm.unsqueeze(-1) * unit


def next_token_metrics(clean_logprobs: Tensor, patched_logits: Tensor, next_tokens: Tensor, clean_argmax: Tensor,
                       clean_probs: Tensor | None = None) -> dict[str, Tensor]:
    """Per position (B, P), from exact fp32 log-softmax over the whole vocabulary.

    ``kl`` = KL(P_clean ‖ P_patched); ``ce_next`` = −log P_patched(actual next token); ``ce_argmax`` = −log
    P_patched(the clean model's argmax). ``clean_logprobs`` (B, P, V) are already log-softmaxed; ``clean_probs``,
    their exp, may be passed in to compute it once per batch rather than once per patch.
    """
    logprobs = torch.log_softmax(patched_logits.float(), dim=-1)
    clean_probs = clean_logprobs.exp() if clean_probs is None else clean_probs
    ce_next = -logprobs.gather(-1, next_tokens.unsqueeze(-1)).squeeze(-1)
    ce_argmax = -logprobs.gather(-1, clean_argmax.unsqueeze(-1)).squeeze(-1)
    # Σ p·(log p − log q) term by term, so identical distributions give exactly 0. The difference is formed in the
    # log-probabilities' own buffer ((−log q) + log p is log p − log q to the bit): one (B, P, V) buffer fewer per
    # patch, 200 MB at the cpu preset's batch, whose page faults cost more than the arithmetic.
    kl = torch.einsum("bpv,bpv->bp", clean_probs, logprobs.neg_().add_(clean_logprobs))
    return {"kl": kl, "ce_next": ce_next, "ce_argmax": ce_argmax}


@dataclass
class PatchingEvaluator:
    """Every patch of one batch and its next-token metrics.

    ``layer`` is where the residual is read and patched (L; L+1 for the original's evaluation). ``reference`` names
    the condition whose error norm sets the ε-random baseline (the SAE, or the joint model's SAE part); reductions are
    against it too. ``first_position`` 1 leaves position 0 (BOS) unpatched and out of the statistics.
    """

    model: PreTrainedModel
    layer: int
    reconstruct: Reconstruct
    reference: str
    num_epsilon_samples: int = 3
    seed: int = 0
    first_position: int = 0
    shared_prefix: bool = True

    def reconstructions(self, raw: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Each condition's patched residual (B, T, d) and its raw-space error norm per token (B, T)."""
        batch, length, width = raw.shape
        recons = self.reconstruct(raw.reshape(-1, width))
        if self.reference not in recons:
            raise ValueError(f"reference condition {self.reference!r} not among {list(recons)}")
        patched, error_norms = {}, {}
        for name, recon in recons.items():
            recon = recon.float().reshape(batch, length, width)
            if self.first_position:
                recon = torch.cat([raw[:, : self.first_position], recon[:, self.first_position :]], dim=1)
            patched[name] = recon
            error_norms[name] = (recon - raw).norm(dim=-1)
        return patched, error_norms

    def patches(self, raw: Tensor, error_norms: dict[str, Tensor],
                window_indices: list[int]) -> Iterator[tuple[str, Tensor]]:
        """The ε-random patches, draw by draw: ``(series, patched residual)``.

        One unit vector per token and draw serves every condition's own-norm baseline (only the norm differs), so
        the reference condition's own-norm baseline *is* the main ε-random baseline and is not run twice. Each
        window's directions come from its own generator, seeded by its index in the text: the same draws whatever
        the batch size, and again after a resume.
        """
        generators = [torch.Generator(device=raw.device).manual_seed(self.seed * 1_000_003 + w) for w in window_indices]
        for _ in range(self.num_epsilon_samples):
            unit = torch.stack([random_unit_vectors(raw.shape[1:], generator) for generator in generators])
            for name, error_norm in error_norms.items():
                series = EPS_RANDOM if name == self.reference else f"{EPS_OWN}.{name}"
                yield series, epsilon_perturb(raw, error_norm, unit)

    def evaluate(self, input_ids: Tensor, window_indices: list[int]) -> dict[str, np.ndarray]:
        """Per-position columns for one batch of windows (rows = window × position, positions first_position..T−2).

        ``window``, ``position``; ``clean.ce_next`` / ``clean.ce_argmax``; per condition ``<name>.kl``, ``.ce_next``,
        ``.ce_argmax``, ``.error_norm``; ε series (rows, draws): ``eps_random.<metric>`` and
        ``eps_own.<name>.<metric>`` for every condition but the reference.
        """
        if self.shared_prefix:
            residual = capture_layer(self.model, input_ids, self.layer)
            clean_logits = run_from_layer(self.model, residual, self.layer, input_ids)
        else:
            residual, clean_logits = capture_layer_and_logits(self.model, input_ids, self.layer)
        kept = slice(self.first_position, input_ids.shape[1] - 1)
        clean_logprobs = torch.log_softmax(clean_logits[:, kept].float(), dim=-1)
        del clean_logits
        next_tokens = input_ids[:, kept.start + 1 : kept.stop + 1]
        clean_argmax = clean_logprobs.argmax(-1)
        clean_probs = clean_logprobs.exp()
        columns: dict[str, list[Tensor]] = {
            "clean.ce_next": [-clean_logprobs.gather(-1, next_tokens.unsqueeze(-1)).squeeze(-1)],
            "clean.ce_argmax": [-clean_logprobs.amax(-1)],
        }

        def measure(series: str, patched: Tensor) -> None:
            logits = self._logits(input_ids, patched)[:, kept]
            for metric, values in next_token_metrics(clean_logprobs, logits, next_tokens, clean_argmax,
                                                     clean_probs).items():
                columns.setdefault(f"{series}.{metric}", []).append(values)

        raw = residual.float()
        patched, error_norms = self.reconstructions(raw)
        for name, recon in patched.items():
            columns[f"{name}.error_norm"] = [error_norms[name][:, kept]]
            measure(name, recon)
        del patched
        for series, perturbed in self.patches(raw, error_norms, window_indices):
            measure(series, perturbed)

        batch, positions = next_tokens.shape
        out = {
            "window": np.repeat(np.asarray(window_indices, dtype=np.int32), positions),
            "position": np.tile(np.arange(kept.start, kept.stop, dtype=np.int16), batch),
        }
        for name, values in columns.items():
            # ε series stack their draws as a last axis; everything else is one value per row.
            stacked = torch.stack(values, dim=-1) if name.startswith((EPS_RANDOM, EPS_OWN)) else values[0]
            out[name] = stacked.reshape(batch * positions, *stacked.shape[2:]).float().cpu().numpy()
        return out

    def _logits(self, input_ids: Tensor, patched: Tensor) -> Tensor:
        if self.shared_prefix:
            return run_from_layer(self.model, patched, self.layer, input_ids)
        with patch_layer(self.model, self.layer, lambda hidden: patched), torch.no_grad():
            return self.model(input_ids=input_ids, use_cache=False).logits


def evaluate_windows(evaluator: PatchingEvaluator, text: WindowedText, indices: list[int], batch_size: int,
                     parts_dir: Path, device: torch.device, world: World = ONE) -> tuple[list[Path], dict[str, int]]:
    """Evaluate this rank's batches of ``indices`` into one ``.npz`` part per batch; a part already on disk is
    skipped. Returns every batch's part in order (the others' too, once all ranks are done) and what this rank did:
    its ``batches`` and ``windows``, and the ``evaluated_windows`` this call ran.

    Batch b is rank b mod N's (one process: every batch). Parts are written atomically and the ε draws are seeded per
    window, so a part is the same whichever rank writes it, and an interrupted run resumed with the same settings (on
    any number of ranks) gives the same parts; memory holds one batch at a time.
    """
    batches = [indices[start : start + batch_size] for start in range(0, len(indices), batch_size)]
    paths = [parts_dir / f"batch_{i:06d}.npz" for i in range(len(batches))]
    mine = world.share(list(zip(batches, paths)))
    windows = sum(len(window_indices) for window_indices, _ in mine)
    evaluated = 0
    with tqdm(total=windows, desc="KL test", unit="win") as bar:
        for window_indices, path in mine:
            if not path.is_file():
                input_ids = torch.stack([text.get(i) for i in window_indices]).to(device)
                columns = evaluator.evaluate(input_ids, window_indices)
                atomic_save_npz(columns.items(), path)
                evaluated += len(window_indices)
            bar.update(len(window_indices))
    return paths, {"batches": len(mine), "windows": windows, "evaluated_windows": evaluated}
