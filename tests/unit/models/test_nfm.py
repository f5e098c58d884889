"""The NFM: both decode paths equal the dense reference (values and gradients), in every precision regime."""
from __future__ import annotations

import itertools

import pytest
import torch

from common.models.codes import scatter_codes, select_top_n
from common.models.nfm import DECODES, NFM, NFMOutput, nfm_reference
from tests.helpers import assert_rel_close

NUM_FEATURES, D_MODEL, EMBED_DIM, BATCH, TOP_N = 200, 16, 8, 6, 10


def random_codes(
    batch: int = BATCH, n: int = TOP_N, num_features: int = NUM_FEATURES, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """N distinct active features per row, values > 0 sorted descending, as a TopK SAE gives them."""
    gen = torch.Generator().manual_seed(seed)
    top_indices = torch.stack([torch.randperm(num_features, generator=gen)[:n] for _ in range(batch)])  # (B, N)
    top_acts = (torch.rand(batch, n, generator=gen) * 2 + 0.1).sort(dim=-1, descending=True).values
    return top_acts, top_indices


def make_nfm(seed: int = 0, dtype: torch.dtype = torch.float32) -> NFM:
    torch.manual_seed(seed)
    nfm = NFM(NUM_FEATURES, D_MODEL, EMBED_DIM).to(dtype)
    # At the init's std 0.01 the interaction output is orders of magnitude below the linear one; std 0.3 makes
    # every path's values and gradients large enough for the checks to bite.
    with torch.no_grad():
        for p in nfm.parameters():
            p.normal_(std=0.3)
    return nfm


def grads_of(nfm: NFM) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in nfm.named_parameters()}


def run_path(
    nfm: NFM, top_acts: torch.Tensor, top_indices: torch.Tensor, decode: str | None, target: torch.Tensor, seed: int
) -> tuple[NFMOutput, dict[str, torch.Tensor]]:
    """Outputs and parameter gradients of one path (``decode=None``: the reference) under a fixed RNG state."""
    nfm.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    if decode is None:
        out = nfm_reference(nfm, scatter_codes(top_acts, top_indices, NUM_FEATURES))
    else:
        out = nfm(top_acts, top_indices, decode=decode)
    # Weighting every output keeps all three in the loss without their gradients cancelling.
    loss = (out.total - target).square().mean() + out.linear.square().mean() + out.interaction.pow(3).mean()
    loss.backward()
    return out, grads_of(nfm)


def test_bi_interaction_is_the_pairwise_sum():
    nfm = make_nfm(dtype=torch.float64)
    top_acts, top_indices = random_codes()
    top_acts = top_acts.double()
    rows = nfm.embeddings[top_indices] * top_acts.unsqueeze(-1)  # (B, N, k)
    pairwise = sum(rows[:, i] * rows[:, j] for i, j in itertools.combinations(range(TOP_N), 2))
    nfm.eval()
    with torch.no_grad():
        hand_hidden = nfm.mlp[1](pairwise)
        for decode in DECODES:
            assert_rel_close(nfm.interaction_hidden(top_acts, top_indices, decode), hand_hidden, 1e-12, decode)
        reference = nfm_reference(nfm, scatter_codes(top_acts, top_indices, NUM_FEATURES))
        assert_rel_close(reference.interaction, nfm.mlp(pairwise), 1e-12, "reference")


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("decode", DECODES)
def test_paths_match_reference_fp32(decode: str, train: bool):
    nfm = make_nfm().train(train)
    top_acts, top_indices = random_codes()
    target = torch.randn(BATCH, D_MODEL, generator=torch.Generator().manual_seed(1))
    # Same seed before each path: dropout is the only random draw and its (B, k) mask comes out identical.
    ref_out, ref_grads = run_path(nfm, top_acts, top_indices, None, target, seed=7)
    out, grads = run_path(nfm, top_acts, top_indices, decode, target, seed=7)
    if train:  # the mask really dropped something, so the train-mode check is not an eval check in disguise
        torch.manual_seed(7)
        assert (nfm.mlp[0](torch.ones(BATCH, EMBED_DIM)) == 0).any()
    for field in out._fields:
        assert getattr(out, field).dtype == torch.float32
        assert_rel_close(getattr(out, field), getattr(ref_out, field), 1e-5, field)
    for name, grad in ref_grads.items():
        assert_rel_close(grads[name], grad, 1e-5, name)


@pytest.mark.parametrize("decode", DECODES)
def test_code_gradients_match_reference(decode: str):
    """In the joint model the gradient also flows back into the SAE's codes."""
    nfm = make_nfm().eval()
    top_acts, top_indices = random_codes()
    target = torch.randn(BATCH, D_MODEL)
    ref_acts, acts = top_acts.clone().requires_grad_(), top_acts.clone().requires_grad_()
    run_path(nfm, ref_acts, top_indices, None, target, seed=0)
    run_path(nfm, acts, top_indices, decode, target, seed=0)
    assert_rel_close(acts.grad, ref_acts.grad, 1e-5)


@pytest.mark.parametrize("decode", DECODES)
def test_bf16_autocast_matches_reference(decode: str):
    nfm = make_nfm().eval()
    top_acts, top_indices = random_codes()
    target = torch.randn(BATCH, D_MODEL)
    ref_out, ref_grads = run_path(nfm, top_acts, top_indices, None, target, seed=0)
    # The SAE hands over bf16 codes when it ran under autocast too.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, grads = run_path(nfm, top_acts.bfloat16(), top_indices, decode, target, seed=0)
    for field in out._fields:
        assert getattr(out, field).dtype == torch.float32  # outputs come back in the master dtype
        assert_rel_close(getattr(out, field), getattr(ref_out, field), 2e-2, field)
    for name, grad in ref_grads.items():
        assert grads[name].dtype == torch.float32
        assert_rel_close(grads[name], grad, 3e-2, name)


