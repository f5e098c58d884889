"""Decoder geometry (METHOD §6): norms, blocked Gram/cosine statistics and the two PCA definitions.

Decoders are (F, d) tensors whose ROW i is feature i's decoder vector (the paper's "column").
"""
from __future__ import annotations

import logging
import math

import numpy as np
import torch
from sklearn.utils.extmath import randomized_svd

from common.stats import describe

logger = logging.getLogger(__name__)

VALID_THRESHOLD = 1e-6
VARIANCE_TARGET = 0.9


def squared_norms(W_dec: torch.Tensor) -> torch.Tensor:
    """Per-feature squared decoder norm, (F,), accumulated in float64 so fp16 decoders do not lose it."""
    return torch.linalg.vector_norm(W_dec, dim=1, dtype=torch.float64).square()


def valid_features(W_dec: torch.Tensor, threshold: float = VALID_THRESHOLD) -> torch.Tensor:
    """Bool mask of features whose squared norm exceeds ``threshold`` (dead/zeroed rows have no direction)."""
    return squared_norms(W_dec) > threshold


def _drop_invalid(vectors: torch.Tensor, threshold: float) -> tuple[torch.Tensor, int]:
    mask = valid_features(vectors, threshold)
    dropped = int((~mask).sum())
    if dropped:
        logger.info("dropping %d of %d features with squared norm <= %g", dropped, len(mask), threshold)
    return vectors[mask], dropped


class _OffDiagAccumulator:
    """Running float64 moments of one matrix's off-diagonal entries, kept on the device to avoid per-block syncs."""

    def __init__(self, device: torch.device) -> None:
        zero = torch.zeros((), dtype=torch.float64, device=device)
        self.total, self.total_sq, self.total_abs, self.max_abs = zero.clone(), zero.clone(), zero.clone(), zero.clone()
        self.count = 0

    def add(self, block: torch.Tensor, n_offdiag: int, weight: int = 1) -> None:
        """``weight`` 2 counts each entry for its mirror image too. Diagonal entries must already be zero.

        Row sums in the block's dtype (cascade-summed, and fused norms: no temporary block), totals in float64.
        """
        self.total += block.sum(dim=1).sum(dtype=torch.float64) * weight
        self.total_sq += torch.linalg.vector_norm(block, 2, dim=1).to(torch.float64).square().sum() * weight
        self.total_abs += torch.linalg.vector_norm(block, 1, dim=1).sum(dtype=torch.float64) * weight
        low, high = torch.aminmax(block)
        self.max_abs = torch.maximum(self.max_abs, torch.maximum(-low, high).to(torch.float64))
        self.count += n_offdiag * weight

    def summary(self) -> dict:
        n = self.count
        total, total_sq = self.total.item(), self.total_sq.item()
        mean = total / n if n else float("nan")
        # Population (ddof=0) std; the cancellation is harmless in float64 since the entries sit near zero.
        var = max(total_sq / n - mean * mean, 0.0) if n else float("nan")
        return {
            "count": n,
            "frobenius": math.sqrt(total_sq),
            "mean": mean,
            "mean_abs": self.total_abs.item() / n if n else float("nan"),
            "std": math.sqrt(var),
            "max_abs": self.max_abs.item(),
        }


def _cosine_bin_counts(cosines: torch.Tensor, bins: int) -> torch.Tensor:
    """Counts in ``bins`` equal bins over [-1, 1]: bin j holds (c + 1)·bins/2 in [j, j+1), c = 1 in the last.

    Overwrites ``cosines``. Arithmetic binning instead of a search over the edges: 6x faster, and the same
    counts as ``np.histogram`` on those edges except for a value within rounding of an edge.
    """
    positions = cosines.add_(1.0).mul_(bins / 2).clamp_(0, bins - 1)  # non-negative, so truncation is floor
    return torch.bincount(positions.to(torch.int32).flatten(), minlength=bins)


