"""Time the joint SAE + NFM training step at the paper's shapes: ours against the original's, in one run.

    python -m benchmarks.bench_joint_step [--device cpu|cuda] [--rounds 3] [--steps 3]

Both sides run the whole step: forward, MSE, backward, gradient clip at 1.0, Adam.
Ours is ``common.training.trainer.Trainer.train_step`` on ``common.models.joint.JointSAENFM`` with the device's defaults
(METHOD §9): one tied F × d SAE matrix, fp32 weights and Adam state, fused Adam, and on the CPU the gather
(embedding-bag) decode in fp32, on CUDA the dense decode under bf16 autocast. The original's step: an encoder
``Linear(d, F)`` whose weight is assigned a view of the decoder ``Linear(F, d)``'s (two parameters on one storage, two
Adam updates), the top-K codes scattered into a dense (B, F) matrix and decoded by matmul, the NFM's linear term a dense
``Linear(F, d)`` over all F, PyTorch's default Adam; on CUDA the model and the data in pure fp16, as the original ran.
Its interaction term materialized a (B, F, k) tensor, which does not fit at these shapes, so the baseline uses the
strongest dense formulation of it (``benchmarks.bench_nfm.DenseNFM``).

Each model with its Adam state is about 8 GB, so only one lives at a time: rounds alternate between the two, each
builds its model, runs one warm-up step (Adam's state is allocated there) and times ``--steps`` steps. Printed: the
median wall and CPU seconds per step of each and their ratios. Not run by CI; asserts nothing.

Run through ``common.stages.cli.run_cli`` as the numbered scripts are, so both sides get its huge pages for PyTorch's
CPU buffers (``THP_MEM_ALLOC_ENABLE``; ``=0`` in the environment turns them off). On a shared CPU ``OMP_WAIT_POLICY``
moves both sides too and must be set before Python starts: with other jobs on the cores, OpenMP's spinning threads stall
every parallel region (a 131k-element sort took 180-280 ms instead of 2.5 ms with ``PASSIVE``). The header prints both.
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.bench_nfm import DenseNFM
from common.config.concepts import TrainConfig
from common.models.codes import scatter_codes, select_top_n
from common.models.joint import JointSAENFM
from common.runtime.regimes import resolve_decode, resolve_device, resolve_precision
from common.stages.cli import run_cli
from common.training.joint_objective import joint_loss
from common.training.trainer import Trainer


class OriginalJoint(nn.Module):
    """The original's joint model as its training step exercised it (see the module docstring)."""

    def __init__(self, d_model: int, num_features: int, k: int, embed_dim: int, top_n: int) -> None:
        super().__init__()
        self.num_features, self.k, self.top_n = num_features, k, top_n
        self.encoder = nn.Linear(d_model, num_features)
        self.decoder = nn.Linear(num_features, d_model, bias=False)
        self.encoder.weight.data = self.decoder.weight.data.t()  # the original's tie: a view, two parameters
        nn.init.zeros_(self.encoder.bias)
        self.nfm = DenseNFM(num_features, d_model, embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        top_acts, top_indices = torch.relu(self.encoder(x)).topk(self.k, dim=-1)
        sae_recon = self.decoder(scatter_codes(top_acts, top_indices, self.num_features))
        return sae_recon + self.nfm(*select_top_n(top_acts, top_indices, self.top_n))


def timed(fn: Callable[[], None], device: torch.device) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds): on a shared CPU the second moves less with the other jobs' load."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, time.process_time() - start_cpu


def ours_step(args: argparse.Namespace, device: torch.device, x: Tensor, scratch: Path) -> Callable[[], None]:
    precision, decode = resolve_precision("auto", device), resolve_decode("auto", device)
    joint = JointSAENFM(args.d_model, args.num_features, args.k, args.embed_dim, args.top_n)
    trainer = Trainer(joint, TrainConfig(train_steps=10**9), scratch, device, precision,
                      lambda model, batch: joint_loss(model, batch[0], decode), batches=None, validate=None)
    return lambda: trainer.train_step((x,))


def original_step(args: argparse.Namespace, device: torch.device, x: Tensor, scratch: Path) -> Callable[[], None]:
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    model = OriginalJoint(args.d_model, args.num_features, args.k, args.embed_dim, args.top_n).to(device, dtype)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, eps=1e-5)
    x = x.to(dtype)

    def step() -> None:
        optimizer.zero_grad()
        loss = F.mse_loss(model(x), x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    return step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: CUDA when present)")
    parser.add_argument("--rounds", type=int, default=3, help="alternations; each builds both models once")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round, after one warm-up step")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--d_model", type=int, default=3_200)
    parser.add_argument("--num_features", type=int, default=50_000)
    parser.add_argument("--k", type=int, default=1_024)
    parser.add_argument("--top_n", type=int, default=512)
    parser.add_argument("--embed_dim", type=int, default=300)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.d_model, device=device)  # normalized activations are z-scores
    contenders = {"ours": ours_step, "original": original_step}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(args.rounds):
            for name, build in contenders.items():
                step = build(args, device, x, Path(scratch))
                step()
                times[name].extend(timed(step, device) for _ in range(args.steps))
                del step
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    wall = {name: statistics.median(t[0] for t in runs) for name, runs in times.items()}
    cpu = {name: statistics.median(t[1] for t in runs) for name, runs in times.items()}
    regimes = {"ours": f"{resolve_precision('auto', device)}, {resolve_decode('auto', device)} decode, "
                       "tied, fused Adam",
               "original": f"{'fp16' if device.type == 'cuda' else 'fp32'}, dense decode, tied by views, default Adam"}
    print(f"joint step at d {args.d_model}, F {args.num_features}, K {args.k}, top-N {args.top_n}, k {args.embed_dim}, "
          f"batch {args.batch}; device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
          f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}; "
          f"medians of {args.rounds} x {args.steps} alternated steps")
    print(f"{'step':<10}{'regime':<48}{'s/step':>9}{'CPU s/step':>12}")
    for name in contenders:
        print(f"{name:<10}{regimes[name]:<48}{wall[name]:>9.3f}{cpu[name]:>12.3f}")
    print(f"original / ours: {wall['original'] / wall['ours']:.2f}x in seconds per step, "
          f"{cpu['original'] / cpu['ours']:.2f}x in CPU seconds")


if __name__ == "__main__":
    run_cli(main)
