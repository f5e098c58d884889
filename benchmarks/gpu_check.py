"""One command for a lent GPU (METHOD §9): every stage of the tiny preset on CUDA, the decode and precision paths held
to the dense fp32 reference there, the SAE and joint training steps at the paper's shapes against the original's
pure-fp16 step, early-exit harvest and KL tokens per second, and each stage's peak memory at paper scale on a
random-weight model of OpenLLaMA-3B's shape (the budget: 20 GB of a 24 GB card). Prints one table; writes JSON.

    WIKITEXT_DIR=.gpu_data python -m benchmarks.gpu_check --out gpu_check.json      # on the GPU, under 5 minutes
    python -m benchmarks.gpu_check --smoke                                            # tiny shapes on the CPU

Imports neither datasets, gguf, statsmodels nor sae-lens (the GPU machine has torch 2.11 and transformers 5.17 and
little else): the behavioral stages, which need statsmodels, are left out. ``--smoke`` runs everything at tiny
shapes on the CPU; the test suite runs it so that the script cannot rot (it asserts the parity checks, never a time).
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.bench_joint_step import original_step as original_joint_step
from benchmarks.bench_joint_step import ours_step as ours_joint_step
from benchmarks.bench_nfm import timed
from common.config.concepts import TrainConfig
from common.models.codes import scatter_codes
from common.models.joint import JointSAENFM, joint_reference
from common.models.nfm import NFM, nfm_reference
from common.models.sae import TopKSAE, sae_reference
from common.runtime.regimes import autocast
from common.training.trainer import Trainer


@dataclass(frozen=True)
class Shapes:
    d_model: int
    features: int
    k: int
    top_n: int
    embed_dim: int
    sae_batch: int
    joint_batch: int
    layers: int  # the random LM
    heads: int
    mlp: int
    vocab: int
    layer: int  # where it is read
    windows: int  # per harvest / KL timing
    window: int


PAPER = Shapes(3_200, 50_000, 1_024, 512, 300, 1_024, 64, 26, 32, 8_640, 32_000, 16, 32, 128)
SMOKE = Shapes(64, 1_000, 20, 10, 6, 256, 64, 4, 4, 128, 512, 2, 4, 32)


def seconds(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Median wall seconds of ``fn`` after one warm-up call."""
    fn()
    return statistics.median(timed(fn, device) for _ in range(repeats))


def peak_memory(fn: Callable[[], Any], device: torch.device) -> int | None:
    """Bytes CUDA's allocator held at most while ``fn`` ran (None on the CPU)."""
    if device.type != "cuda":
        fn()
        return None
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device))


@torch.no_grad()
def parity(device: torch.device) -> dict[str, float]:
    """The largest difference of each decode and precision path from the dense fp32 reference, on this device."""
    torch.manual_seed(0)
    d, features, k, top_n, embed = 48, 600, 24, 12, 8
    x = torch.randn(32, d, device=device)
    sae = TopKSAE(d, features, k).to(device)
    nfm = NFM(features, d, embed, dropout=0.0).to(device).eval()
    joint = JointSAENFM(d, features, k, embed, top_n, dropout=0.0).to(device).eval()
    reference = sae_reference(sae, x)
    acts, indices = sae.encode(x)
    nfm_ref = nfm_reference(nfm, scatter_codes(acts, indices, features)).total
    out: dict[str, float] = {}
    for decode in ("sparse", "dense"):
        out[f"sae {decode} fp32"] = float((sae(x, decode=decode).recon - reference).abs().max())
        out[f"nfm {decode} fp32"] = float((nfm(acts, indices, decode).total - nfm_ref).abs().max())
        out[f"joint {decode} fp32"] = float((joint(x, decode).recon - joint_reference(joint, x).recon).abs().max())
        # bf16 on the fp32 path's codes: a bf16 encode may swap near-tied features in and out of the top K at random
        # init, which says nothing about the decode's arithmetic
        with autocast("bf16", device):
            bf16 = sae.decode(acts, indices, decode).float()
        out[f"sae {decode} bf16 (relative)"] = float((bf16 - reference).norm() / reference.norm())
    return out


def check_parity(figures: dict[str, float]) -> list[str]:
    """The paths that are off: fp32 paths within 1e-4 of the reference, bf16 within 2% of its norm."""
    return [name for name, value in figures.items() if value > (2e-2 if "bf16" in name else 1e-4)]


