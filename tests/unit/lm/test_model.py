"""common/lm/model.py: what a run records of its LM (``model_record``), the tokenizer's fingerprint (the same for
the same tokenizer wherever its files live, another for another vocabulary or other special tokens), the cached
sha256 of a weights file, and freeing the LM's weights."""
from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from common.lm.loading import load_lm
from common.lm.model import (
    LoadedLM,
    first_line,
    model_record,
    release,
    tokenizer_fingerprint,
    weights_file_sha256,
)
from common.lm.tiny import TINY_CONFIG
from common.registry import TINY_MODEL

# The tiny tokenizer's fingerprint as this version records it in every config.json: a run whose record holds it
# resumes. A change here means every earlier tiny run reads as "another tokenizer".
TINY_TOKENIZER = "sha256:f4d49712838c35d9567f65f3fe49cd51e914823048818308839235707f72c2f7"


def test_model_record_is_the_lms_provenance_at_the_layer(tiny_lm: LoadedLM):
    assert model_record(tiny_lm, 2) == {"model_id": "tiny-random-llama", "model_fingerprint": tiny_lm.fingerprint,
                                        "layer": 2, "d_model": TINY_CONFIG["hidden_size"], "lm_dtype": "torch.float32"}
    assert model_record(tiny_lm, 3)["layer"] == 3
    assert tiny_lm.num_layers == TINY_CONFIG["num_hidden_layers"] and tiny_lm.adds_bos and tiny_lm.bos_token_id == 1


def test_the_tokenizer_fingerprint_is_stable(tiny_lm: LoadedLM):
    assert tiny_lm.tokenizer_fingerprint == tokenizer_fingerprint(tiny_lm.tokenizer) == TINY_TOKENIZER
    again = load_lm(TINY_MODEL, torch.device("cpu"))  # another tokenizer object, read from another temp folder
    assert again.tokenizer is not tiny_lm.tokenizer
    assert tokenizer_fingerprint(again.tokenizer) == TINY_TOKENIZER
    moved = copy.deepcopy(tiny_lm.tokenizer)
    moved.name_or_path = "/somewhere/else"
    assert tokenizer_fingerprint(moved) == TINY_TOKENIZER


def test_another_vocabulary_or_other_special_tokens_change_it(tiny_lm: LoadedLM):
    more = copy.deepcopy(tiny_lm.tokenizer)
    more.add_tokens(["<extra>"])
    padded = copy.deepcopy(tiny_lm.tokenizer)
    padded.add_special_tokens({"pad_token": "<pad>"})
    prints = {tokenizer_fingerprint(t) for t in (tiny_lm.tokenizer, more, padded)}
    assert len(prints) == 3 and all(p.startswith("sha256:") and len(p) == 7 + 64 for p in prints)


def test_weights_file_sha256_is_hashlibs_and_follows_a_changed_file(tmp_path: Path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"weights v1")
    assert weights_file_sha256(path) == "sha256:" + hashlib.sha256(b"weights v1").hexdigest()
    path.write_bytes(b"weights v2 longer")
    os.utime(path, ns=(1, 2_000_000_000))  # another mtime and size: not the cached digest
    assert weights_file_sha256(path) == "sha256:" + hashlib.sha256(b"weights v2 longer").hexdigest()


class Weights(nn.Linear):
    dtype = torch.float32  # what the load log reads of a transformers model


def test_release_moves_loaded_weights_off_the_device_and_leaves_unloaded_ones_alone():
    built: list[nn.Module] = []

    def build() -> nn.Module:
        built.append(Weights(3, 2))
        return built[-1]

    lm = LoadedLM(None, "m", "sha256:x", 2, 3, torch.float32, False, None, torch.device("cpu"), build)
    release(lm)
    assert built == [] and not lm.model_loaded
    model = lm.model
    assert lm.model_loaded and not model.training and not any(p.requires_grad for p in model.parameters())
    release(lm)
    assert all(p.device.type == "meta" for p in model.parameters())


def test_first_line():
    assert first_line(ValueError("first\nsecond")) == "first"
    assert first_line(OSError()) == "OSError"
    assert first_line(RuntimeError("  padded  \n")) == "padded"


@pytest.mark.parametrize("size", [0, 5])
def test_weights_file_sha256_of_small_files(tmp_path: Path, size: int):
    path = tmp_path / f"w{size}.bin"
    path.write_bytes(b"x" * size)
    assert weights_file_sha256(path) == "sha256:" + hashlib.sha256(b"x" * size).hexdigest()