@pytest.mark.parametrize("decode", DECODES)
def test_faithful_fp16_runs(decode: str):
    nfm = make_nfm(dtype=torch.float16).train()
    top_acts, top_indices = random_codes()
    codes = top_acts.half().requires_grad_()  # the joint model's fp16 SAE hands over fp16 codes that need grads
    out = nfm(codes, top_indices, decode=decode)
    assert out.total.dtype == torch.float16
    out.total.float().square().mean().backward()
    for name, p in [*nfm.named_parameters(), ("codes", codes)]:
        assert p.grad is not None and p.grad.dtype == torch.float16, name
        assert torch.isfinite(p.grad).all(), name
    nfm.eval()
    with torch.no_grad():
        reference = nfm_reference(nfm, scatter_codes(top_acts, top_indices, NUM_FEATURES))
        assert_rel_close(nfm(top_acts, top_indices, decode=decode).total, reference.total, 2e-2)


def test_select_top_n_keeps_the_largest():
    gen = torch.Generator().manual_seed(0)
    top_acts = torch.rand(5, 12, generator=gen)  # deliberately unsorted
    top_indices = torch.stack([torch.randperm(100, generator=gen)[:12] for _ in range(5)])
    kept_acts, kept_indices = select_top_n(top_acts, top_indices, 4)
    assert kept_acts.shape == kept_indices.shape == (5, 4)
    for row in range(5):
        largest = top_acts[row].argsort(descending=True)[:4]
        assert set(kept_indices[row].tolist()) == set(top_indices[row, largest].tolist())
        assert torch.equal(kept_acts[row].sort().values, top_acts[row, largest].sort().values)
        # each kept value still sits beside its own feature index
        lookup = dict(zip(top_indices[row].tolist(), top_acts[row].tolist()))
        assert all(lookup[i] == a for i, a in zip(kept_indices[row].tolist(), kept_acts[row].tolist()))
    for n in (None, 12, 50):
        acts, indices = select_top_n(top_acts, top_indices, n)
        assert torch.equal(acts, top_acts) and torch.equal(indices, top_indices)
    with pytest.raises(ValueError):
        select_top_n(top_acts, top_indices, 0)


@pytest.mark.parametrize("decode", DECODES)
def test_sum_pooling_and_interaction_hidden(decode: str):
    nfm = make_nfm().eval()
    top_acts, top_indices = random_codes()
    pooled = (nfm.embeddings[top_indices] * top_acts.unsqueeze(-1)).sum(dim=1)  # Σ f_i v_i, (B, k)
    with torch.no_grad():
        out = nfm(top_acts, top_indices, decode=decode, pooling="sum")
        assert_rel_close(out.interaction, nfm.mlp(pooled), 1e-5, "sum pooling")
        reference = nfm_reference(nfm, scatter_codes(top_acts, top_indices, NUM_FEATURES), pooling="sum")
        assert_rel_close(out.total, reference.total, 1e-5, "sum reference")
        rows = nfm.embeddings[top_indices] * top_acts.unsqueeze(-1)
        h = 0.5 * (rows.sum(dim=1).square() - rows.square().sum(dim=1))
        assert_rel_close(nfm.interaction_hidden(top_acts, top_indices, decode), nfm.mlp[1](h), 1e-5, "hidden")


def test_bad_arguments_are_refused():
    nfm = make_nfm()
    top_acts, top_indices = random_codes()
    with pytest.raises(ValueError):
        nfm(top_acts, top_indices, decode="auto")
    with pytest.raises(ValueError):
        nfm(top_acts, top_indices, pooling="mean")
    with pytest.raises(ValueError):
        nfm(top_acts[:, :-1], top_indices)


def test_init_statistics():
    torch.manual_seed(0)
    nfm = NFM(2_000, 64, embed_dim=50)
    assert nfm.embeddings.std().item() == pytest.approx(0.05, rel=0.03)
    assert nfm.linear_weight.std().item() == pytest.approx(0.01, rel=0.03)
    assert nfm.mlp[1].weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert nfm.mlp[3].weight.std().item() == pytest.approx(0.01, rel=0.05)
    for p in (nfm.embeddings, nfm.linear_weight, nfm.mlp[1].weight, nfm.mlp[3].weight):
        assert abs(p.mean().item()) < 1e-3
    for bias in (nfm.linear_bias, nfm.mlp[1].bias, nfm.mlp[3].bias):
        assert torch.count_nonzero(bias) == 0
    assert nfm.mlp[0].p == 0.15
    assert nfm.linear_weight.shape == (2_000, 64) and nfm.embeddings.shape == (2_000, 50)


@pytest.mark.parametrize("decode", DECODES)
def test_training_lowers_the_loss(decode: str):
    torch.manual_seed(0)
    nfm = NFM(NUM_FEATURES, D_MODEL, EMBED_DIM)
    top_acts, top_indices = random_codes(batch=32)
    target = torch.randn(32, D_MODEL, generator=torch.Generator().manual_seed(3))
    optimizer = torch.optim.Adam(nfm.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = (nfm(top_acts, top_indices, decode=decode).total - target).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