def tiny_stages(device: torch.device, root: Path, smoke: bool) -> dict[str, float]:
    """Stages 1-8 of the tiny preset in this process on ``device``; wall seconds of each."""
    import part1c_sae_topK_implementation as part1c
    import part2d_residual_NFM_streaming as part2d
    import part10_sae_decomp_of_NFM as part10
    import part14_kl_tests as part14
    import part15_joint_SAENFM as part15
    import part16_orthogonality as part16
    import part17_bimodal_gram as part17
    import part18_joint_kl as part18

    base = ["--preset", "tiny", "--device", str(device)]
    short = ["--train_steps", "20"] if smoke else []
    few = ["--num_tokens", "2048", "--chunk_tokens", "1024", "--epochs_per_chunk", "1"] if smoke else []
    kl = ["--num_wiki_samples", "4"] if smoke else []
    # a 20-step joint SAE's squared norms stay near their initial d/(3F) ≈ 0.03, all below the preset's split
    split = ["--split", "0.03"] if smoke else []
    sae1, nfm, sae2, joint = (str(root / name) for name in ("sae1", "nfm", "sae2", "joint"))
    runs = {
        "part1c": (part1c.main, [*short, "--checkpoint_dir", sae1]),
        "part2d": (part2d.main, [*few, "--sae1_model_path", sae1, "--checkpoint_dir", nfm]),
        "part10": (part10.main, [*short, "--sae1_model_path", sae1, "--nfm_model_path", nfm, "--checkpoint_dir",
                                 sae2]),
        "part15": (part15.main, [*few, "--sae1_model_path", sae1, "--checkpoint_dir", joint]),
        "part14": (part14.main, [*kl, "--sae1_model_path", sae1, "--nfm_model_path", nfm, "--output_dir",
                                 str(root / "kl14")]),
        "part16": (part16.main, ["--sae1_model_path", sae1, "--sae2_model_path", joint, "--output_dir",
                                 str(root / "ortho")]),
        "part17": (part17.main, [*split, "--joint_model_path", joint, "--orthogonality_dir", str(root / "ortho"),
                                 "--output_dir", str(root / "bimodal")]),
        "part18": (part18.main, [*kl, "--joint_model_path", joint, "--output_dir", str(root / "kl18")]),
    }
    walls = {}
    for name, (main, argv) in runs.items():
        start = time.perf_counter()
        main([*base, *argv])
        walls[name] = time.perf_counter() - start
    return walls


def sae_steps(shapes: Shapes, device: torch.device, root: Path, repeats: int) -> dict[str, Any]:
    """One SAE training step at batch ``sae_batch``: ours (fp32 masters, bf16 autocast on CUDA, fused Adam, tied as
    one parameter) against the original's (pure fp16 on CUDA, the encoder a view of the decoder, default Adam)."""
    x = torch.randn(shapes.sae_batch, shapes.d_model, device=device)
    precision = "bf16" if device.type == "cuda" else "fp32"
    decode = "dense" if device.type == "cuda" else "sparse"

    def ours() -> Callable[[], Any]:
        sae = TopKSAE(shapes.d_model, shapes.features, shapes.k)
        trainer = Trainer(sae, TrainConfig(train_steps=10**9), root, device, precision,
                          lambda model, batch: (F.mse_loss(model(batch[0], decode=decode).recon.float(), batch[0]), {}),
                          None, None)
        return lambda: trainer.train_step((x,))

    def original() -> Callable[[], Any]:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        encoder = torch.nn.Linear(shapes.d_model, shapes.features).to(device, dtype)
        decoder = torch.nn.Linear(shapes.features, shapes.d_model, bias=False).to(device, dtype)
        encoder.weight.data = decoder.weight.data.t()
        params = [*encoder.parameters(), *decoder.parameters()]
        optimizer = torch.optim.Adam(params, lr=1e-4, eps=1e-5)
        data = x.to(dtype)

        def step() -> None:
            acts, indices = torch.relu(encoder(data)).topk(shapes.k, dim=-1)
            loss = F.mse_loss(decoder(scatter_codes(acts, indices, shapes.features)), data)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
        return step

    return _contest({"ours": ours, "original": original}, device, repeats)


