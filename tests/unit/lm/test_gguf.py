"""The LM only when needed (METHOD §9): a stage whose windows are all in the activation cache never loads the
weights, and a GGUF model de-quantized once loads back from the cache folder with the same weights and tokenizer."""
from __future__ import annotations

from pathlib import Path

import torch

from common.lm.gguf import _keep_dequantized
from common.lm.loading import load_lm
from common.lm.model import LoadedLM
from common.registry import SMOLLM2_GGUF


def test_a_stage_whose_windows_are_all_cached_never_loads_the_weights(tmp_path: Path, monkeypatch) -> None:
    from part1c_sae_topK_implementation import main

    cache = str(tmp_path / "cache")
    first = main(["--preset", "tiny", "--checkpoint_dir", str(tmp_path / "first"), "--cache_dir", cache])

    def refuse(self: LoadedLM) -> None:
        raise AssertionError("the stage loaded the LM's weights although every window was cached")

    monkeypatch.setattr(LoadedLM, "model", property(refuse))
    again = main(["--preset", "tiny", "--checkpoint_dir", str(tmp_path / "again"), "--cache_dir", cache])
    assert again["mse"] == first["mse"] and again["variance_explained"] == first["variance_explained"]


def test_a_dequantized_gguf_loads_back_from_the_cache(smollm2: LoadedLM, tmp_path: Path) -> None:
    # the folder load_lm looks for: the GGUF file's sha256, as its fingerprint records it
    folder = tmp_path / "models" / f"gguf-{smollm2.fingerprint.split(':')[-1][:16]}"
    _keep_dequantized(smollm2.model, smollm2.tokenizer, folder)
    cached = load_lm(SMOLLM2_GGUF, torch.device("cpu"), cache_dir=tmp_path)
    assert not cached.model_loaded  # the tokenizer and shape come from the folder; the weights only when read
    assert (cached.fingerprint, cached.model_id, cached.num_layers, cached.d_model) == (
        smollm2.fingerprint, smollm2.model_id, smollm2.num_layers, smollm2.d_model)
    assert cached.tokenizer_fingerprint == smollm2.tokenizer_fingerprint
    ids = smollm2.tokenizer("The European lobster grows to sixty centimetres.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected, got = smollm2.model(ids).logits, cached.model(ids).logits
    assert torch.equal(got, expected)
    for name, tensor in smollm2.model.state_dict().items():
        assert torch.equal(cached.model.state_dict()[name], tensor), name


def test_a_cache_folder_without_weights_is_rebuilt(smollm2: LoadedLM, tmp_path: Path) -> None:
    """Only a folder with its weights counts as cached; one without is replaced by a complete one."""
    folder = tmp_path / "models" / f"gguf-{smollm2.fingerprint.split(':')[-1][:16]}"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}", encoding="utf-8")
    reloaded = load_lm(SMOLLM2_GGUF, torch.device("cpu"), cache_dir=tmp_path)
    assert reloaded.fingerprint == smollm2.fingerprint and (folder / "model.safetensors").is_file()
