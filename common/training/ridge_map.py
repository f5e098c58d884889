"""A ridge map from the input activation x to the SAE's error (METHOD §14, after Engels et al. 2024, "Decomposing the
dark matter of sparse autoencoders"): scikit-learn's ``Ridge`` (intercept unpenalized), its penalty chosen on
training windows set aside for it, then refitted on every training window."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import Ridge
from torch import Tensor

from common.errors import UserError
from common.store.reads import REWRITE_HINT, load_tensors
from common.store.savers import atomic_save_safetensors

RIDGE_FILE = "ridge.safetensors"


@dataclass
class RidgeMap:
    """``x ↦ x coefᵀ + intercept``, (n, d_in) → (n, d_out), fp32."""

    coef: Tensor  # (d_out, d_in)
    intercept: Tensor  # (d_out,)
    alpha: float

    def predict(self, x: Tensor) -> Tensor:
        return x.float() @ self.coef.to(x.device).t() + self.intercept.to(x.device)

    def save(self, path: Path) -> None:
        atomic_save_safetensors({"coef": self.coef, "intercept": self.intercept,
                                 "alpha": torch.tensor([self.alpha], dtype=torch.float64)}, path)

    @classmethod
    def load(cls, path: Path) -> RidgeMap:
        tensors = load_tensors(path)
        if set(tensors) != {"coef", "intercept", "alpha"} or tensors["coef"].shape[0] != tensors["intercept"].shape[0]:
            raise UserError(f"{path} does not hold a ridge map (coef, intercept, alpha): {REWRITE_HINT}")
        return cls(tensors["coef"].float(), tensors["intercept"].float(), float(tensors["alpha"][0]))


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> RidgeMap:
    """argmin_{W, b} ‖x Wᵀ + b − y‖² + α ‖W‖² (Cholesky on xᵀx in float64: in float32 the Gram matrix of the
    activations is too ill-conditioned for the smaller penalties)."""
    model = Ridge(alpha=alpha, fit_intercept=True, solver="cholesky").fit(np.asarray(x, dtype=np.float64),
                                                                         np.asarray(y, dtype=np.float64))
    coef = np.atleast_2d(model.coef_)
    return RidgeMap(torch.from_numpy(np.ascontiguousarray(coef, dtype=np.float32)),
                    torch.from_numpy(np.atleast_1d(model.intercept_).astype(np.float32)), float(alpha))


def choose_alpha(x_fit: np.ndarray, y_fit: np.ndarray, x_slice: np.ndarray, y_slice: np.ndarray,
                 alphas: list[float]) -> tuple[float, dict[str, float]]:
    """The penalty whose fit on ``x_fit`` has the lowest MSE on the set-aside slice, and every penalty's slice MSE."""
    if not alphas or min(alphas) < 0:
        raise UserError(f"--alphas must be non-negative penalties, got {alphas}")
    scores = {}
    for alpha in alphas:
        prediction = fit_ridge(x_fit, y_fit, alpha).predict(torch.from_numpy(x_slice)).numpy()
        scores[f"{alpha:g}"] = float(np.mean(np.square(prediction.astype(np.float64) - y_slice)))
    best = min(alphas, key=lambda alpha: scores[f"{alpha:g}"])
    return best, scores
