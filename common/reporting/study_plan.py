"""The study of why this preset's numbers differ from the paper's (METHOD §11): each question is a set of pipeline
runs that change one thing against the main run, run through reproduce.py's own stage runner so that a finished
stage is skipped and an interrupted one resumed.

A variant lives in STUDY/<variant>/, laid out as a reproduce.py run folder: the stages it changes are run there, and
every earlier stage it does not change is a symbolic link to the main run's, as is the activation cache. So each
variant differs from the main run in its own stages' flags and nothing else, and a reader finds each number's command
in the variant's reproduce_records/.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from common.config.presets import build_config
from common.errors import UserError
from common.stages.pipeline import BY_NAME

# The chain of stage 1 → 2 → 5 → 14 → 16 → 17 → 18 that each seed runs, both KL stages under both evaluations; the
# main run is seed 0.
SEED_STAGES = ("sae1", "nfm", "joint", "kl14", "kl14_original", "ortho", "bimodal", "kl18", "kl18_original")
REGIME_STAGES = ("sae1", "nfm", "joint", "ortho")  # what a training regime changes, and the decoders' verdicts
SEEDS = (1, 2)  # beside the main run's seed 0: three seeds
LENGTH_FACTOR = 3
FP16 = "faithful-fp16"
FLUSH_FLAG = "--adam_flush_fp16_underflow"
MAIN = "main"


@dataclass(frozen=True)
class Run:
    """Some stages of the pipeline under one variant: a seed, a precision for the trained stages, and extra flags."""

    variant: str
    stages: tuple[str, ...]
    seed: int | None = None
    precision: str | None = None
    flags: dict[str, tuple[str, ...]] = field(default_factory=dict)


def _preset_value(stage: str, name: str, preset: str) -> int:
    return getattr(build_config(stage, {"preset": preset}), name)


def _longer(stage: str, preset: str) -> tuple[str, ...]:
    """3x the preset's steps. The planned steps scale too, so the learning rate at the last step is the same
    fraction of its schedule as in the main run: only the length changes."""
    planned, stop = _preset_value(stage, "train_steps", preset), _preset_value(stage, "stop_at_step", preset)
    flags = ("--train_steps", str(LENGTH_FACTOR * planned))
    return flags if stop is None else (*flags, "--stop_at_step", str(LENGTH_FACTOR * stop))


def longer_training_flags(preset: str) -> dict[str, tuple[str, ...]]:
    """Stage 1 and stage 5 at 3x the preset's steps (stage 5 by its epochs per chunk)."""
    epochs = _preset_value("joint", "epochs_per_chunk", preset)
    return {"sae1": _longer("sae1", preset), "joint": ("--epochs_per_chunk", str(LENGTH_FACTOR * epochs))}


def trained_k_flags(preset: str) -> dict[str, tuple[str, ...]]:
    """Stage 2 fed the SAE's codes at the K it trained with, all of them (top-N = K)."""
    k = str(_preset_value("sae1", "k", preset))
    return {"nfm": ("--sae_k", k, "--top_n_features", k)}


def regime_variant(regime: str, seed: int) -> str:
    """The variant folder of a regime at a seed: fp32 is the main run and the seeds question's ``seedN``."""
    prefix = {"fp32": "", "fp16": "fp16", "flush": "flush"}[regime]
    if seed == 0:
        return prefix or MAIN
    return f"{prefix}_seed{seed}" if prefix else f"seed{seed}"


def regime_runs(preset: str, seeds: tuple[int, ...]) -> list[Run]:
    """Stages 1, 2, 5 and 6 in fp32 (the main run and ``seedN``), in the original's fp16, and in fp32 with Adam's
    second moment flushed where fp16 would underflow it, each at seed 0 and the study's seeds."""
    flush = {stage: (FLUSH_FLAG,) for stage in ("sae1", "nfm", "joint")}
    runs = [Run(MAIN, REGIME_STAGES)]
    for seed in (0, *seeds):
        given = None if seed == 0 else seed
        if seed:
            runs.append(Run(regime_variant("fp32", seed), REGIME_STAGES, seed=given))
        runs += [Run(regime_variant("fp16", seed), REGIME_STAGES, seed=given, precision=FP16),
                 Run(regime_variant("flush", seed), REGIME_STAGES, seed=given, flags=flush)]
    return runs


def trained_k_runs(preset: str, seeds: tuple[int, ...]) -> list[Run]:
    return [Run(MAIN, ("sae1", "nfm")), Run("trained_k", ("nfm",), flags=trained_k_flags(preset))]


