"""Layer-L activations of text windows: harvesting with early exit, an optional disk cache, normalization stats."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from common.config.concepts import LMConfig
from common.data.text import WindowedText, is_validation_window, resolve_text
from common.errors import UserError
from common.lm.hooks import capture_layers
from common.lm.model import LoadedLM
from common.runtime.distributed import World
from common.store.reads import REWRITE_HINT, load_tensors, load_tensors_with_metadata
from common.store.savers import atomic_save_json, atomic_save_safetensors

SHARD_WINDOWS = 64  # cache granularity: stages with different chunk sizes share one cache
NORM_STATS_FILE = "norm_stats.safetensors"


@dataclass
class NormStats:
    """Per-dimension z-score stats, computed once (stage 1) and used by every later stage and every patch."""

    mean: Tensor  # (d,) fp32
    std: Tensor  # (d,) fp32, clamped at 1e-8

    @classmethod
    def compute(cls, rows: Tensor, num_rows: int = 10_000, seed: int = 0) -> NormStats:
        """From a random subset of ``num_rows`` rows, as the original's stage 1 did."""
        generator = torch.Generator().manual_seed(seed)
        pick = torch.randperm(rows.shape[0], generator=generator)[:num_rows]
        subset = rows[pick].float()
        return cls(subset.mean(0), subset.std(0).clamp_min(1e-8))

    @classmethod
    def identity(cls, width: int) -> NormStats:
        """Mean 0, std 1: normalizing changes nothing (an imported SAE works on raw activations)."""
        return cls(torch.zeros(width), torch.ones(width))

    def to(self, device: torch.device) -> NormStats:
        return NormStats(self.mean.to(device), self.std.to(device))

    def normalize(self, x: Tensor) -> Tensor:
        return (x.float() - self.mean) / self.std

    def denormalize(self, x: Tensor) -> Tensor:
        return x.float() * self.std + self.mean

    def save(self, path: Path) -> None:
        atomic_save_safetensors({"mean": self.mean, "std": self.std}, path)

    @classmethod
    def load(cls, path: Path) -> NormStats:
        tensors = load_tensors(path)
        mean, std = tensors.get("mean"), tensors.get("std")
        if set(tensors) != {"mean", "std"} or mean.shape != std.shape or mean.ndim != 1:
            raise UserError(f"{path} does not hold normalization stats (a mean and a std of one width): {REWRITE_HINT}")
        return cls(tensors["mean"], tensors["std"])


def flatten_positions(window_acts: Tensor, exclude_first_position: bool) -> Tensor:
    """(n, T, d) → (n·T', d) rows; position 0 (BOS where there is one) dropped on request."""
    if exclude_first_position:
        window_acts = window_acts[:, 1:]
    return window_acts.reshape(-1, window_acts.shape[-1])


