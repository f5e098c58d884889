"""Measured positions per second of the KL evaluator against the original's way, in one run (METHOD §9).

    python -m benchmarks.bench_kl                                      # SmolLM2 layer 15, cpu preset shapes
    python -m benchmarks.bench_kl --model tiny-random-llama --layer 2 --features 1000 --k 20 --sae_k 5 --nfm_k 6

Both ways evaluate the same windows with the same patches, every position measured: part14's four conditions (a
random SAE + NFM) and part18's four (a random joint model), each with the ε-random baselines at the reference's and
at each condition's own norm and the zero-ablation. Ours is ``PatchingEvaluator`` at the cpu preset's batch size. The
original's way is written out here and shares nothing with the evaluator: at batch 4, the whole model runs again for
every patch, with a hook that swaps the residual, and each patch's full log-softmax gives its KL and CEs. Reported:
medians of alternated repeats after a warm-up, the largest relative difference between the two ways' per-position
values, and as the last line ``kl evaluator: ours X pos/s, original's way Y pos/s, ratio R.RRx``. Not run by CI;
asserts nothing.
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

from benchmarks.kl_original_way import OriginalWay  # noqa: E402
from common.data.activations import NormStats  # noqa: E402
from common.data.text import WindowedText, resolve_text  # noqa: E402
from common.kl.conditions import joint_conditions, sequential_conditions  # noqa: E402
from common.kl.evaluator import PatchingEvaluator, Reconstruct  # noqa: E402
from common.lm.hooks import capture_layer  # noqa: E402
from common.lm.loading import load_lm  # noqa: E402
from common.models.joint import JointSAENFM  # noqa: E402
from common.models.nfm import NFM  # noqa: E402
from common.models.sae import TopKSAE  # noqa: E402
from common.models.settings import trained_settings  # noqa: E402
from common.registry import SMOLLM2_GGUF, STAGES  # noqa: E402
from common.runtime.regimes import resolve_decode, resolve_device  # noqa: E402
from common.runtime.resources import keep_freed_memory  # noqa: E402

ORIGINAL_BATCH = 4
Way = PatchingEvaluator | OriginalWay


def run(way: Way, windows: torch.Tensor, batch_size: int) -> tuple[tuple[float, float], dict[str, np.ndarray]]:
    """(wall seconds, this process's CPU seconds) for every window, and the per-position columns (for the agreement
    check). On a machine others load, the CPU seconds still count only this work."""
    device = next(way.model.parameters()).device
    columns: dict[str, list[np.ndarray]] = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    for first in range(0, windows.shape[0], batch_size):
        batch = windows[first : first + batch_size].to(device)
        for name, values in way.evaluate(batch, list(range(first, first + batch.shape[0]))).items():
            columns.setdefault(name, []).append(values)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start, time.process_time() - start_cpu)
    return seconds, {name: np.concatenate(parts) for name, parts in columns.items()}


def largest_difference(ours: dict[str, np.ndarray], original: dict[str, np.ndarray]) -> float:
    """The largest |ours − original| / (|original| + 1e-6) over every per-position value both ways wrote."""
    return max(float(np.max(np.abs(ours[name] - original[name]) / (np.abs(original[name]) + 1e-6)))
               for name in original if name not in ("window", "position"))


def build_conditions(args: argparse.Namespace, lm, device: torch.device,
                     windows: torch.Tensor) -> dict[str, tuple[Reconstruct, str]]:
    """part14's and part18's conditions on random models of the given shapes: name → (reconstruct, reference)."""
    torch.manual_seed(0)
    sae = TopKSAE(lm.d_model, args.features, args.k).to(device).eval()
    nfm = NFM(args.features, lm.d_model, args.nfm_k).to(device).eval()
    joint = JointSAENFM(lm.d_model, args.features, args.k, args.nfm_k, top_n=args.joint_top_n).to(device).eval()
    captured = capture_layer(lm.model, windows[:4].to(device), args.layer)
    norm = NormStats.compute(captured.reshape(-1, lm.d_model).cpu()).to(device)
    decode = resolve_decode("auto", device)
    return {
        "part14": (sequential_conditions(sae, nfm, norm, trained_settings(args.sae_k, args.sae_k), decode), "sae"),
        "part18": (joint_conditions(joint, norm, trained_settings(args.k, args.joint_top_n), decode), "joint_sae"),
    }


def main() -> None:
    cpu = STAGES["kl14"].presets["cpu"]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=SMOLLM2_GGUF)
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--device", default=None)
    parser.add_argument("--cache_dir", default=None, help="where the de-quantized GGUF model is kept between runs")
    parser.add_argument("--windows", type=int, default=8, help="windows of wiki.test.raw per timed run and stage")
    parser.add_argument("--batch_size", type=int, default=cpu["batch_size"], help="our batch (the original's is 4)")
    parser.add_argument("--features", type=int, default=9_000)
    parser.add_argument("--k", type=int, default=184)
    parser.add_argument("--sae_k", type=int, default=45, help="inference K and top-N (the cpu preset's stage 2)")
    parser.add_argument("--nfm_k", type=int, default=54)
    parser.add_argument("--joint_top_n", type=int, default=92)
    parser.add_argument("--epsilon_draws", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    keep_freed_memory()
    device = resolve_device(args.device)
    lm = load_lm(args.model, device, cache_dir=args.cache_dir)
    text = WindowedText(resolve_text(None, "cpu", "eval"), lm.tokenizer, 128, lm.bos_token_id if lm.adds_bos else None)
    windows = torch.stack([text.get(i) for i in text.available(0, args.windows)])
    ways: dict[str, tuple[Way, int]] = {}
    for stage, (reconstruct, reference) in build_conditions(args, lm, device, windows).items():
        ways[f"{stage}, ours, batch {args.batch_size}"] = (
            PatchingEvaluator(lm.model, args.layer, reconstruct, reference, args.epsilon_draws), args.batch_size)
        ways[f"{stage}, original's way, batch {ORIGINAL_BATCH}"] = (
            OriginalWay(lm.model, args.layer, reconstruct, reference, args.epsilon_draws), ORIGINAL_BATCH)
    for way, batch_size in ways.values():  # warm-up
        run(way, windows[:batch_size], batch_size)
    seconds: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    outputs: dict[str, dict[str, np.ndarray]] = {}
    for _ in range(args.repeats):
        for name, (way, batch_size) in ways.items():
            elapsed, outputs[name] = run(way, windows, batch_size)
            seconds[name].append(elapsed)

    positions = int(outputs[next(iter(ways))]["position"].size)
    print(f"KL evaluator, {lm.model_id} layer {args.layer} on {device}, {torch.get_num_threads()} threads, load "
          f"average {os.getloadavg()[0]:.1f}: {len(windows)} windows x {positions // len(windows)} measured positions "
          f"per stage, every position measured (F {args.features}, K {args.k}, {args.epsilon_draws} ε draws, "
          f"{args.repeats} repeats)")
    median = {name: [statistics.median(times[i] for times in seconds[name]) for i in (0, 1)] for name in ways}
    for name, times in seconds.items():
        print(f"  {name:<40} {positions / median[name][0]:>9.1f} pos/s, {positions / median[name][1]:>9.1f} pos per "
              f"CPU-s  (wall {', '.join(f'{t[0]:.1f}' for t in times)} s)")
    names = list(ways)
    for ours, original in zip(names[::2], names[1::2]):
        print(f"  {ours.split(',')[0]}: largest relative difference between the two ways' per-position values "
              f"{largest_difference(outputs[ours], outputs[original]):.1e}")
    rates = {way: [2 * positions / sum(median[name][i] for name in names if way in name) for i in (0, 1)]
             for way in ("ours", "original")}
    (ours_rate, ours_cpu), (original_rate, original_cpu) = rates["ours"], rates["original"]
    print(f"  per CPU-second: ours {ours_cpu:.1f}, original's way {original_cpu:.1f}, ratio "
          f"{ours_cpu / original_cpu:.2f}x")
    print(f"kl evaluator: ours {ours_rate:.1f} pos/s, original's way {original_rate:.1f} pos/s, "
          f"ratio {ours_rate / original_rate:.2f}x")


if __name__ == "__main__":
    main()
