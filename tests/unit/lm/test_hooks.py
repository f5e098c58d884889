"""common/lm/hooks.py: early-exit capture, running from a layer and patching all agree with the full forward."""
from __future__ import annotations

import pytest
import torch

from common.errors import UserError
from common.lm.hooks import capture_layer, capture_layer_and_logits, check_layer, patch_layer, run_from_layer
from common.lm.loading import load_lm
from common.lm.model import LoadedLM
from common.registry import TINY_MODEL


def random_ids(lm: LoadedLM, batch: int = 3, length: int = 40, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, lm.model.config.vocab_size, (batch, length), generator=generator)


def full_forward(lm: LoadedLM, ids: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    with torch.no_grad():
        out = lm.model(input_ids=ids, output_hidden_states=True, use_cache=False)
    return out.hidden_states, out.logits


def test_check_layer_bounds(tiny_lm: LoadedLM) -> None:
    n = tiny_lm.num_layers
    for layer in range(1, n):
        check_layer(tiny_lm.model, layer)
    for bad in (0, n, n + 1, -1, -n, True, 1.0):
        with pytest.raises(UserError, match=f"from 1 to {n - 1}"):
            check_layer(tiny_lm.model, bad)


def test_capture_equals_hidden_states(tiny_lm: LoadedLM) -> None:
    ids = random_ids(tiny_lm)
    hidden_states, logits = full_forward(tiny_lm, ids)
    for layer in range(1, tiny_lm.num_layers):
        assert torch.equal(capture_layer(tiny_lm.model, ids, layer), hidden_states[layer])
        hidden, full_logits = capture_layer_and_logits(tiny_lm.model, ids, layer)
        assert torch.equal(hidden, hidden_states[layer])
        assert torch.equal(full_logits, logits)


def test_capture_stops_after_the_hooked_block(tiny_lm: LoadedLM) -> None:
    model = tiny_lm.model
    ran: list[str] = []
    watched = {f"block {i}": block for i, block in enumerate(model.model.layers)}
    watched.update(norm=model.model.norm, lm_head=model.lm_head)
    hooks_before = len(model.model.layers[1]._forward_hooks)
    handles = [m.register_forward_hook(lambda *_, name=name: ran.append(name)) for name, m in watched.items()]
    try:
        capture_layer(model, random_ids(tiny_lm), 2)
    finally:
        for handle in handles:
            handle.remove()
    assert ran == ["block 0", "block 1"]
    # transformers 5 keeps its own output-capturing hook on every block, so count rather than expect none.
    assert len(model.model.layers[1]._forward_hooks) == hooks_before, "the early-exit hook must be removed"


def test_run_from_layer_equals_full_forward(tiny_lm: LoadedLM) -> None:
    ids = random_ids(tiny_lm)
    hidden_states, logits = full_forward(tiny_lm, ids)
    for layer in range(1, tiny_lm.num_layers):
        # Same kernels, same order: transformers 5.24 gives bit-identical logits (MACHINES.md: 5.17 too).
        torch.testing.assert_close(run_from_layer(tiny_lm.model, hidden_states[layer], layer), logits,
                                   rtol=0, atol=1e-6)


def test_run_from_layer_is_causal(tiny_lm: LoadedLM) -> None:
    hidden = capture_layer(tiny_lm.model, random_ids(tiny_lm), 2)
    clean = run_from_layer(tiny_lm.model, hidden, 2)
    changed = hidden.clone()
    changed[:, -1] += 1.0
    patched = run_from_layer(tiny_lm.model, changed, 2)
    assert torch.equal(patched[:, :-1], clean[:, :-1])
    assert not torch.equal(patched[:, -1], clean[:, -1])


def test_run_from_layer_with_eager_attention() -> None:
    lm = load_lm(TINY_MODEL, torch.device("cpu"))
    lm.model.set_attn_implementation("eager")
    ids = random_ids(lm)
    hidden_states, logits = full_forward(lm, ids)
    torch.testing.assert_close(run_from_layer(lm.model, hidden_states[2], 2), logits, rtol=1e-5, atol=1e-5)


def test_run_from_layer_keeps_the_model_dtype() -> None:
    lm = load_lm(TINY_MODEL, torch.device("cpu"), dtype=torch.bfloat16)
    hidden = capture_layer(lm.model, random_ids(lm), 1)
    assert hidden.dtype == torch.bfloat16
    assert run_from_layer(lm.model, hidden.float(), 1).dtype == torch.bfloat16


def test_identity_patch_changes_nothing(tiny_lm: LoadedLM) -> None:
    ids = random_ids(tiny_lm)
    _, clean = full_forward(tiny_lm, ids)
    with patch_layer(tiny_lm.model, 2, lambda h: h):
        _, patched = full_forward(tiny_lm, ids)
    assert torch.equal(patched, clean)


def test_patch_equals_running_from_the_patched_residual(tiny_lm: LoadedLM) -> None:
    ids = random_ids(tiny_lm)
    _, clean = full_forward(tiny_lm, ids)
    for layer in range(1, tiny_lm.num_layers):
        delta = 0.5 * torch.randn(ids.shape + (tiny_lm.d_model,), generator=torch.Generator().manual_seed(layer))
        with patch_layer(tiny_lm.model, layer, lambda h, delta=delta: h + delta):
            _, patched = full_forward(tiny_lm, ids)
        assert not torch.allclose(patched, clean)
        expected = run_from_layer(tiny_lm.model, capture_layer(tiny_lm.model, ids, layer) + delta, layer)
        torch.testing.assert_close(patched, expected, rtol=0, atol=1e-6)
    _, after = full_forward(tiny_lm, ids)
    assert torch.equal(after, clean), "the patch must be gone once the context exits"


def test_hidden_states_report_the_patched_residual(tiny_lm: LoadedLM) -> None:
    ids = random_ids(tiny_lm)
    clean_states, _ = full_forward(tiny_lm, ids)
    with patch_layer(tiny_lm.model, 2, lambda h: h + 1.0):
        patched_states, _ = full_forward(tiny_lm, ids)
        hidden, _ = capture_layer_and_logits(tiny_lm.model, ids, 2)
    assert torch.equal(patched_states[2], clean_states[2] + 1.0)
    assert torch.equal(hidden, patched_states[2])


def test_patch_is_removed_after_an_error(tiny_lm: LoadedLM) -> None:
    ids = random_ids(tiny_lm)
    _, clean = full_forward(tiny_lm, ids)
    with pytest.raises(ValueError, match="shape"):
        with patch_layer(tiny_lm.model, 1, lambda h: h[:, :-1]):
            full_forward(tiny_lm, ids)
    _, after = full_forward(tiny_lm, ids)
    assert torch.equal(after, clean)


@pytest.mark.slow
def test_smollm2_runs_from_layer_15(smollm2: LoadedLM) -> None:
    ids = random_ids(smollm2, batch=2, length=32)
    hidden, logits = capture_layer_and_logits(smollm2.model, ids, 15)
    assert torch.equal(capture_layer(smollm2.model, ids, 15), hidden)
    torch.testing.assert_close(run_from_layer(smollm2.model, hidden, 15), logits, rtol=0, atol=1e-5)
