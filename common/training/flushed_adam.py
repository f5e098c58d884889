"""Adam with fp16's underflow of the second moment and nothing else of fp16 (METHOD §5b, the study's regime
question): in the original's pure-fp16 Adam, v = β2·v + (1 − β2)·g² falls below fp16's smallest subnormal for
nearly every gradient and is stored as zero, so the step becomes lr·m̂ / eps. This optimizer keeps every tensor in
the parameters' own dtype (fp32) and sets v to zero wherever it is below that subnormal, before the update uses it.
torch's Adam has no such option; every other line follows its single-tensor step."""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

FP16_SMALLEST_SUBNORMAL = 2.0**-24  # ≈ 5.96e-8: anything smaller is stored as 0 in fp16


class FlushedAdam(torch.optim.Adam):
    """``torch.optim.Adam`` (no weight decay, AMSGrad or maximize) whose second-moment entries below
    ``flush_below`` are set to zero at every step; its state and state dict are Adam's, so a run resumes the same
    way."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float, betas: tuple[float, float], eps: float,
                 flush_below: float = FP16_SMALLEST_SUBNORMAL) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, foreach=False)
        # threshold_ keeps what is strictly above its threshold: the largest float below flush_below keeps it too
        self.keep_above = float(torch.nextafter(torch.tensor(flush_below), torch.tensor(0.0))) if flush_below else -1.0

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # noqa: D102 (Adam's)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                grad, exp_avg, exp_avg_sq = param.grad, state["exp_avg"], state["exp_avg_sq"]
                state["step"] += 1
                step = float(state["step"])
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                F.threshold(exp_avg_sq, self.keep_above, 0.0, inplace=True)  # one pass: v < flush_below → 0
                step_size = group["lr"] / (1 - beta1**step)
                denom = (exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5).add_(group["eps"])
                param.addcdiv_(exp_avg, denom, value=-step_size)
