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

# The chain of stage 1 → 2 → 5 → 14 → 16 → 17 → 18 that each seed runs; the main run is seed 0.
SEED_STAGES = ("sae1", "nfm", "joint", "kl14", "ortho", "bimodal", "kl18")
SEEDS = (1, 2)  # beside the main run's seed 0: three seeds
LENGTH_FACTOR = 3
FP16 = "faithful-fp16"


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


def longer_training_flags(preset: str) -> dict[str, tuple[str, ...]]:
    """Stage 1 and stage 5 at 3x the preset's steps. Stage 1's planned steps scale too, so the learning rate at the
    last step is the same fraction of its schedule as in the main run: only the length changes."""
    planned, stop = _preset_value("sae1", "train_steps", preset), _preset_value("sae1", "stop_at_step", preset)
    sae1 = ("--train_steps", str(LENGTH_FACTOR * planned))
    if stop is not None:
        sae1 += ("--stop_at_step", str(LENGTH_FACTOR * stop))
    epochs = _preset_value("joint", "epochs_per_chunk", preset)
    return {"sae1": sae1, "joint": ("--epochs_per_chunk", str(LENGTH_FACTOR * epochs))}


def trained_k_flags(preset: str) -> dict[str, tuple[str, ...]]:
    """Stage 2 fed the SAE's codes at the K it trained with, all of them (top-N = K)."""
    k = str(_preset_value("sae1", "k", preset))
    return {"nfm": ("--sae_k", k, "--top_n_features", k)}


def regime_runs(preset: str, seeds: tuple[int, ...]) -> list[Run]:
    return [Run("fp16", ("sae1", "nfm", "joint", "ortho"), precision=FP16)]


def trained_k_runs(preset: str, seeds: tuple[int, ...]) -> list[Run]:
    return [Run("trained_k", ("nfm",), flags=trained_k_flags(preset))]


def pathology_runs(preset: str, seeds: tuple[int, ...]) -> list[Run]:
    """part14 on the trained-K NFM: the SAE condition runs at the K the SAE trained with."""
    return [Run("trained_k", ("nfm", "kl14"), flags=trained_k_flags(preset))]


def length_runs(preset: str, seeds: tuple[int, ...]) -> list[Run]:
    return [Run("long", ("sae1", "joint", "ortho"), flags=longer_training_flags(preset))]


def seed_runs(preset: str, seeds: tuple[int, ...]) -> list[Run]:
    return [Run(f"seed{seed}", SEED_STAGES, seed=seed) for seed in seeds]


def no_runs(preset: str, seeds: tuple[int, ...]) -> list[Run]:
    """A question that reads the other questions' runs and runs nothing of its own."""
    return []


def parse_seeds(text: str) -> tuple[int, ...]:
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
    return main_dir if variant == "main" else study_dir / variant


def borrowed(run: Run) -> list[str]:
    """Earlier stages the run reads but does not change: the main run's."""
    needed = {name for stage in run.stages for _, name in BY_NAME[stage].inputs}
    return sorted(needed - set(run.stages))


def check_main_run(main_dir: Path, runs: list[Run]) -> None:
    """Every stage the variants borrow is finished in the main run, before anything is written."""
    for run in runs:
        for name in borrowed(run):
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
