import math

import pytest
import torch

from common.errors import UserError
from common.models.sae import TopKSAE, sae_reference
from common.runtime.regimes import autocast


@pytest.fixture
def sae_and_x():
    torch.manual_seed(0)
    sae = TopKSAE(d_model=32, num_features=200, k=12)
    sae.b_enc.data.normal_(0, 0.1)
    return sae, torch.randn(16, 32)


def test_exactly_k_nonzero_per_row(sae_and_x):
    sae, x = sae_and_x
    top_acts, top_indices = sae.encode(x)
    assert top_acts.shape == (16, 12)
    assert bool((top_acts > 0).all())  # this init and input give more than K positive pre-activations
    assert all(len(set(row.tolist())) == 12 for row in top_indices)
    assert sae.encode(x, k=5)[0].shape == (16, 5)


def test_k_larger_than_dictionary_is_refused():
    with pytest.raises(UserError, match="K=300"):
        TopKSAE(8, 200, 300)
    with pytest.raises(UserError):
        TopKSAE(8, 200, 10).encode(torch.randn(2, 8), k=201)


def test_tied_init_matches_pytorch_linear_default():
    torch.manual_seed(1)
    sae = TopKSAE(64, 1000, 20)
    bound = 1 / math.sqrt(1000)  # kaiming_uniform(a=√5) of a Linear(F, d) weight: U(-1/√F, 1/√F)
    assert float(sae.W_dec.detach().abs().max()) <= bound
    assert sae.W_enc is None and sae.encoder_weight is sae.W_dec
    assert float(sae.b_enc.detach().abs().max()) == 0.0
    mean_sq_norm = float((sae.W_dec.detach()**2).sum(1).mean())
    assert mean_sq_norm == pytest.approx(64 / (3 * 1000), rel=0.05)  # d/(3F), METHOD §7
    assert [name for name, _ in sae.named_parameters()] == ["W_dec", "b_enc"]


def test_untied_starts_as_a_copy():
    sae = TopKSAE(16, 100, 5, tied=False)
    assert torch.equal(sae.W_enc, sae.W_dec) and sae.W_enc.data_ptr() != sae.W_dec.data_ptr()


@pytest.mark.parametrize("mode", ["sparse", "dense"])
@pytest.mark.parametrize("tied", [True, False])
def test_decode_paths_equal_dense_reference(sae_and_x, mode, tied):
    sae, x = sae_and_x
    if not tied:
        sae = TopKSAE(32, 200, 12, tied=False)
    ref_sae = TopKSAE(32, 200, 12, tied=tied)
    ref_sae.load_state_dict(sae.state_dict())
    recon = sae(x, decode=mode).recon
    reference = sae_reference(ref_sae, x)
    torch.testing.assert_close(recon, reference, rtol=1e-5, atol=1e-6)
    recon.pow(2).sum().backward()
    reference.pow(2).sum().backward()
    for (name, p), q in zip(sae.named_parameters(), ref_sae.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("mode", ["sparse", "dense"])
def test_bf16_autocast_paths_close_to_reference(sae_and_x, mode):
    sae, x = sae_and_x
    with autocast("bf16", torch.device("cpu")):
        recon = sae(x, decode=mode).recon
    reference = sae_reference(sae, x)
    rel = float((recon.float() - reference).norm().detach() / reference.norm().detach())
    assert rel < 2e-2


def test_faithful_fp16_runs_and_is_finite(sae_and_x):
    sae, x = sae_and_x
    sae = sae.half()
    for mode in ("sparse", "dense"):
        recon = sae(x.half(), decode=mode).recon
        assert recon.dtype == torch.float16
        recon.float().pow(2).mean().backward()
        assert torch.isfinite(sae.W_dec.grad).all()
