"""The CPU's emulation of the original's pure-fp16 regime (METHOD §5b): fp16 products computed in fp32 and rounded to
fp16, forward and backward, matching true fp16 arithmetic within fp16 rounding."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from common.config.concepts import TrainConfig
from common.models.sae import TopKSAE
from common.runtime.fp16_emulation import Fp16GemmEmulation
from common.training.trainer import Trainer

FP16_ULP = 2.0**-10  # fp16's relative spacing: one unit in the last place at 1.0


def _within_one_rounding(got: torch.Tensor, exact: torch.Tensor) -> bool:
    """``got`` is ``exact`` rounded to fp16, give or take one unit where the fp32 sum sits at a rounding boundary: at
    most 1.5 units of ``exact``'s own spacing, half for the rounding and one for the neighbour."""
    correctly_rounded = (got == exact.half()).double().mean()
    off_by = (got.double() - exact).abs() / exact.abs().clamp_min(2.0**-14)
    return bool(correctly_rounded > 0.99 and off_by.max() <= 1.5 * FP16_ULP)


def test_products_are_fp32_sums_of_the_fp16_values_rounded_once() -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 300).half().requires_grad_()
    weight = torch.randn(40, 300).half().requires_grad_()
    grad_out = torch.randn(16, 40).half()
    with Fp16GemmEmulation():
        out = F.linear(x, weight)
        out.backward(grad_out)
    # by hand: float64 sums of the fp16 operands, rounded to fp16
    x64, w64, g64 = x.detach().double(), weight.detach().double(), grad_out.double()
    assert out.dtype == x.grad.dtype == weight.grad.dtype == torch.float16
    for got, exact in ((out.detach(), x64 @ w64.T), (x.grad, g64 @ w64), (weight.grad, g64.T @ x64)):
        assert _within_one_rounding(got, exact)


def test_emulation_matches_true_fp16_within_rounding() -> None:
    torch.manual_seed(1)
    x, weight = torch.randn(64, 200).half(), torch.randn(200, 100).half()
    exact = x.double() @ weight.double()
    with Fp16GemmEmulation():
        emulated = x @ weight
    true_fp16 = x @ weight  # the CPU's own (slow) fp16 product
    assert _within_one_rounding(emulated, exact) and _within_one_rounding(true_fp16, exact)
    assert (emulated != true_fp16).double().mean() < 0.01


def _trained_sae(emulate: bool, monkeypatch, tmp_path) -> TopKSAE:
    """One faithful-fp16 Trainer step (sparse decode, fp16 Adam state) on a fixed batch: later steps would let a
    rounding flip one top-k choice and diverge, which says nothing about the arithmetic."""
    if not emulate:
        monkeypatch.setattr("common.training.trainer.fp16_products", lambda *_: contextlib.nullcontext())
        monkeypatch.setattr("common.runtime.regimes.fp16_products", lambda *_: contextlib.nullcontext())
    torch.manual_seed(2)
    sae = TopKSAE(32, 256, 8)
    x = torch.randn(128, 32)
    trainer = Trainer(sae, TrainConfig(train_steps=100), tmp_path, torch.device("cpu"), "faithful-fp16",
                      lambda model, batch: (F.mse_loss(model(batch[0].half(), decode="sparse").recon.float(),
                                                       batch[0]), {}), None, None)
    products = []  # every fp16 product the emulation computed: the backward's must be among them
    spy = Fp16GemmEmulation.__torch_dispatch__
    monkeypatch.setattr(Fp16GemmEmulation, "__torch_dispatch__",
                        lambda mode, func, *rest: (products.append(func), spy(mode, func, *rest))[1])
    trainer.train_step((x,))
    monkeypatch.undo()
    if emulate:
        aten = torch.ops.aten  # the sparse decode's backward products run only in the backward
        assert {aten._embedding_bag_backward.default, aten._embedding_bag_per_sample_weights_backward.default,
                aten.addmm.default} <= set(products)
    assert all(state["exp_avg"].dtype == torch.float16 for state in trainer.optimizer.state.values())
    return trainer.model


def test_a_faithful_fp16_training_run_follows_true_fp16(monkeypatch, tmp_path) -> None:
    emulated = _trained_sae(True, monkeypatch, tmp_path / "emulated")
    true_fp16 = _trained_sae(False, monkeypatch, tmp_path / "true")
    assert emulated.W_dec.dtype == torch.float16
    torch.manual_seed(2)  # the initial weights again: compare the updates, which the regime shapes
    initial = TopKSAE(32, 256, 8)
    update_emulated = emulated.W_dec.double() - initial.W_dec.half().double()
    update_true = true_fp16.W_dec.double() - initial.W_dec.half().double()
    # Adam's second moment underflowed, so the step is lr/eps times the first moment (§5b): far above lr itself
    assert update_true.abs().max() > 100 * 1e-4
    assert (update_emulated - update_true).norm() / update_true.norm() < 4 * FP16_ULP