def gram_offdiag_stats(
    vectors: torch.Tensor,
    block_size: int = 4096,
    cosine_bins: int = 2000,
    threshold: float = VALID_THRESHOLD,
) -> dict:
    """Off-diagonal statistics of the raw Gram ``V Vᵀ`` and of the cosine matrix, one row block at a time.

    Features with squared norm <= ``threshold`` are dropped first. Never builds the F×F matrix: each
    block is at most (block_size, F), and by symmetry a block meets only the columns from its own first
    row on, which halves the work. The cosine histogram has ``cosine_bins`` equal bins over [-1, 1]
    (fine by default, since random directions in d dimensions only spread by about 1/sqrt(d)).

    Returns ``n_features``, ``n_dropped``, ``raw`` and ``cosine`` (each: ``count``, ``frobenius``,
    ``mean``, ``mean_abs``, ``std`` (ddof=0), ``max_abs``), ``diagonal`` (``describe`` of the squared
    norms) and ``cosine_histogram`` (``edges`` (bins+1,), ``counts`` (bins,) as numpy arrays).
    """
    V, dropped = _drop_invalid(vectors, threshold)
    if V.dtype not in (torch.float32, torch.float64):
        V = V.float()
    n = V.shape[0]
    norms = torch.linalg.vector_norm(V, dim=1)
    counts = torch.zeros(cosine_bins, dtype=torch.int64, device=V.device)
    zero_bin = cosine_bins // 2  # where the zeroed diagonal entries land, taken back out below
    raw, cosine = _OffDiagAccumulator(V.device), _OffDiagAccumulator(V.device)

    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        width = stop - start
        rows = torch.arange(width, device=V.device)
        gram = V[start:stop] @ V[start:].T  # (width, n - start); column j is feature start + j
        cos = (gram / norms[start:stop, None] / norms[None, start:]).clamp_(-1.0, 1.0)
        gram[rows, rows] = 0.0
        cos[rows, rows] = 0.0
        # The square left part holds both triangles of this block's diagonal tile; the rest stands for its mirror too.
        for part, weight, n_offdiag in ((slice(0, width), 1, width * (width - 1)),
                                        (slice(width, None), 2, width * (n - stop))):
            if n_offdiag:
                raw.add(gram[:, part], n_offdiag, weight)
                cosine.add(cos[:, part], n_offdiag, weight)
        del gram  # free it before the binning below: at F = 50,000 a block is ~0.8 GB
        counts += _cosine_bin_counts(cos[:, :width], cosine_bins)
        counts += 2 * _cosine_bin_counts(cos[:, width:], cosine_bins)
        counts[zero_bin] -= width

    edges = torch.linspace(-1.0, 1.0, cosine_bins + 1, dtype=torch.float64)
    return {
        "n_features": n,
        "n_dropped": dropped,
        "raw": raw.summary(),
        "cosine": cosine.summary(),
        "diagonal": describe(squared_norms(V).cpu().numpy()),
        "cosine_histogram": {"edges": edges.numpy(), "counts": counts.cpu().numpy()},
    }


def _pca_result(definition: str, n_features: int, n_dropped: int, variances: np.ndarray, **extra: int) -> dict:
    """The figures both PCA definitions report, from their component variances (largest first)."""
    ratio = variances / variances.sum()
    cumulative = np.cumsum(ratio)
    components_90 = int(min(np.searchsorted(cumulative, VARIANCE_TARGET, side="left") + 1, len(cumulative)))
    return {"definition": definition, "n_features": n_features, "n_dropped": n_dropped, **extra,
            "explained_variance_ratio": ratio, "cumulative": cumulative, "components_90": components_90}


def pca_exact(vectors: torch.Tensor, threshold: float = VALID_THRESHOLD) -> dict:
    """Standard PCA: centred rows, eigenvalues of the d×d covariance, fractions of the TOTAL variance.

    Returns ``definition``, ``n_features``, ``n_dropped``, ``explained_variance_ratio`` and
    ``cumulative`` (numpy, (d,)) and ``components_90`` (the fewest components reaching 90%).
    """
    V, dropped = _drop_invalid(vectors, threshold)
    centred = V.to(torch.float64) - V.to(torch.float64).mean(dim=0)
    covariance = centred.T @ centred / max(V.shape[0] - 1, 1)
    eigenvalues = torch.linalg.eigvalsh(covariance).flip(0).clamp_(min=0.0).cpu().numpy()
    return _pca_result("standard: centred, eigenvalues of the covariance, fraction of total variance", V.shape[0],
                       dropped, eigenvalues)


def pca_original(
    vectors: torch.Tensor,
    n_components: int = 1000,
    seed: int = 0,
    threshold: float = VALID_THRESHOLD,
) -> dict:
    """The original script's PCA: randomized SVD of the UNCENTRED rows, σ² normalized over the kept top components only.

    Its "90%" is 90% of that truncated sum, so it is not a fraction of the total variance.
    Returns the same keys as ``pca_exact`` plus ``n_components`` (min(n_components, d, F)).
    """
    V, dropped = _drop_invalid(vectors, threshold)
    matrix = V.detach().to(torch.float64).cpu().numpy()
    k = min(n_components, *matrix.shape)
    _, singular_values, _ = randomized_svd(matrix, n_components=k, random_state=seed)
    return _pca_result("original: randomized SVD of uncentred rows, σ² over the sum of the top components only",
                       matrix.shape[0], dropped, singular_values**2, n_components=k)
