"""Debugging tool (part13c, the original's name): the primary SAE alone, spliced into the model. At the layer the
residual is replaced by the SAE's de-normalized reconstruction (the original's splice, BOS left alone); the greedy
generations for the prompt sets follow, and per prompt what the splice costs against the clean model: the KL of the
next-token distributions and the share of positions whose top token agrees, over the prompt and the clean model's
continuation (METHOD §10). A tool run by hand, not a reproduce.py stage.

    python part13c_primarySAE_hooksOnly.py --model_path openlm-research/open_llama_3b \\
        --primary_sae_path checkpoints_topk --output_dir primary_sae_splice --generation_length 50
    python part13c_primarySAE_hooksOnly.py --preset cpu --primary_sae_path runs/cpu/sae1 \\
        --output_dir runs/cpu/primary_sae_splice
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.behavior.debugging import generate, prompt_ids, prompt_sets, sae_splice, splice_cost
from common.config.stages import SpliceConfig
from common.data.activations import NormStats
from common.errors import UserError
from common.models.loading import StageInput, load_sae
from common.models.sae import TopKSAE
from common.plots import plot_grouped_bars
from common.stages.behavior import open_tool, tool_record
from common.stages.cli import run_cli
from common.stages.finish import write_results
from common.stages.opening import Opened, stage_config

ANALYSIS = "sae_splice"


def one_prompt(opened: Opened, sae: TopKSAE, norm: NormStats, prompt: str, tokens: int, layer: int) -> dict[str, Any]:
    """One prompt's clean and spliced generations and the splice's cost on it."""
    lm, first = opened.lm, int(opened.lm.adds_bos)
    ids = prompt_ids(lm, prompt)
    splice = sae_splice(sae, norm, opened.rt.decode, first, ids.shape[1])
    clean = generate(lm, ids, tokens, layer)
    spliced = generate(lm, ids, tokens, layer, splice)
    forced = torch.cat([ids, torch.tensor([clean], device=ids.device)], dim=1)  # the prompt + the clean continuation
    cost = splice_cost(lm, forced, layer, sae_splice(sae, norm, opened.rt.decode, first, forced.shape[1]), first)
    return {"clean": lm.tokenizer.decode(clean), "spliced": lm.tokenizer.decode(spliced), "clean_token_ids": clean,
            "greedy_tokens_changed": float(np.mean([a != b for a, b in zip(clean, spliced)])), **cost}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = stage_config(SpliceConfig, __doc__, argv)
    if cfg.generation_tokens < 1:
        raise UserError(f"--generation_length must be at least 1, got {cfg.generation_tokens}")
    sets = prompt_sets(cfg.stimuli)
    loaded: dict[str, Any] = {}

    def read_sae() -> list[StageInput]:
        loaded["sae"], loaded["norm"], source = load_sae(cfg.sae1_model_path)
        return [source]

    opened, sources = open_tool(cfg, read_sae)
    sae, norm = loaded["sae"].to(opened.rt.device).eval(), loaded["norm"].to(opened.rt.device)
    per_set = {name: {prompt: one_prompt(opened, sae, norm, prompt, cfg.generation_tokens, cfg.layer)
                      for prompt in prompts} for name, prompts in sets.items()}
    every = [entry for entries in per_set.values() for entry in entries.values()]
    results = {**tool_record(cfg, opened, ANALYSIS, sources), "generation_tokens": cfg.generation_tokens, "k": sae.k,
               "splice": "the layer's residual replaced by the SAE's de-normalized reconstruction at every position "
                         "(BOS left alone), in every forward of the generation",
               "cost": "KL(clean ‖ spliced) and top-1 agreement over the prompt and the clean continuation, teacher "
                       "forced", "prompt_sets": per_set,
               "mean": {key: float(np.mean([entry[key] for entry in every]))
                        for key in ("kl", "top1_agreement", "greedy_tokens_changed")}}

    def plot(folder: Path) -> None:
        plot_grouped_bars({name: {f"{i + 1}": entry["kl"] for i, entry in enumerate(entries.values())}
                           for name, entries in per_set.items()}, folder / "splice_kl.png",
                          "KL(clean ‖ SAE spliced) per prompt", "KL (nats)")

    with opened.out.writing(clear=cfg.overwrite):
        plot(opened.out.path)
        write_results(opened.out.path, results)
    print(f"SAE spliced at layer {cfg.layer} (K {sae.k}): mean KL {results['mean']['kl']:.4g} nats, top-1 agreement "
          f"{100 * results['mean']['top1_agreement']:.1f}%, greedy tokens changed "
          f"{100 * results['mean']['greedy_tokens_changed']:.1f}% over {len(every)} prompts")
    return results


if __name__ == "__main__":
    run_cli(main)
