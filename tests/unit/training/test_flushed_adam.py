"""FlushedAdam (METHOD §5b): torch's Adam when nothing underflows, fp16's Adam step where v would underflow, and the
trainer's option refused together with the fp16 regime it imitates."""
import pytest
import torch

from common.config.concepts import TrainConfig
from common.errors import UserError
from common.training.flushed_adam import FP16_SMALLEST_SUBNORMAL, FlushedAdam
from common.training.trainer import make_adam

ADAM = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-5)


def _steps(optimizer: torch.optim.Optimizer, param: torch.nn.Parameter, grads: list[torch.Tensor]) -> torch.Tensor:
    for grad in grads:
        param.grad = grad.to(param.dtype).clone()
        optimizer.step()
    return param.detach().clone()


def test_without_a_flush_it_is_torch_adam_bit_for_bit():
    torch.manual_seed(0)
    start = torch.randn(40, 30)
    grads = [torch.randn(40, 30) * 10 ** torch.empty(1).uniform_(-6, 0) for _ in range(25)]
    ours, theirs = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    ours_end = _steps(FlushedAdam([ours], flush_below=0.0, **ADAM), ours, grads)
    theirs_end = _steps(torch.optim.Adam([theirs], foreach=False, **ADAM), theirs, grads)
    assert torch.equal(ours_end, theirs_end)


def test_an_underflowing_second_moment_gives_fp16_adams_step():
    """v = (1 - β2) g² = 1e-11 < 2^-24 for g = 1e-4: the step is lr · m̂ / eps = lr · g / eps, as in fp16's Adam;
    a large gradient's entry is untouched."""
    grad = torch.tensor([1e-4, -1e-4, 1.0])
    ours = torch.nn.Parameter(torch.zeros(3))
    optimizer = FlushedAdam([ours], **ADAM)
    moved = _steps(optimizer, ours, [grad])
    assert moved[:2].tolist() == pytest.approx([-ADAM["lr"] * 1e-4 / ADAM["eps"], ADAM["lr"] * 1e-4 / ADAM["eps"]])
    assert moved[2].item() == pytest.approx(-ADAM["lr"] / (1 + ADAM["eps"]), rel=1e-6)
    assert optimizer.state[ours]["exp_avg_sq"][:2].tolist() == [0.0, 0.0]
    fp16 = torch.nn.Parameter(torch.zeros(3, dtype=torch.float16))
    native = _steps(torch.optim.Adam([fp16], foreach=False, **ADAM), fp16, [grad])
    torch.testing.assert_close(native[:2].float(), moved[:2], rtol=2e-3, atol=0)  # fp16's own rounding
    assert FP16_SMALLEST_SUBNORMAL == torch.finfo(torch.float16).smallest_normal * 2.0**-10


def test_the_flush_keeps_the_smallest_subnormal_and_zeroes_what_is_below():
    """v = 2^-24 exactly (what fp16 can still hold) stays; the next float below it goes."""
    below = float(torch.nextafter(torch.tensor(FP16_SMALLEST_SUBNORMAL), torch.tensor(0.0)))
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = FlushedAdam([param], lr=1e-3, betas=(0.9, 0.0), eps=1e-5)  # β2 = 0: v is g² itself
    param.grad = torch.tensor([FP16_SMALLEST_SUBNORMAL, below]).sqrt()
    optimizer.step()
    assert optimizer.state[param]["exp_avg_sq"][0] > 0 and optimizer.state[param]["exp_avg_sq"][1] == 0


def test_the_trainer_builds_it_only_outside_the_fp16_regime():
    params = [torch.nn.Parameter(torch.zeros(2))]
    cfg = TrainConfig(adam_flush_fp16_underflow=True)
    assert isinstance(make_adam(params, cfg, "fp32"), FlushedAdam)
    assert not isinstance(make_adam(params, TrainConfig(), "fp32"), FlushedAdam)
    with pytest.raises(UserError, match="faithful-fp16"):
        make_adam(params, cfg, "faithful-fp16")
