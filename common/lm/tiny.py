"""The tiny random Llama the tests run on: a fixed config, weights from a fixed seed, and a sentencepiece
tokenizer trained on the shared WikiText copy (METHOD §0)."""
from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from common.errors import UserError
from common.paths import WIKITEXT_FILES, shared_wikitext_dir

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

from common.lm.model import LoadedLM, loaded_lm
from common.registry import TINY_MODEL

log = logging.getLogger(__name__)

TINY_SEED = 0
# Only what we set is hashed into the fingerprint, so it stays the same across transformers versions.
TINY_CONFIG = {
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-6,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "tie_word_embeddings": False,
}


def tiny_tokenizer_model() -> bytes:
    """The tiny model's sentencepiece model file, trained on ``wiki.valid.raw`` (for checks against sentencepiece
    itself)."""
    folder = shared_wikitext_dir()
    if folder is None:
        raise UserError(
            f"the tiny model's tokenizer is trained on {WIKITEXT_FILES['train']}, which was not found: "
            "set WIKITEXT_DIR to a folder holding it (or put the shared copy in ../shared/data/wikitext-103-raw/)"
        )
    return _train_sentencepiece(str(folder / WIKITEXT_FILES["train"]))


@functools.lru_cache(maxsize=2)
def _train_sentencepiece(text_file: str) -> bytes:
    import sentencepiece as spm

    with open(text_file, encoding="utf-8") as f:
        lines = [line for line in f.read().split("\n") if line.strip()]
    buffer = io.BytesIO()
    spm.set_random_generator_seed(TINY_SEED)
    # Llama's own settings (BPE, byte fallback, no normalization, split digits) at a vocab small enough to train in
    # 0.1 s; one thread and the whole file (no sampling) make the bytes identical on every run.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buffer,
        model_type="bpe",
        vocab_size=TINY_CONFIG["vocab_size"],
        character_coverage=0.9995,
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        unk_id=0,
        bos_id=TINY_CONFIG["bos_token_id"],
        eos_id=TINY_CONFIG["eos_token_id"],
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    return buffer.getvalue()


def _tiny_tokenizer(model_bytes: bytes) -> PreTrainedTokenizerBase:
    from transformers import LlamaTokenizer

    # transformers 5 traps: LlamaTokenizer(vocab_file=...) silently builds an empty 3-token tokenizer, and without
    # protobuf a folder holding tokenizer.model is read as tiktoken; from_pretrained on a folder avoids the first,
    # _check_tiny_tokenizer catches the second. BOS like OpenLLaMA, so the tiny preset exercises the BOS path.
    with tempfile.TemporaryDirectory(prefix="tiny-llama-tokenizer-") as folder:
        Path(folder, "tokenizer.model").write_bytes(model_bytes)
        tokenizer = LlamaTokenizer.from_pretrained(folder, add_bos_token=True)
    _check_tiny_tokenizer(tokenizer, model_bytes)
    return tokenizer


def _check_tiny_tokenizer(tokenizer: PreTrainedTokenizerBase, model_bytes: bytes) -> None:
    import sentencepiece as spm

    reference = spm.SentencePieceProcessor(model_proto=model_bytes)
    probe = "The European lobster (Homarus gammarus) grows to 60 cm; Ω!"
    ids = tokenizer(probe, add_special_tokens=False)["input_ids"]
    if len(tokenizer) != reference.vocab_size() or ids != reference.encode(probe) or tokenizer.decode(ids) != probe:
        raise UserError(
            f"the tiny model's tokenizer came out broken ({len(tokenizer)} tokens, expected {reference.vocab_size()}): "
            "install protobuf and use transformers 5.x"
        )


def load_tiny(device: torch.device, dtype: torch.dtype | None) -> LoadedLM:
    from transformers import LlamaConfig, LlamaForCausalLM

    model_bytes = tiny_tokenizer_model()
    tokenizer = _tiny_tokenizer(model_bytes)
    config = LlamaConfig(**TINY_CONFIG, attn_implementation="sdpa")

    def build() -> PreTrainedModel:
        # Built on the CPU from a forked RNG: identical weights everywhere, and the caller's random stream untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TINY_SEED)
            model = LlamaForCausalLM(config)
        return model if dtype is None else model.to(dtype)

    recipe = hashlib.sha256()
    recipe.update(json.dumps({"seed": TINY_SEED, "config": TINY_CONFIG}, sort_keys=True).encode())
    recipe.update(model_bytes)
    return loaded_lm(tokenizer, config, TINY_MODEL, f"sha256:{recipe.hexdigest()}", device, dtype or torch.float32,
                   build)