def joint_steps(shapes: Shapes, device: torch.device, root: Path, repeats: int) -> dict[str, Any]:
    args = argparse.Namespace(d_model=shapes.d_model, num_features=shapes.features, k=shapes.k, top_n=shapes.top_n,
                              embed_dim=shapes.embed_dim)
    x = torch.randn(shapes.joint_batch, shapes.d_model, device=device)
    return _contest({"ours": lambda: ours_joint_step(args, device, x, root),
                     "original": lambda: original_joint_step(args, device, x, root)}, device, repeats)


def _contest(builders: dict[str, Callable[[], Callable[[], Any]]], device: torch.device, repeats: int) -> dict:
    """Each side built alone (one model and its Adam state at a time): seconds per step and peak memory."""
    out = {}
    for name, build in builders.items():
        step = {}

        def run(step: dict = step, build: Callable = build) -> None:
            step["fn"] = build()
            step["seconds"] = seconds(step["fn"], device, repeats)
        memory = peak_memory(run, device)
        out[name] = {"seconds_per_step": step["seconds"], "peak_memory_bytes": memory}
        step.clear()
        gc.collect()
    out["ratio_original_over_ours"] = out["original"]["seconds_per_step"] / out["ours"]["seconds_per_step"]
    return out


def random_lm(shapes: Shapes, device: torch.device) -> Any:
    """A Llama of OpenLLaMA-3B's shape (or a tiny one), random weights, fp16 on CUDA: timings do not depend on them."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=shapes.d_model, num_hidden_layers=shapes.layers, num_attention_heads=shapes.heads,
                         num_key_value_heads=shapes.heads, intermediate_size=shapes.mlp, vocab_size=shapes.vocab,
                         rms_norm_eps=1e-6, attn_implementation="sdpa")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval().requires_grad_(False)


def lm_figures(shapes: Shapes, device: torch.device, repeats: int) -> dict[str, Any]:
    """Harvest (early exit at the layer vs the full forward) and KL (shared prefix at batch 32 vs the original's whole
    forward per patch at batch 4) in tokens per second, and the KL stage's peak memory, on the random LM."""
    from common.data.activations import NormStats
    from common.kl.conditions import sequential_conditions
    from common.kl.evaluator import PatchingEvaluator
    from common.lm.hooks import capture_layer
    from common.models.settings import trained_settings

    model = random_lm(shapes, device)
    ids = torch.randint(0, shapes.vocab, (shapes.windows, shapes.window), device=device)
    tokens = ids.numel()
    with torch.no_grad():
        early = seconds(lambda: capture_layer(model, ids, shapes.layer), device, repeats)
        full = seconds(lambda: model(input_ids=ids, use_cache=False), device, repeats)
    sae = TopKSAE(shapes.d_model, shapes.features, shapes.k).to(device).eval()
    nfm = NFM(shapes.features, shapes.d_model, shapes.embed_dim).to(device).eval()
    norm = NormStats(torch.zeros(shapes.d_model, device=device), torch.ones(shapes.d_model, device=device))
    decode = "dense" if device.type == "cuda" else "sparse"
    reconstruct = sequential_conditions(sae, nfm, norm, trained_settings(min(250, shapes.k), min(250, shapes.k)),
                                        decode)
    ours = PatchingEvaluator(model, shapes.layer, reconstruct, "sae", 3)
    original = PatchingEvaluator(model, shapes.layer, reconstruct, "sae", 3, shared_prefix=False)
    windows = list(range(shapes.windows))
    kl_ours = seconds(lambda: ours.evaluate(ids, windows), device, 1)
    quarter = max(1, shapes.windows // 8)  # the original's batch of 4 out of 32
    kl_original = seconds(lambda: original.evaluate(ids[:quarter], windows[:quarter]), device, 1) * (
        shapes.windows / quarter)
    memory = peak_memory(lambda: ours.evaluate(ids, windows), device)
    return {"harvest_tokens_per_second": {"early_exit": tokens / early, "full_forward": tokens / full},
            "kl_tokens_per_second": {"shared_prefix_batch_32": tokens / kl_ours,
                                     "original_batch_4": tokens / kl_original},
            "kl_ratio": kl_original / kl_ours, "kl_peak_memory_bytes": memory,
            "lm_parameters": sum(p.numel() for p in model.parameters())}


def stage_memory(shapes: Shapes, device: torch.device, root: Path) -> dict[str, int | None]:
    """Peak memory of each trained stage's model, Adam state and one step at paper scale (the LM is not on the card
    while they train: it is released after harvesting, METHOD §9)."""
    x = torch.randn(shapes.sae_batch, shapes.d_model, device=device)
    precision = "bf16" if device.type == "cuda" else "fp32"
    decode = "dense" if device.type == "cuda" else "sparse"

    def train(model: torch.nn.Module, loss: Callable, batch: tuple) -> None:
        trainer = Trainer(model, TrainConfig(train_steps=10**9), root, device, precision, loss, None, None)
        trainer.train_step(batch)
        trainer.train_step(batch)

    def stage1() -> None:
        train(TopKSAE(shapes.d_model, shapes.features, shapes.k),
              lambda m, b: (F.mse_loss(m(b[0], decode=decode).recon.float(), b[0]), {}), (x,))

    def stage2() -> None:
        acts = torch.rand(130, min(250, shapes.k), device=device)
        indices = torch.randint(0, shapes.features, acts.shape, device=device)
        target = torch.randn(130, shapes.d_model, device=device)
        sae = TopKSAE(shapes.d_model, shapes.features, shapes.k).to(device)  # frozen, feeding the codes
        train(NFM(shapes.features, shapes.d_model, shapes.embed_dim),
              lambda m, b: (F.mse_loss(m(b[0], b[1], decode).total.float(), b[2]), {}), (acts, indices, target))
        del sae

    def stage5() -> None:
        train(JointSAENFM(shapes.d_model, shapes.features, shapes.k, shapes.embed_dim, shapes.top_n),
              lambda m, b: (F.mse_loss(m(b[0], decode).recon.float(), b[0]), {}), (x[: shapes.joint_batch],))

    return {name: peak_memory(fn, device) for name, fn in (("stage 1", stage1), ("stage 2", stage2),
                                                           ("stage 5", stage5))}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (the test suite's run)")
    parser.add_argument("--out", default="gpu_check.json", help="where the JSON goes")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of each step (medians)")
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    shapes = SMOKE if args.smoke else PAPER
    repeats = 1 if args.smoke else args.repeats
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.machine(),
                               "torch": torch.__version__, "shapes": shapes.__dict__, "smoke": args.smoke}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        results["parity"] = parity(device)
        results["parity_failures"] = check_parity(results["parity"])
        results["tiny_stages_seconds"] = tiny_stages(device, root / "tiny", args.smoke)
        results["sae_step"] = sae_steps(shapes, device, root, repeats)
        results["joint_step"] = joint_steps(shapes, device, root, repeats)
        results["lm"] = lm_figures(shapes, device, repeats)
        results["stage_peak_memory_bytes"] = {**stage_memory(shapes, device, root),
                                              "KL (LM + models + one batch)": results["lm"]["kl_peak_memory_bytes"]}
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(format_table(results))
    return results


def format_table(results: dict[str, Any]) -> str:
    gib = lambda value: "—" if value is None else f"{value / 2**30:.2f} GB"  # noqa: E731
    lines = [f"gpu_check on {results['device']}, torch {results['torch']}{' (smoke)' if results['smoke'] else ''}",
             f"{'what':<52}{'value':>22}"]
    add = lambda name, value: lines.append(f"{name:<52}{value:>22}")  # noqa: E731
    for name, value in results["parity"].items():
        add(f"parity: {name}", f"{value:.2e}")
    add("parity failures", ", ".join(results["parity_failures"]) or "none")
    for name, value in results["tiny_stages_seconds"].items():
        add(f"tiny stage {name}", f"{value:.1f} s")
    for step in ("sae_step", "joint_step"):
        entry = results[step]
        for side in ("ours", "original"):
            add(f"{step.replace('_', ' ')}, {side}", f"{1000 * entry[side]['seconds_per_step']:.1f} ms, "
                                                   f"{gib(entry[side]['peak_memory_bytes'])}")
        add(f"{step.replace('_', ' ')}, original / ours", f"{entry['ratio_original_over_ours']:.2f}x")
    lm = results["lm"]
    for name, value in {**lm["harvest_tokens_per_second"], **lm["kl_tokens_per_second"]}.items():
        add(f"tokens/s, {name.replace('_', ' ')}", f"{value:,.0f}")
    add("KL, original / ours", f"{lm['kl_ratio']:.2f}x")
    for name, value in results["stage_peak_memory_bytes"].items():
        add(f"peak memory, {name}", gib(value))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
