"""Debugging tool (part13b, the original's name): the clean model's greedy generations for the prompt sets of the
stimulus file (each design's prompts), with no hook at all: the baseline the clamped and spliced generations of
part12, part13 and part13c are read against (METHOD §10). A tool run by hand, not a reproduce.py stage.

    python part13b_noClampHooks_openLlama3BTest.py --model_path openlm-research/open_llama_3b \\
        --output_dir clean_generations --generation_length 50
    python part13b_noClampHooks_openLlama3BTest.py --preset cpu --output_dir runs/cpu/clean_generations
"""
from __future__ import annotations

from typing import Any

from common.behavior.debugging import generate, prompt_ids, prompt_sets
from common.config.stages import CleanGenerationConfig
from common.errors import UserError
from common.stages.behavior import open_tool, tool_record
from common.stages.cli import run_cli
from common.stages.finish import write_results
from common.stages.opening import stage_config

ANALYSIS = "clean_generations"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = stage_config(CleanGenerationConfig, __doc__, argv)
    if cfg.generation_tokens < 1:
        raise UserError(f"--generation_length must be at least 1, got {cfg.generation_tokens}")
    sets = prompt_sets(cfg.stimuli)
    opened, sources = open_tool(cfg)
    lm = opened.lm
    generations = {name: {prompt: lm.tokenizer.decode(generate(lm, prompt_ids(lm, prompt), cfg.generation_tokens,
                                                               cfg.layer)) for prompt in prompts}
                   for name, prompts in sets.items()}
    results = {**tool_record(cfg, opened, ANALYSIS, sources), "generation_tokens": cfg.generation_tokens,
               "decoding": "greedy, the clean model (no hook)", "generations": generations}
    with opened.out.writing(clear=cfg.overwrite):
        write_results(opened.out.path, results)
    for name, texts in generations.items():
        print(f"{name} prompts:")
        print("\n".join(f"  {prompt!r} → {text!r}" for prompt, text in texts.items()))
    return results


if __name__ == "__main__":
    run_cli(main)
