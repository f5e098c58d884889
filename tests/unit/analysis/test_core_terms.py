"""SAEBench's core terms (METHOD §15) held to numpy written out here: explained variance about the mean (not about
zero), the per-token legacy one over batches of 2,048 rows, the shrinkage terms, and the largest cosines by blocks."""
import numpy as np
import pytest
import torch

from common.analysis import core_terms
from common.analysis.core_terms import CoreTerms, average_max_cosine, sae_terms
from common.data.activations import NormStats
from common.models.sae import TopKSAE


def _by_hand(x: np.ndarray, recon: np.ndarray, codes: np.ndarray, batch: int) -> dict[str, float]:
    error = ((x - recon) ** 2).sum(1)
    legacy = np.concatenate([1 - error[s : s + batch] / ((x[s : s + batch] - x[s : s + batch].mean(0)) ** 2).sum(1)
                             for s in range(0, len(x), batch)])
    norm_in, norm_out = np.linalg.norm(x, axis=1), np.linalg.norm(recon, axis=1)
    return {"explained_variance": 1 - error.mean() / x.var(axis=0).sum(),
            "explained_variance_legacy": legacy.mean(), "mse": error.mean(),
            "cossim": ((x * recon).sum(1) / (norm_in * norm_out)).mean(),
            "l2_norm_in": norm_in.mean(), "l2_norm_out": norm_out.mean(), "l2_ratio": (norm_out / norm_in).mean(),
            "relative_reconstruction_bias": (norm_out**2).sum() / (x * recon).sum(), "l1": np.abs(codes).sum(1).mean()}


def test_terms_equal_a_hand_computation_on_data_with_a_large_mean():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2500, 6)) * [1, 2, 3, 1, 1, 5] + 40.0  # a mean far from zero, as residual streams have
    recon = x + rng.normal(scale=0.8, size=x.shape)
    codes = rng.exponential(size=(2500, 3))
    terms = CoreTerms()
    for start in range(0, 2500, 2048):  # the callers' batches are the legacy batches
        terms.update(*(torch.tensor(a[start : start + 2048]) for a in (x, recon, codes)))
    got, expected = terms.compute(), _by_hand(x, recon, codes, 2048)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-9), key
    # about zero, the same error would look far better: the bug SAELens fixed
    assert 1 - ((x - recon) ** 2).sum(1).mean() / (x**2).sum(1).mean() > 0.99 > got["explained_variance"]


def test_average_max_cosine_by_blocks_equals_brute_force(monkeypatch):
    monkeypatch.setattr(core_terms, "COSINE_BLOCK", 3)
    w = torch.randn(8, 5, generator=torch.Generator().manual_seed(1))
    unit = (w / w.norm(dim=1, keepdim=True)).numpy()
    gram = unit @ unit.T
    expected = np.mean([max(gram[i, j] for j in range(8) if j != i) for i in range(8)])
    assert average_max_cosine(w) == pytest.approx(expected, rel=1e-6)


def test_sae_terms_run_the_sae_on_z_scored_rows_and_compare_in_raw_units():
    torch.manual_seed(0)
    sae = TopKSAE(6, 16, 3)
    rows = torch.randn(300, 6) * 3 + 10
    norm = NormStats(rows.mean(0), rows.std(0))
    got = sae_terms(sae, rows, norm, "dense")
    with torch.no_grad():
        out = sae(norm.normalize(rows))
    recon = norm.denormalize(out.recon).double().numpy()
    expected = _by_hand(rows.double().numpy(), recon, out.top_acts.double().numpy(), 2048)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-6), key
    assert got["k"] == 3 and got["rows"] == 300
