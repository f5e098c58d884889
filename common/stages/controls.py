"""What the trained controls of stage 5 share (METHOD §14): the joint model they are compared with, loaded on the
same stage-1 normalization, and its squared errors per held-out window."""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from common.config.stages import JointConfig
from common.data.activations import NormStats
from common.errors import UserError
from common.models.joint import JointSAENFM
from common.models.loading import StageInput, load_joint
from common.models.sae import TopKSAE
from common.runtime.context import Runtime
from common.training.metrics import EVAL_BATCH_ROWS
from common.training.window_cis import rows_per_window
from common.training.window_errors import joint_row_errors, window_sums


class ComparedStage(Protocol):
    """A stage-5-shaped control: its settings, its stage-1 input and, once prepared, its held-out rows."""

    cfg: JointConfig
    sae1: tuple[TopKSAE, NormStats, StageInput] | None
    val_rows: Tensor
    norm: NormStats


def load_reference(stage: ComparedStage, path: str) -> tuple[JointSAENFM, StageInput]:
    """The joint model a control is compared with; both must share the normalization of one stage-1 SAE."""
    if stage.sae1 is None:
        raise UserError("a control takes --sae1_model_path: it and the joint model it is compared with must share "
                        "that SAE's normalization")
    joint, norm, source = load_joint(path)
    if not (torch.equal(norm.mean, stage.sae1[1].mean) and torch.equal(norm.std, stage.sae1[1].std)):
        raise UserError(f"{source.what} was trained with other normalization statistics than "
                        f"--sae1_model_path {stage.cfg.sae1_model_path}")
    return joint, source


def reference_errors(stage: ComparedStage, joint: JointSAENFM, rt: Runtime) -> dict[str, np.ndarray]:
    """The joint model's squared errors per held-out window: ``full``, ``sae_part``, ``sae_plus_linear``."""
    errors = joint_row_errors(joint.to(rt.device).eval(), stage.val_rows, stage.norm, rt.decode, EVAL_BATCH_ROWS)
    return {name: window_sums(values, rows_per_window(stage.cfg)) for name, values in errors.items()}


def verdict_text(verdict: dict[str, Any], rule: str, holds: bool) -> str:
    """A control's verdict figure with its 95% CI, its rule and whether it holds, as the scripts print it."""
    return (f"{100 * verdict['estimate']:.2f}% [{100 * verdict['low']:.2f}, {100 * verdict['high']:.2f}] 95% CI: "
            f"{rule}: {'holds' if holds else 'fails'}")
