"""common/runtime/context.py: ``runtime()`` resolves a config's device and its "auto" regimes (METHOD §9: on the CPU
fp32 and the sparse gather, on CUDA bf16 autocast and the dense matmul) and, outside torchrun, a world of one."""
from __future__ import annotations

import pytest
import torch

from common.config.presets import build_config
from common.errors import UserError
from common.runtime.context import Runtime, runtime
from common.runtime.distributed import ONE


@pytest.fixture(autouse=True)
def outside_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


def test_on_the_cpu_auto_is_fp32_and_the_sparse_gather():
    rt = runtime(build_config("kl14", {"device": "cpu"}))
    assert rt == Runtime(torch.device("cpu"), "fp32", "sparse", ONE)
    assert (rt.world.rank, rt.world.size) == (0, 1)


def test_no_device_is_cuda_where_present_else_the_cpu():
    rt = runtime(build_config("sae1", {}))
    expected = ("cuda", "bf16", "dense") if torch.cuda.is_available() else ("cpu", "fp32", "sparse")
    assert (rt.device.type, rt.precision, rt.decode) == expected


@pytest.mark.parametrize("precision, decode", [("bf16", "dense"), ("faithful-fp16", "sparse"), ("fp32", "dense")])
def test_a_regime_asked_for_is_kept(precision: str, decode: str):
    rt = runtime(build_config("sae2", {"device": "cpu", "precision": precision, "decode": decode}))
    assert (rt.device, rt.precision, rt.decode) == (torch.device("cpu"), precision, decode)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_for_without_cuda_is_one_error_line():
    with pytest.raises(UserError, match=r"^--device cuda requested but CUDA is not available on this machine$"):
        runtime(build_config("kl14", {"device": "cuda"}))
