"""The KL / cross-entropy patching evaluator of METHOD §4 and §8, shared by part14 and part18.

For a batch of unpadded windows: run the blocks before the patch layer once and keep that residual, get the clean
logits from the later blocks, then for every patch replace the residual and run only the later blocks again. A patch
is a condition's reconstruction or an ε-random perturbation ``x + ‖x̂ − x‖·u`` (u a fresh random unit vector per
token); both live in raw activation space, where the LM reads them. The zero-ablation patch (the residual set to
zero) is the floor SAEBench's CE-loss and KL scores are scaled by. ``shared_prefix=False`` is the original's way (one
whole forward with a patch hook per patch), kept as the reference the tests compare against.

Every series is measured at the same positions of a window: all of them, or a subset drawn per window
(``positions_per_window``). The later blocks run at every position either way (a patch changes what later positions
attend to); the final norm, the head and the vocabulary-wide arithmetic run only where something is measured.
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
from common.lm.hooks import at_positions, capture_layer, capture_layer_and_logits, patch_layer, run_from_layer
from common.runtime.distributed import ONE, World
from common.store.savers import atomic_save_npz

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# Raw residual rows (N, d) fp32 -> each condition's reconstruction in raw space (N, d), in a fixed order.
Reconstruct = Callable[[Tensor], dict[str, Tensor]]

EPS_RANDOM = "eps_random"  # the ε-random baseline at the reference condition's error norm
EPS_OWN = "eps_own"  # prefix of the second baseline: ε-random at each condition's own error norm
ZERO_ABLATION = "zero_ablation"  # the residual at the patch layer set to zero
METRICS = ("kl", "ce_next", "ce_argmax")
# Rows of vocabulary-wide arithmetic done at a time: on the CPU 16 × 49,152 fp32 values (3 MB) stay in a core's cache
# through the log-softmax, the gathers and the KL, where whole-batch buffers (200 MB at the cpu preset) went to memory
# and back three times per patch; a GPU wants few large kernels instead.
ROWS_PER_CHUNK = {"cpu": 16}
GPU_ROWS_PER_CHUNK = 1024
POSITIONS_STREAM = 0x5EED_9051  # keeps the positions' generator apart from the ε draws'


def measured_positions(window: int, kept: range, count: int | None, seed: int) -> np.ndarray:
    """The positions of window ``window`` at which every series is measured, ascending: all of ``kept``, or ``count``
    of them drawn without replacement by a generator seeded by (seed, window) alone, so a window gets the same
    positions in every batch, on every rank and after a resume."""
    if count is None or count >= len(kept):
        return np.arange(kept.start, kept.stop)
    drawn = np.random.default_rng([seed, window, POSITIONS_STREAM]).choice(len(kept), size=count, replace=False)
    return np.sort(drawn) + kept.start


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
    vocab = patched_logits.shape[-1]
    log_p = clean_logprobs.reshape(-1, vocab)
    p = (clean_logprobs.exp() if clean_probs is None else clean_probs).reshape(-1, vocab)
    logits = patched_logits.reshape(-1, vocab)
    picks = torch.stack([next_tokens.reshape(-1), clean_argmax.reshape(-1)], dim=1)
    kl = torch.empty(logits.shape[0], device=logits.device)
    picked = torch.empty(logits.shape[0], 2, device=logits.device)
    chunk = ROWS_PER_CHUNK.get(logits.device.type, GPU_ROWS_PER_CHUNK)
    for start in range(0, logits.shape[0], chunk):
        rows = slice(start, start + chunk)
        log_q = torch.log_softmax(logits[rows].float(), dim=-1)
        picked[rows] = log_q.gather(1, picks[rows])
        # Σ p·(log p − log q) term by term, so identical distributions give exactly 0; (−log q) + log p is
        # log p − log q to the bit, formed in log q's own buffer.
        kl[rows] = torch.linalg.vecdot(p[rows], log_q.neg_().add_(log_p[rows]))
    shape = patched_logits.shape[:-1]
    return {"kl": kl.reshape(shape), "ce_next": -picked[:, 0].reshape(shape), "ce_argmax": -picked[:, 1].reshape(shape)}


@dataclass
class CleanRun:
    """The unpatched model at one batch's measured positions, computed once for all of its patches."""

    logprobs: Tensor  # (B, P, V) fp32
    probs: Tensor
    next_tokens: Tensor  # (B, P)
    argmax: Tensor

    @classmethod
    def of(cls, logits: Tensor, next_tokens: Tensor) -> CleanRun:
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        return cls(logprobs, logprobs.exp(), next_tokens, logprobs.argmax(-1))

    def columns(self) -> dict[str, Tensor]:
        return {"clean.ce_next": -self.logprobs.gather(-1, self.next_tokens.unsqueeze(-1)).squeeze(-1),
                "clean.ce_argmax": -self.logprobs.amax(-1)}

    def metrics(self, patched_logits: Tensor) -> dict[str, Tensor]:
        return next_token_metrics(self.logprobs, patched_logits, self.next_tokens, self.argmax, self.probs)


