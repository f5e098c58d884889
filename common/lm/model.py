"""A loaded causal LM (METHOD §0): its tokenizer and shape at once, its weights when first used, and how its
provenance is recorded."""
from __future__ import annotations

import functools
import gc
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from common.store.fingerprints import file_sha256

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


log = logging.getLogger(__name__)

@dataclass
class LoadedLM:
    """A causal LM by name: its tokenizer and shape at once, its weights when ``model`` is first read (a stage whose
    activations are all in the cache never reads it)."""

    tokenizer: PreTrainedTokenizerBase
    model_id: str  # canonical id, never a machine path
    fingerprint: str  # identifies the weights: a file sha256, a hub commit, or the tiny model's recipe hash
    num_layers: int
    d_model: int
    dtype: torch.dtype
    adds_bos: bool  # does tokenizer(text) prepend BOS by default (OpenLLaMA yes, SmolLM2 no)
    bos_token_id: int | None
    device: torch.device
    load_model: Callable[[], PreTrainedModel] = field(repr=False)

    @functools.cached_property
    def model(self) -> PreTrainedModel:
        """The weights, in eval mode, without gradients, on the device."""
        start = time.perf_counter()
        model = self.load_model()
        model.eval()
        model.requires_grad_(False)
        model.to(self.device)
        log.info("loaded %s (%s, %s) on %s in %.1f s", self.model_id, self.fingerprint[:20], model.dtype, self.device,
                 time.perf_counter() - start)
        return model

    @property
    def model_loaded(self) -> bool:
        return "model" in self.__dict__

    @functools.cached_property
    def tokenizer_fingerprint(self) -> str:
        return tokenizer_fingerprint(self.tokenizer)


def model_record(lm: LoadedLM, layer: int) -> dict[str, Any]:
    return {"model_id": lm.model_id, "model_fingerprint": lm.fingerprint, "layer": layer, "d_model": lm.d_model,
            "lm_dtype": str(lm.dtype)}


def release(lm: LoadedLM) -> None:
    """Free the LM before training: at paper scale its 6.9 GB are better spent elsewhere on a 24 GB card."""
    if lm.model_loaded:
        lm.model.to("meta")
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """What the token ids of a text depend on: the vocabulary, the special tokens and how a probe text splits (the
    merges and normalization show there), independent of where the tokenizer's files live."""
    probe = "The European lobster (Homarus gammarus) grows to 60 cm; Ω!  Two  spaces."
    described = {
        "class": type(tokenizer).__name__,
        "vocab": sorted(tokenizer.get_vocab().items()),
        "special": tokenizer.all_special_tokens,
        "probe": tokenizer(probe)["input_ids"],
    }
    return "sha256:" + hashlib.sha256(json.dumps(described, ensure_ascii=False).encode()).hexdigest()


def loaded_lm(tokenizer: PreTrainedTokenizerBase, config: Any, model_id: str, fingerprint: str, device: torch.device,
            dtype: torch.dtype, load_model: Callable[[], PreTrainedModel]) -> LoadedLM:
    ids = tokenizer("hello")["input_ids"]
    bos = tokenizer.bos_token_id
    return LoadedLM(tokenizer, model_id, fingerprint, config.num_hidden_layers, config.hidden_size, dtype,
                    bos is not None and len(ids) > 0 and ids[0] == bos, bos, device, load_model)


def weights_file_sha256(path: Path) -> str:
    stat = path.stat()
    return _file_sha256_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _file_sha256_cached(path: str, mtime_ns: int, size: int) -> str:
    """A weights file hashed once per process while it is unchanged (its path, mtime and size): the GGUF is hashed
    before every load."""
    return file_sha256(Path(path))


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