class ActivationStream:
    """Activations of windows of one text at one layer, harvested on demand, each window at most once.

    With ``cache_dir`` every window is kept on disk in shards of ``SHARD_WINDOWS`` windows (LM dtype) under a folder
    named by a key over everything the activations depend on: the model's and the tokenizer's fingerprints, the layer,
    the window length and BOS rule, the dtype and the text's content (never its file name alone). Each shard records
    that key and its windows, and both are checked when it is read back, so later stages and re-runs read instead of
    re-running the LM and a cache can never hand over another text's activations.
    """

    def __init__(
        self,
        lm: LoadedLM,
        layer: int,
        text: WindowedText,
        batch_size: int = 32,
        exclude_first_position: bool = False,
        cache_dir: Path | None = None,
    ) -> None:
        self.lm, self.layer, self.text, self.batch_size = lm, layer, text, batch_size
        self.exclude_first_position = exclude_first_position
        self.device = lm.device
        self.harvested_windows = 0  # windows this process ran the LM on (the rest came from the cache)
        self.companions: list[ActivationStream] = []
        self.cache = None if cache_dir is None else Path(cache_dir) / f"acts-{self.key()[:16]}"
        if self.cache is not None:
            atomic_save_json(self.describe(), self.cache / "manifest.json")

    def describe(self) -> dict:
        return {
            "model_id": self.lm.model_id,
            "model_fingerprint": self.lm.fingerprint,
            "layer": self.layer,
            "window": self.text.window,
            "bos": self.text.bos_token_id is not None,
            "text": self.text.source.description,
            "text_identity": self.text.source.identity,
            "tokenizer_fingerprint": self.lm.tokenizer_fingerprint,
            "dtype": str(self.lm.dtype),
        }

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode()).hexdigest()

    def also_cache(self, layers: tuple[int, ...]) -> None:
        """Keep the activations at these other layers of every window this stream harvests, in their own cache
        folders, from the same forward pass (a later stage that reads one of them then runs no LM)."""
        if self.cache is not None:
            self.companions = [ActivationStream(self.lm, layer, self.text, self.batch_size, self.exclude_first_position,
                                                self.cache.parent) for layer in layers if layer != self.layer]

    def _harvest(self, indices: list[int]) -> dict[int, Tensor]:
        """Layer → (n, T, d) in the LM's dtype on the CPU, running only blocks up to the deepest layer wanted."""
        layers = (self.layer, *(companion.layer for companion in self.companions))
        out: dict[int, list[Tensor]] = {layer: [] for layer in layers}
        with tqdm(total=len(indices), desc=f"harvest layer {self.layer}", unit="win", leave=False,
                  disable=len(indices) < 4 * self.batch_size) as bar:
            for start in range(0, len(indices), self.batch_size):
                batch_indices = indices[start : start + self.batch_size]
                batch = torch.stack([self.text.get(i) for i in batch_indices]).to(self.device)
                for layer, acts in capture_layers(self.lm.model, batch, layers).items():
                    if not torch.isfinite(acts).all():
                        raise UserError(f"non-finite activations at layer {layer} of {self.lm.model_id} (windows "
                                        f"from {indices[start]}); try a wider dtype for the LM")
                    out[layer].append(acts.cpu())
                bar.update(batch.shape[0])
        self.harvested_windows += len(indices)
        empty = torch.empty(0, self.text.window, self.lm.d_model, dtype=self.lm.dtype)
        return {layer: torch.cat(parts) if parts else empty for layer, parts in out.items()}

    def _shard_path(self, shard: int) -> Path:
        return self.cache / f"shard_{shard:06d}.safetensors"

    def harvest_share(self, stop: int, world: World) -> None:
        """Under torchrun: each rank harvests into the cache the missing shards of windows [0, stop) that are its
        own (shard s is rank s mod N's), then waits for the others; every rank then reads them all from the cache. A
        shard is the same computation on whichever rank runs it, so the cache is a one-process harvest's bit for bit
        (with the same threads per process). One process harvests as it reads, as before."""
        if world.size == 1:
            return
        if self.cache is None:
            raise UserError(f"under torchrun the {world.size} ranks share their harvest through the activation "
                            "cache: pass --cache_dir")
        num_shards = -(-len(self.text.available(0, stop)) // SHARD_WINDOWS)
        for shard in world.share(range(num_shards)):
            if not self._shard_path(shard).is_file():
                self._shard(shard)
        world.barrier()

    def _shard(self, shard: int) -> dict[int, Tensor]:
        path = self._shard_path(shard)
        indices = self.text.available(shard * SHARD_WINDOWS, (shard + 1) * SHARD_WINDOWS)
        if path.is_file():
            tensors, metadata = load_tensors_with_metadata(path)
            self._check_shard(path, tensors, metadata, indices)
        else:
            harvested = self._harvest(indices)
            for stream in (self, *self.companions):
                tensors = {"acts": harvested[stream.layer], "indices": torch.tensor(indices, dtype=torch.int64)}
                atomic_save_safetensors(tensors, stream.cache / path.name, metadata={"key": stream.key()})
            tensors["acts"] = harvested[self.layer]
        return {int(i): a for i, a in zip(tensors["indices"], tensors["acts"])}

    def _check_shard(self, path: Path, tensors: dict[str, Tensor], metadata: dict[str, str],
                     indices: list[int]) -> None:
        """A shard must hold exactly this key's activations of these windows, in the LM's shape and dtype."""
        expected = (len(indices), self.text.window, self.lm.d_model)
        acts, recorded = tensors.get("acts"), tensors.get("indices")
        problem = None
        if metadata.get("key") != self.key():
            problem = "it was written for other settings or another text"
        elif acts is None or recorded is None or recorded.tolist() != indices:
            problem = f"it does not hold windows {indices[0]}-{indices[-1]}" if indices else "it holds windows"
        elif tuple(acts.shape) != expected or acts.dtype != self.lm.dtype:
            problem = f"its activations are {tuple(acts.shape)} {acts.dtype}, expected {expected} {self.lm.dtype}"
        if problem:
            raise UserError(f"cache shard {path} does not match this run ({problem}): delete {self.cache} to harvest "
                            "it again")

    def windows(self, indices: list[int]) -> Tensor:
        """Activations of the given (existing) windows, (n, T, d)."""
        if self.cache is None:
            return self._harvest(indices)[self.layer]
        by_index: dict[int, Tensor] = {}
        for shard in sorted({i // SHARD_WINDOWS for i in indices}):
            by_index.update(self._shard(shard))
        return torch.stack([by_index[i] for i in indices])

    def train_rows(self, start: int, stop: int) -> Tensor | None:
        """Rows of the training windows among windows [start, stop); ``None`` once the text has ended."""
        indices = [i for i in self.text.available(start, stop) if not is_validation_window(i)]
        if not indices:
            return None
        return flatten_positions(self.windows(indices), self.exclude_first_position)

    def val_rows(self, max_windows: int, within: int) -> Tensor:
        """Rows of the first ``max_windows`` held-out windows among the first ``within`` windows of the text."""
        indices = [i for i in self.text.available(0, within) if is_validation_window(i)][:max_windows]
        if not indices:
            raise UserError(f"no held-out windows in the first {within} windows of {self.text.source.description}: "
                            "the text is too short")
        return flatten_positions(self.windows(indices), self.exclude_first_position)


def open_stream(cfg: LMConfig, lm: LoadedLM, role: str = "train", files: list[str] | None = None) -> ActivationStream:
    """Layer-L activations of the preset's training (or evaluation) text."""
    text = resolve_text(files if files is not None else cfg.text_files, cfg.preset, role)
    windows = WindowedText(text, lm.tokenizer, cfg.window, lm.bos_token_id if lm.adds_bos else None)
    windows.get(0)  # fail now, before anything is written, if the text has no window at all
    cache = None if cfg.cache_dir is None else Path(cfg.cache_dir)
    return ActivationStream(lm, cfg.layer, windows, cfg.harvest_batch_size, cfg.exclude_first_position, cache)
