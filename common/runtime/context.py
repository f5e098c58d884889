"""Where a stage's arithmetic runs: its device, its numerical regime, its decode path and (under torchrun) its
world, resolved once from its config (METHOD §9)."""
from __future__ import annotations

import dataclasses

import torch

from common.config.concepts import RunConfig
from common.runtime.distributed import ONE, World, join
from common.runtime.regimes import resolve_decode, resolve_device, resolve_precision


@dataclasses.dataclass
class Runtime:
    device: torch.device
    precision: str
    decode: str
    world: World = ONE


def runtime(cfg: RunConfig) -> Runtime:
    """The device, regimes and (under torchrun) the world of this process, whose process group starts here."""
    world, device = join(resolve_device(cfg.device))
    return Runtime(device, resolve_precision(cfg.precision, device), resolve_decode(cfg.decode, device), world)
