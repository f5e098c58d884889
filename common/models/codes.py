"""Sparse codes as the SAE hands them over, ``top_acts`` / ``top_indices`` of shape (B, N), and the few operations
every model runs on them: the weighted sum of the active rows of a matrix, the dense (B, F) matrix they stand for,
and keeping the largest N of them."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def weighted_row_sum(top_acts: Tensor, top_indices: Tensor, rows: Tensor) -> Tensor:
    """``Σ_i acts_i · rows[idx_i]`` per row, (B, N) -> (B, rows' width), by embedding-bag, in the rows' dtype.

    Autocast is off because CUDA has no bf16 backward for ``embedding_bag`` with per-sample weights, and the codes are
    cast to the rows' dtype so that no autocast policy can lower the bag either.
    """
    with torch.autocast(device_type=rows.device.type, enabled=False):
        return F.embedding_bag(top_indices, rows, per_sample_weights=top_acts.to(rows.dtype), mode="sum")


def scatter_codes(top_acts: Tensor, top_indices: Tensor, num_features: int) -> Tensor:
    """(..., N) codes -> the dense (..., F) feature matrix, zero off the active set."""
    latent_acts = top_acts.new_zeros(*top_acts.shape[:-1], num_features)
    return latent_acts.scatter(-1, top_indices, top_acts)


def select_top_n(top_acts: Tensor, top_indices: Tensor, n: int | None) -> tuple[Tensor, Tensor]:
    """Keep the ``n`` largest of the K codes per row; ``None`` or ``n >= K`` keeps them all (no copy)."""
    if n is None or n >= top_acts.shape[-1]:
        return top_acts, top_indices
    if n < 1:
        raise ValueError(f"top-n must be at least 1, got {n}")
    # topk again rather than slicing: callers need not hand over codes sorted by value.
    kept_acts, positions = top_acts.topk(n, dim=-1)  # (B, n)
    return kept_acts, top_indices.gather(-1, positions)


def keep_top_n_dense(pre_acts: Tensor, n: int) -> Tensor:
    """(B, F) with the ``n`` largest entries per row kept and the rest zeroed, written densely (the references' way)."""
    nth_value = pre_acts.topk(n, dim=-1).values[:, -1:]
    return torch.where(pre_acts >= nth_value, pre_acts, torch.zeros_like(pre_acts))
