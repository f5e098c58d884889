"""Every decoder family the hooks know, and the fallback for the rest (Gemma-2): on a tiny random model of each,
early-exit capture is ``hidden_states[L]``, running from layer L gives the full forward's logits, the identity patch
changes nothing, a patch equals running from the patched residual, and stages 1 and 2 run on it (``--model FOLDER``)."""
from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch

import common.lm.hooks
from common.lm.families import decoder_blocks, exact_family
from common.lm.hooks import capture_layer, capture_layer_and_logits, patch_layer, run_from_layer
from common.lm.model import LoadedLM

LAYERS, WIDTH, VOCAB = 3, 32, 512
SHARED = dict(vocab_size=VOCAB, num_hidden_layers=LAYERS, bos_token_id=1, eos_token_id=2, pad_token_id=0)
ROTARY = dict(SHARED, hidden_size=WIDTH, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=256)


def family_config(family: str):
    import transformers as tf

    configs = {
        "llama": lambda: tf.LlamaConfig(**ROTARY),
        "mistral": lambda: tf.MistralConfig(**ROTARY),  # its default 4,096-token window: wider than any window here
        "qwen2": lambda: tf.Qwen2Config(**ROTARY),
        "qwen3": lambda: tf.Qwen3Config(**ROTARY, head_dim=8),
        "gpt2": lambda: tf.GPT2Config(vocab_size=VOCAB, n_embd=WIDTH, n_layer=LAYERS, n_head=4, n_positions=256,
                                      bos_token_id=1, eos_token_id=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
        "gpt_neox": lambda: tf.GPTNeoXConfig(**{k: v for k, v in ROTARY.items() if k != "num_key_value_heads"}),
        # a 16-token sliding window and soft-capping: the adapter stands aside and the full forward runs instead
        "gemma2": lambda: tf.Gemma2Config(**ROTARY, head_dim=8, sliding_window=16, query_pre_attn_scalar=8),
        "mistral-window": lambda: tf.MistralConfig(**ROTARY, sliding_window=16),
    }
    return configs[family]()


ADAPTED = ("llama", "mistral", "qwen2", "qwen3", "gpt2", "gpt_neox")
FALLBACK = ("gemma2", "mistral-window")
CHAINED = ("mistral", "qwen2", "qwen3", "gpt2", "gpt_neox", "gemma2")  # the tiny preset's own chain is Llama


def tiny_model(family: str):
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        # Gemma-2's soft-capping has no SDPA kernel in transformers 5: it runs eager attention, as common.lm.loading
        # loads it.
        attention = "eager" if family == "gemma2" else "sdpa"
        model = AutoModelForCausalLM.from_config(family_config(family), attn_implementation=attention)
    return model.eval().requires_grad_(False)


def random_ids(batch: int = 2, length: int = 40) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("family", ADAPTED + FALLBACK)
def test_capture_run_from_layer_and_patch_agree_with_the_full_forward(family: str,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    model, ids = tiny_model(family), random_ids()
    assert (exact_family(model, ids.shape[1]) is None) == (family in FALLBACK)
    common.lm.hooks._log_fallback.cache_clear()  # it logs once per model class and process
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
    assert len(decoder_blocks(model)) == LAYERS
    for layer in range(1, LAYERS):
        residual = capture_layer(model, ids, layer)
        assert torch.equal(residual, out.hidden_states[layer])
        hidden, logits = capture_layer_and_logits(model, ids, layer)
        assert torch.equal(hidden, residual) and torch.equal(logits, out.logits)
        with caplog.at_level(logging.INFO, logger="common.lm.hooks"):
            torch.testing.assert_close(run_from_layer(model, residual, layer, ids), out.logits, rtol=0, atol=1e-5)
        with patch_layer(model, layer, lambda h: h), torch.no_grad():
            assert torch.equal(model(input_ids=ids, use_cache=False).logits, out.logits)
        delta = torch.randn(residual.shape, generator=torch.Generator().manual_seed(layer))
        with patch_layer(model, layer, lambda h, delta=delta: h + delta), torch.no_grad():
            patched = model(input_ids=ids, use_cache=False).logits
        assert not torch.allclose(patched, out.logits)
        torch.testing.assert_close(run_from_layer(model, residual + delta, layer, ids), patched, rtol=0, atol=1e-5)
    assert ("full forward with the patch hook" in caplog.text) == (family in FALLBACK)


def test_a_longer_window_than_mistral_s_sliding_window_falls_back() -> None:
    model = tiny_model("mistral")
    window = model.config.sliding_window
    assert exact_family(model, window) is not None and exact_family(model, window + 1) is None


def test_the_fallback_needs_the_input_ids() -> None:
    model, ids = tiny_model("gemma2"), random_ids()
    with pytest.raises(ValueError, match="input ids"):
        run_from_layer(model, capture_layer(model, ids, 1), 1)


@pytest.fixture(scope="module")
def family_folders(tiny_lm: LoadedLM, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each family's tiny model saved as an HF folder with the tiny Llama's tokenizer (``--model FOLDER``)."""
    folders = {}
    for family in CHAINED:
        folder = tmp_path_factory.mktemp(f"tiny-{family}")
        tiny_model(family).save_pretrained(folder)
        tiny_lm.tokenizer.save_pretrained(folder)
        folders[family] = folder
    return folders


SMALL_STAGE1 = ["--preset", "tiny", "--layer", "2", "--num_tokens", "2560", "--val_tokens", "256", "--features", "128",
                "--k", "8", "--train_steps", "12", "--batch_size", "128", "--val_every", "6", "--checkpoint_every",
                "6", "--log_every", "6", "--norm_rows", "500"]
SMALL_STAGE2 = ["--preset", "tiny", "--layer", "2", "--num_tokens", "2560", "--val_tokens", "256", "--chunk_tokens",
                "1280", "--epochs_per_chunk", "1", "--batch_size", "128", "--val_every", "6", "--checkpoint_every",
                "6", "--log_every", "6"]


@pytest.mark.parametrize("family", CHAINED)
def test_stages_1_and_2_run_on_the_family(family: str, family_folders: dict[str, Path], tmp_path: Path) -> None:
    from part1c_sae_topK_implementation import main as stage1
    from part2d_residual_NFM_streaming import main as stage2

    model = ["--model", str(family_folders[family])]
    sae1 = stage1([*SMALL_STAGE1, *model, "--checkpoint_dir", str(tmp_path / "sae1")])
    nfm = stage2([*SMALL_STAGE2, *model, "--sae1_model_path", str(tmp_path / "sae1"),
                  "--checkpoint_dir", str(tmp_path / "nfm")])
    assert sae1["steps"] == 12 and nfm["steps"] > 0
    assert math.isfinite(sae1["mse"]) and sae1["mse"] > 0
    assert nfm["residual_mse_before_val"] > 0 and math.isfinite(nfm["residual_mse_after_val"])