@dataclass
class PatchingEvaluator:
    """Every patch of one batch and its next-token metrics.

    ``layer`` is where the residual is read and patched (L; L+1 for the original's evaluation). ``reference`` names
    the condition whose error norm sets the ε-random baseline (the SAE, or the joint model's SAE part); reductions are
    against it too. ``first_position`` 1 leaves position 0 (BOS) unpatched and out of the statistics.
    ``positions_per_window`` measures that many positions of each window (``measured_positions``); None: all.
    ``own_norm_draws``: ε draws of the own-norm baselines (None: ``num_epsilon_samples``, as the main baseline).
    """

    model: PreTrainedModel
    layer: int
    reconstruct: Reconstruct
    reference: str
    num_epsilon_samples: int = 3
    seed: int = 0
    first_position: int = 0
    shared_prefix: bool = True
    positions_per_window: int | None = None
    own_norm_draws: int | None = None

    def positions(self, window_indices: list[int], length: int) -> Tensor:
        """The measured positions (B, P) of each window of a batch of ``length``-token windows (positions
        first_position..length−2: the last has no next token)."""
        kept = range(self.first_position, length - 1)
        return torch.as_tensor(np.stack([measured_positions(window, kept, self.positions_per_window, self.seed)
                                         for window in window_indices]))

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
        the batch size, and again after a resume. The own-norm baselines take the first ``own_norm_draws`` draws.
        """
        generators = [torch.Generator(device=raw.device).manual_seed(self.seed * 1_000_003 + w) for w in window_indices]
        for draw in range(self.num_epsilon_samples):
            unit = torch.stack([random_unit_vectors(raw.shape[1:], generator) for generator in generators])
            for name, error_norm in error_norms.items():
                if name == self.reference:
                    yield EPS_RANDOM, epsilon_perturb(raw, error_norm, unit)
                elif draw < self.own_draws:
                    yield f"{EPS_OWN}.{name}", epsilon_perturb(raw, error_norm, unit)

    @property
    def own_draws(self) -> int:
        """Draws of the own-norm baselines: ``own_norm_draws``, at most the main baseline's (None: as many)."""
        return min(self.num_epsilon_samples, self.own_norm_draws or self.num_epsilon_samples)

    def evaluate(self, input_ids: Tensor, window_indices: list[int]) -> dict[str, np.ndarray]:
        """Per-position columns for one batch of windows (rows = window × measured position).

        ``window``, ``position``; ``clean.ce_next`` / ``clean.ce_argmax``; per condition ``<name>.kl``, ``.ce_next``,
        ``.ce_argmax``, ``.error_norm``; ε series (rows, draws): ``eps_random.<metric>`` and
        ``eps_own.<name>.<metric>`` for every condition but the reference; ``zero_ablation.<metric>``.
        """
        where = self.positions(window_indices, input_ids.shape[1]).to(input_ids.device)
        if self.shared_prefix:
            residual = capture_layer(self.model, input_ids, self.layer)
            clean_logits = run_from_layer(self.model, residual, self.layer, input_ids, where)
        else:
            residual, logits = capture_layer_and_logits(self.model, input_ids, self.layer)
            clean_logits = at_positions(logits, where)
            del logits
        clean = CleanRun.of(clean_logits, input_ids.gather(1, where + 1))
        del clean_logits
        columns: dict[str, list[Tensor]] = {name: [values] for name, values in clean.columns().items()}

        def measure(series: str, logits: Tensor) -> None:
            for metric, values in clean.metrics(logits).items():
                columns.setdefault(f"{series}.{metric}", []).append(values)

        raw = residual.float()
        patched, error_norms = self.reconstructions(raw)
        for name, recon in patched.items():
            columns[f"{name}.error_norm"] = [at_positions(error_norms[name], where)]
            measure(name, self._logits(input_ids, recon, where))
        del patched
        for series, perturbed in self.patches(raw, error_norms, window_indices):
            measure(series, self._logits(input_ids, perturbed, where))
        measure(ZERO_ABLATION, self._zero_ablation_logits(input_ids, raw, where))

        batch, count = where.shape
        out = {"window": np.repeat(np.asarray(window_indices, dtype=np.int32), count),
               "position": where.reshape(-1).cpu().numpy().astype(np.int16)}
        for name, values in columns.items():
            # ε series stack their draws as a last axis; everything else is one value per row.
            stacked = torch.stack(values, dim=-1) if name.startswith((EPS_RANDOM, EPS_OWN)) else values[0]
            out[name] = stacked.reshape(batch * count, *stacked.shape[2:]).float().cpu().numpy()
        return out

    def _logits(self, input_ids: Tensor, patched: Tensor, where: Tensor | None) -> Tensor:
        """Logits at the measured positions ``where`` (B, P) (None: at every position) with ``patched`` as the
        residual."""
        if self.shared_prefix:
            return run_from_layer(self.model, patched, self.layer, input_ids, where)
        with patch_layer(self.model, self.layer, lambda hidden: patched), torch.no_grad():
            logits = self.model(input_ids=input_ids, use_cache=False).logits
        return logits if where is None else at_positions(logits, where)

    def _zero_ablation_logits(self, input_ids: Tensor, raw: Tensor, where: Tensor) -> Tensor:
        """The zero-ablation's logits at ``where``. With every position patched, the blocks after the patch read
        nothing that differs between windows (the residual is zero, the positions the same), so they run for one
        window and its logits serve the batch; a left-alone first position differs by window, so then all run."""
        if self.first_position:
            zeros = torch.cat([raw[:, : self.first_position], torch.zeros_like(raw[:, self.first_position :])], 1)
            return self._logits(input_ids, zeros, where)
        one_window = self._logits(input_ids[:1], torch.zeros_like(raw[:1]), None)[0]
        return one_window[where]


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
