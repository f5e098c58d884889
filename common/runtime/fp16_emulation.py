"""The original's pure-fp16 regime (METHOD §5b) on a CPU, where fp16 matrix products are ~25x slower than fp32.

A GPU's fp16 GEMM reads fp16 operands, accumulates in fp32 and rounds the result to fp16. This mode does the same on
the CPU: every matrix product (and embedding-bag, the sparse decode's product) whose operands are fp16 is computed
in fp32 from those fp16 values and its result rounded to fp16. Parameters, gradients, activations and Adam's state
stay fp16 throughout; element-wise ops already run in fp32 and round to fp16 on the CPU, as on a GPU. The mode works
at the dispatcher, below autograd, so the backward's products are covered too.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

_aten = torch.ops.aten
# The products: what a GPU runs on tensor cores with fp32 accumulation. Composite ops (linear, matmul, einsum)
# reach the dispatcher as these.
PRODUCTS = frozenset({
    _aten.mm.default, _aten.addmm.default, _aten.bmm.default, _aten.baddbmm.default, _aten.mv.default,
    _aten.addmv.default, _aten.dot.default,
    _aten._embedding_bag.default, _aten._embedding_bag_forward_only.default,
    _aten._embedding_bag_backward.default, _aten._embedding_bag_dense_backward.default,
    _aten._embedding_bag_per_sample_weights_backward.default,
})


def _upcast(value: Any) -> Any:
    return value.float() if isinstance(value, torch.Tensor) and value.dtype == torch.float16 else value


class Fp16GemmEmulation(TorchDispatchMode):
    """fp16 products computed in fp32 and rounded to fp16; everything else untouched."""

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        half = any(isinstance(a, torch.Tensor) and a.dtype == torch.float16 for a in (*args, *kwargs.values()))
        if func not in PRODUCTS or not half:
            return func(*args, **kwargs)
        out = func(*tree_map(_upcast, args), **tree_map(_upcast, kwargs))
        return tree_map(lambda t: t.half() if isinstance(t, torch.Tensor) and t.dtype == torch.float32 else t, out)


@contextlib.contextmanager
def fp16_products(precision: str, device: torch.device) -> Iterator[None]:
    """The emulation for ``faithful-fp16`` on the CPU; nothing elsewhere (a GPU has fp16 tensor cores)."""
    if precision == "faithful-fp16" and device.type == "cpu":
        with Fp16GemmEmulation():
            yield
    else:
        yield
