"""Adam with fp16's underflow of the second moment and nothing else of fp16 (METHOD §5b, the study's regime
question): in the original's pure-fp16 Adam, v = β2·v + (1 − β2)·g² falls below fp16's smallest subnormal for
nearly every gradient and is stored as zero, so the step becomes lr·m̂ / eps. This optimizer keeps every tensor in
the parameters' own dtype (fp32) and sets v to zero wherever it is below that subnormal, before the update uses it.
torch's Adam has no such option; every other line follows its single-tensor step."""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

FP16_SMALLEST_SUBNORMAL = 2.0**-24  # ≈ 5.96e-8: anything smaller is stored as 0 in fp16


class FlushedAdam(torch.optim.Adam):
    """``torch.optim.Adam`` (no weight decay, AMSGrad or maximize) whose second-moment entries below
    ``flush_below`` are set to zero at every step; its state and state dict are Adam's, so a run resumes the same
    way. ``flushed_fraction`` is the share of entries zeroed at the last step."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float, betas: tuple[float, float], eps: float,
                 flush_below: float = FP16_SMALLEST_SUBNORMAL) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, foreach=False)
        self.flush_below = flush_below
        self.flushed_fraction = 0.0

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # noqa: D102 (Adam's)
        flushed = total = 0
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
                underflow = exp_avg_sq < self.flush_below
                exp_avg_sq.masked_fill_(underflow, 0.0)
                flushed, total = flushed + int(underflow.sum()), total + underflow.numel()
                step_size = group["lr"] / (1 - beta1**step)
                denom = (exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5).add_(group["eps"])
                param.addcdiv_(exp_avg, denom, value=-step_size)
        self.flushed_fraction = flushed / total if total else 0.0
