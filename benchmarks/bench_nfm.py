"""Time the NFM at the paper's shapes: our default path(s) on the device against the strongest dense formulation.

    python -m benchmarks.bench_nfm [--device cpu|cuda] [--repeats 5]

Both sides start from the same (B, N) codes with exactly N non-zeros per row. The dense side is a plain
``Linear(F, d)`` on the scattered (B, F) matrix with the interaction as ``(f@E)² − (f²)@(E²)``, in fp32; ours is
``common.models.nfm.NFM`` with the decode path(s) METHOD §9 picks for the device. Reported: forward+backward, and the
whole training step with fused Adam, as medians of alternated repeats after warm-up. Not run by CI; asserts nothing.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.models.codes import scatter_codes
from common.models.nfm import NFM
from common.runtime.regimes import autocast, resolve_device


class DenseNFM(nn.Module):
    """The baseline: the NFM as dense matmuls over the full (B, F) feature matrix."""

    def __init__(self, num_features: int, d_model: int, embed_dim: int) -> None:
        super().__init__()
        self.num_features = num_features
        self.linear = nn.Linear(num_features, d_model)
        self.embeddings = nn.Parameter(torch.randn(num_features, embed_dim) * 0.05)
        self.mlp = nn.Sequential(
            nn.Dropout(0.15), nn.Linear(embed_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, d_model)
        )

    def forward(self, top_acts: Tensor, top_indices: Tensor) -> Tensor:
        latent_acts = scatter_codes(top_acts, top_indices, self.num_features)  # (B, F)
        pooled = latent_acts @ self.embeddings
        h = 0.5 * (pooled.square() - latent_acts.square() @ self.embeddings.square())
        return self.linear(latent_acts) + self.mlp(h)


def random_codes(batch: int, n: int, num_features: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Exactly n distinct features per row, positive values sorted descending (as a TopK SAE hands them over)."""
    top_indices = torch.rand(batch, num_features, device=device).topk(n, dim=-1).indices  # (B, n)
    top_acts = torch.rand(batch, n, device=device).sort(dim=-1, descending=True).values + 0.1
    return top_acts, top_indices


def timed(fn: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def make_contender(
    model: nn.Module,
    forward: Callable[[], Tensor],
    target: Tensor,
    context: Callable[[], contextlib.AbstractContextManager],
) -> tuple[Callable[[], None], Callable[[], None]]:
    """(forward+backward, whole step) closures; each optimizer is fused Adam over fp32 master weights."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, eps=1e-5, fused=True)

    def fwd_bwd() -> None:
        model.zero_grad(set_to_none=True)
        with context():
            loss = F.mse_loss(forward(), target)
        loss.backward()

    def step() -> None:
        fwd_bwd()
        optimizer.step()

    return fwd_bwd, step


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: CUDA when present)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=130)
    parser.add_argument("--top_n", type=int, nargs="+", default=[512, 250])
    parser.add_argument("--num_features", type=int, default=50_000)
    parser.add_argument("--d_model", type=int, default=3_200)
    parser.add_argument("--embed_dim", type=int, default=300)
    parser.add_argument(
        "--thp", action="store_true",
        help="set THP_MEM_ALLOC_ENABLE=1: PyTorch backs CPU buffers of 2 MB and more with huge pages",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.thp:
        # On the CPU a fresh 640 MB gradient each step costs more in 4 kB page faults than in arithmetic.
        # PyTorch reads the variable at its first large allocation, which comes below.
        os.environ["THP_MEM_ALLOC_ENABLE"] = "1"
    device = resolve_device(args.device)
    torch.manual_seed(0)

    # Our default regime on the device (METHOD §9): sparse fp32 on the CPU; bf16 autocast, both decodes, on CUDA.
    ours_modes = [("sparse", "fp32")] if device.type == "cpu" else [("sparse", "bf16"), ("dense", "bf16")]
    ours = NFM(args.num_features, args.d_model, args.embed_dim).to(device)
    dense = DenseNFM(args.num_features, args.d_model, args.embed_dim).to(device)
    print(f"device {device}, threads {torch.get_num_threads()}, torch {torch.__version__}, "
          f"F {args.num_features}, d {args.d_model}, k {args.embed_dim}, batch {args.batch}, "
          f"median of {args.repeats} alternated repeats after {args.warmup} warm-up, "
          f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}")
    header = f"{'top-N':>5}  {'measure':<16} {'ours':<12} {'ours (s)':>9} {'dense fp32 (s)':>14} {'dense/ours':>10}"
    print(header)
    print("-" * len(header))
    for n in args.top_n:
        top_acts, top_indices = random_codes(args.batch, n, args.num_features, device)
        target = torch.randn(args.batch, args.d_model, device=device)
        contenders: dict[str, tuple[Callable[[], None], Callable[[], None]]] = {
            "dense": make_contender(dense,
                                    lambda top_acts=top_acts, top_indices=top_indices: dense(top_acts, top_indices),
                                    target, contextlib.nullcontext)
        }
        for decode, precision in ours_modes:
            contenders[f"{decode} {precision}"] = make_contender(
                ours,
                lambda decode=decode, top_acts=top_acts, top_indices=top_indices: (
                    ours(top_acts, top_indices, decode=decode).total),
                target,
                lambda precision=precision: autocast(precision, device),
            )
        times: dict[tuple[str, str], list[float]] = {}
        for repeat in range(args.warmup + args.repeats):
            for measure, which in (("forward+backward", 0), ("step (fused Adam)", 1)):
                for name, fns in contenders.items():
                    seconds = timed(fns[which], device)
                    if repeat >= args.warmup:
                        times.setdefault((measure, name), []).append(seconds)
        for measure in ("forward+backward", "step (fused Adam)"):
            baseline = statistics.median(times[(measure, "dense")])
            for name in contenders:
                if name == "dense":
                    continue
                ours_s = statistics.median(times[(measure, name)])
                print(f"{n:>5}  {measure:<16} {name:<12} {ours_s:>9.3f} {baseline:>14.3f} {baseline / ours_s:>9.2f}x")


if __name__ == "__main__":
    main()
