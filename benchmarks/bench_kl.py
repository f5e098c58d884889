"""Tokens per second of the KL evaluator against the original's way, in one run (METHOD §9).

    python -m benchmarks.bench_kl                                      # SmolLM2 layer 15, cpu preset shapes
    python -m benchmarks.bench_kl --model tiny-random-llama --layer 2 --features 1000 --k 20 --sae_k 5 --nfm_k 6

Both ways evaluate the same windows with the same patches (part14's four conditions on a random SAE + NFM, the
ε-random baselines at the SAE's and each condition's own norm): ours runs the blocks before the layer once per batch
and only the later blocks per patch, at ``--batch_size``; the original's re-runs the whole model for every patch, at
batch 4. Reported: medians of alternated repeats after a warm-up, and the largest difference between the two ways'
per-position values. Not run by CI; asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common.data.activations import NormStats  # noqa: E402
from common.data.text import WindowedText, resolve_text
from common.kl.conditions import sequential_conditions
from common.kl.evaluator import PatchingEvaluator  # noqa: E402
from common.lm.hooks import capture_layer  # noqa: E402
from common.lm.loading import load_lm
from common.models.nfm import NFM  # noqa: E402
from common.models.sae import TopKSAE  # noqa: E402
from common.models.settings import trained_settings
from common.registry import SMOLLM2_GGUF
from common.runtime.regimes import resolve_decode, resolve_device  # noqa: E402

ORIGINAL_BATCH = 4


def run(evaluator: PatchingEvaluator, windows: torch.Tensor, batch_size: int) -> tuple[float, dict[str, np.ndarray]]:
    """Seconds for every window, and the per-position columns (for the agreement check)."""
    device = next(evaluator.model.parameters()).device
    columns: dict[str, list[np.ndarray]] = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for first in range(0, windows.shape[0], batch_size):
        batch = windows[first : first + batch_size].to(device)
        for name, values in evaluator.evaluate(batch, list(range(first, first + batch.shape[0]))).items():
            columns.setdefault(name, []).append(values)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, {name: np.concatenate(parts) for name, parts in columns.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=SMOLLM2_GGUF)
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--device", default=None)
    parser.add_argument("--windows", type=int, default=16, help="windows of wiki.test.raw per timed run")
    parser.add_argument("--batch_size", type=int, default=32, help="our batch (the original's is 4)")
    parser.add_argument("--features", type=int, default=9_000)
    parser.add_argument("--k", type=int, default=184)
    parser.add_argument("--sae_k", type=int, default=45, help="inference K and top-N (the cpu preset's stage 2)")
    parser.add_argument("--nfm_k", type=int, default=54)
    parser.add_argument("--epsilon_draws", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    device = resolve_device(args.device)
    lm = load_lm(args.model, device)
    text = WindowedText(resolve_text(None, "cpu", "eval"), lm.tokenizer, 128, lm.bos_token_id if lm.adds_bos else None)
    windows = torch.stack([text.get(i) for i in text.available(0, args.windows)])

    torch.manual_seed(0)
    sae = TopKSAE(lm.d_model, args.features, args.k).to(device).eval()
    nfm = NFM(args.features, lm.d_model, args.nfm_k).to(device).eval()
    captured = capture_layer(lm.model, windows[:4].to(device), args.layer)
    norm = NormStats.compute(captured.reshape(-1, lm.d_model).cpu()).to(device)
    reconstruct = sequential_conditions(sae, nfm, norm, trained_settings(args.sae_k, args.sae_k),
                                        resolve_decode("auto", device))
    ways = {
        f"shared prefix, batch {args.batch_size}": (
            PatchingEvaluator(lm.model, args.layer, reconstruct, "sae", args.epsilon_draws), args.batch_size),
        f"original (whole model per patch), batch {ORIGINAL_BATCH}": (
            PatchingEvaluator(lm.model, args.layer, reconstruct, "sae", args.epsilon_draws, shared_prefix=False),
            ORIGINAL_BATCH),
    }
    for evaluator, batch_size in ways.values():  # warm-up
        run(evaluator, windows[:batch_size], batch_size)
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    outputs: dict[str, dict[str, np.ndarray]] = {}
    for _ in range(args.repeats):
        for name, (evaluator, batch_size) in ways.items():
            elapsed, outputs[name] = run(evaluator, windows, batch_size)
            seconds[name].append(elapsed)

    patches = 4 + args.epsilon_draws * 4
    tokens = windows.numel()
    print(f"KL evaluator, {lm.model_id} layer {args.layer} on {device}: {args.windows} windows x 128 tokens, "
          f"{patches} patched passes + 1 clean per batch (F {args.features}, K {args.sae_k}, {args.repeats} repeats)")
    rates = {}
    for name, times in seconds.items():
        rates[name] = tokens / statistics.median(times)
        print(f"  {name:<45} {rates[name]:>9.1f} tokens/s  (median of {', '.join(f'{t:.1f}' for t in times)} s)")
    ours, original = rates.values()
    first, second = outputs.values()
    worst = max(float(np.max(np.abs(first[name] - second[name]))) for name in first)
    print(f"  speed-up {ours / original:.2f}x; "
          f"largest difference between the two ways' per-position values {worst:.2e}")


if __name__ == "__main__":
    main()
