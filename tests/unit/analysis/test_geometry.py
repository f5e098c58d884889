"""Blocked Gram statistics against the full matrix, and both PCA definitions against direct computations."""
import numpy as np
import pytest
import torch

from common.analysis.geometry import gram_offdiag_stats, pca_exact, pca_original, squared_norms, valid_features


def _offdiag_reference(matrix: np.ndarray) -> dict:
    off = matrix[~np.eye(len(matrix), dtype=bool)]
    return {
        "count": off.size,
        "frobenius": np.sqrt((off**2).sum()),
        "mean": off.mean(),
        "mean_abs": np.abs(off).mean(),
        "std": off.std(),
        "max_abs": np.abs(off).max(),
    }


def test_squared_norms_and_valid_mask():
    W = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1e-4, 0.0], [0.1, 0.0]])
    assert torch.allclose(squared_norms(W), torch.tensor([25.0, 0.0, 1e-8, 0.01], dtype=torch.float64))
    assert valid_features(W).tolist() == [True, False, False, True]


def test_orthogonal_rows_have_zero_offdiagonals():
    q, _ = torch.linalg.qr(torch.randn(32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    scales = torch.linspace(0.5, 2.0, 20, dtype=torch.float64)
    W = q[:20] * scales[:, None]
    result = gram_offdiag_stats(W, block_size=7)
    assert result["n_features"] == 20 and result["n_dropped"] == 0
    for kind in ("raw", "cosine"):
        assert result[kind]["count"] == 20 * 19
        assert result[kind]["max_abs"] < 1e-12
        assert result[kind]["frobenius"] < 1e-12
    assert result["diagonal"]["mean"] == pytest.approx(float((scales**2).mean()))
    assert result["diagonal"]["max"] == pytest.approx(4.0)
    assert result["diagonal"]["min"] == pytest.approx(0.25)


@pytest.mark.parametrize("block_size", [1, 5, 7, 37, 4096])
def test_blocked_stats_equal_full_matrix(block_size):
    rng = np.random.default_rng(1)
    # a shared offset makes the means non-zero
    V = rng.normal(size=(37, 16)) * rng.uniform(0.2, 2.0, size=(37, 1)) + 0.3
    with_invalid = np.vstack([V[:10], np.zeros((1, 16)), V[10:], np.full((1, 16), 1e-5)])
    result = gram_offdiag_stats(torch.from_numpy(with_invalid), block_size=block_size)

    gram = V @ V.T
    norms = np.linalg.norm(V, axis=1)
    cosine = np.clip(gram / np.outer(norms, norms), -1.0, 1.0)
    assert result["n_features"] == 37 and result["n_dropped"] == 2
    for kind, matrix in (("raw", gram), ("cosine", cosine)):
        expected = _offdiag_reference(matrix)
        assert result[kind]["count"] == expected["count"]
        for key in ("frobenius", "mean", "mean_abs", "std", "max_abs"):
            assert result[kind][key] == pytest.approx(expected[key], rel=1e-10, abs=1e-12), (kind, key)

    hist = result["cosine_histogram"]
    expected_counts, _ = np.histogram(cosine[~np.eye(37, dtype=bool)], bins=hist["edges"])
    np.testing.assert_array_equal(hist["counts"], expected_counts)
    assert hist["counts"].sum() == 37 * 36
    assert result["diagonal"]["mean"] == pytest.approx((norms**2).mean())


def test_pca_exact_recovers_known_spectrum():
    rng = np.random.default_rng(2)
    n, d = 500, 6
    spectrum = np.array([5.0, 3.0, 1.2, 0.5, 0.2, 0.1])  # cumulative 0.5, 0.8, 0.92, ...: 3 components for 90%
    # Exactly centred, orthonormal columns make the sample covariance equal the chosen spectrum, not just near it.
    white = rng.normal(size=(n, d))
    white, _ = np.linalg.qr(white - white.mean(axis=0))
    rotation, _ = np.linalg.qr(rng.normal(size=(d, d)))
    data = np.sqrt(n - 1) * white * np.sqrt(spectrum) @ rotation.T + 10.0  # the offset must not count as variance

    result = pca_exact(torch.from_numpy(data))
    np.testing.assert_allclose(result["explained_variance_ratio"], spectrum / spectrum.sum(), atol=1e-10)
    assert result["components_90"] == 3
    assert result["cumulative"][-1] == pytest.approx(1.0)
    assert "centred" in result["definition"]


@pytest.mark.parametrize("n_components", [1000, 4])
def test_pca_original_matches_direct_svd(n_components):
    rng = np.random.default_rng(3)
    left, _ = np.linalg.qr(rng.normal(size=(60, 12)))
    right, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    singular = np.array([10.0, 8.0, 6.0, 5.0] + [0.1] * 8)  # a clear gap keeps the randomized SVD exact enough
    V = left * singular @ right.T + 0.5  # uncentred on purpose

    result = pca_original(torch.from_numpy(V), n_components=n_components)
    k = min(n_components, 12)
    s = np.linalg.svd(V, compute_uv=False)[:k]
    expected = s**2 / (s**2).sum()
    assert result["n_components"] == k
    np.testing.assert_allclose(result["explained_variance_ratio"], expected, rtol=1e-6)
    assert result["components_90"] == int(np.argmax(np.cumsum(expected) >= 0.9)) + 1
    assert result["cumulative"][-1] == pytest.approx(1.0)


def test_two_pca_definitions_differ_on_uncentred_data():
    rng = np.random.default_rng(4)
    V = torch.from_numpy(rng.normal(size=(200, 10)) + 3.0)
    exact, original = pca_exact(V), pca_original(V)
    # The uncentred mean direction dominates the original's spectrum; centring removes it.
    assert original["explained_variance_ratio"][0] > 0.5 > exact["explained_variance_ratio"][0]
    assert exact["definition"] != original["definition"]