def pathology_runs(preset: str, seeds: tuple[int, ...]) -> list[Run]:
    """part14 on the trained-K NFM: the SAE condition runs at the K the SAE trained with, beside the main run's
    part14 under both evaluations (its part18, the joint model's SAE part, is read where the main run has it)."""
    return [Run(MAIN, ("sae1", "nfm", "kl14", "kl14_original")),
            Run("trained_k", ("nfm", "kl14"), flags=trained_k_flags(preset))]


def length_runs(preset: str, seeds: tuple[int, ...]) -> list[Run]:
    """Stages 1 and 5 at 3x (with the decoders' verdicts), and stage 3 at 3x on the main run's stages 1 and 2."""
    return [Run(MAIN, ("sae1", "nfm", "sae2", "joint", "ortho")),
            Run("long", ("sae1", "joint", "ortho"), flags=longer_training_flags(preset)),
            Run("long_sae2", ("sae2",), flags={"sae2": _longer("sae2", preset)})]


def seed_runs(preset: str, seeds: tuple[int, ...]) -> list[Run]:
    return [Run(MAIN, SEED_STAGES), *(Run(f"seed{seed}", SEED_STAGES, seed=seed) for seed in seeds)]


def bimodality_runs(preset: str, seeds: tuple[int, ...]) -> list[Run]:
    """The main run's decoders; the question also reads every other question's."""
    return [Run(MAIN, ("sae1", "nfm", "joint", "ortho"))]


def main_stages(runs: list[Run]) -> tuple[str, ...]:
    """The stages the questions read from the main run, in pipeline order."""
    wanted = {stage for run in runs if run.variant == MAIN for stage in run.stages}
    return tuple(name for name in BY_NAME if name in wanted)


def merge_runs(runs: list[Run]) -> list[Run]:
    """One run per variant (the union of its stages in pipeline order), the main run first: two questions that
    share a variant (the seeds and the regime) run its stages once."""
    merged: dict[str, Run] = {}
    for run in runs:
        if run.variant in merged:
            earlier = merged[run.variant]
            if (earlier.seed, earlier.precision, earlier.flags) != (run.seed, run.precision, run.flags):
                raise ValueError(f"two questions define variant {run.variant} differently")
            stages = set(earlier.stages) | set(run.stages)
            run = Run(run.variant, tuple(n for n in BY_NAME if n in stages), run.seed, run.precision, run.flags)
        merged[run.variant] = run
    return sorted(merged.values(), key=lambda run: run.variant != MAIN)


def parse_seeds(text: str, allow_none: bool = False) -> tuple[int, ...]:
    """Comma-separated distinct seeds other than 0 (the main run's); ``none`` for no other seed where allowed."""
    if allow_none and text.strip() == "none":
        return ()
    try:
        seeds = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UserError(f"--seeds: expected comma-separated integers, got {text!r}") from None
    if not seeds or 0 in seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {text}: give distinct seeds other than 0 (seed 0 is the main run)")
    return seeds


def seed_variants(study_dir: Path) -> list[str]:
    """The seed variants the study folder holds, by seed."""
    found = [p.name for p in study_dir.glob("seed*") if p.is_dir() and p.name[4:].isdigit()]
    return sorted(found, key=lambda name: int(name[4:]))


def variant_dir(study_dir: Path, main_dir: Path, variant: str) -> Path:
    return main_dir if variant == MAIN else study_dir / variant


def borrowed(run: Run) -> list[str]:
    """Earlier stages the run reads but does not change: the main run's."""
    needed = {name for stage in run.stages for _, name in BY_NAME[stage].inputs}
    return sorted(needed - set(run.stages))


def check_main_run(main_dir: Path, runs: list[Run]) -> None:
    """Every stage the variants borrow, and every stage the questions read from the main run, is finished there,
    before anything is written."""
    for run in runs:
        needed = run.stages if run.variant == MAIN else borrowed(run)
        for name in needed:
            if not (main_dir / name / BY_NAME[name].done_file).is_file():
                raise UserError(f"--main_run {main_dir}: stage {name} is not finished there (the study's "
                                f"'{run.variant}' runs read it); run reproduce.py for that folder first")


def link_to_main(link: Path, target: Path) -> None:
    """``link`` → ``target`` (relative, so a moved study keeps its links); a finished folder of its own is kept."""
    if link.is_symlink() or link.exists():
        if link.is_symlink() and link.resolve() != target.resolve():
            raise UserError(f"{link} points to {link.resolve()}, not the main run's {target}: "
                            "use the same --main_run as before, or a new --output_dir")
        return
    link.symlink_to(os.path.relpath(target.resolve(), link.parent.resolve()), target_is_directory=True)
