"""Test why this preset's numbers differ from the paper's (METHOD §11), one question at a time, and write STUDY.md and
study.json with one table per question and the command behind every number.

    python study.py --preset cpu --output_dir runs/cpu-study --main_run runs/cpu            # every question
    python study.py --preset cpu --output_dir runs/cpu-study --main_run runs/cpu --questions k,pathology

Questions: regime (stages 1, 2, 5 in fp32, in the original's fp16 and in fp32 with Adam's second moment flushed
where fp16 would underflow it, each at three seeds), k (stage 2 at the SAE's trained K), pathology (part14 with the SAE
at its trained K, beside both evaluations of the sequential and the joint SAE), length (stages 1, 3 and 5 at 3x the
steps), seeds (stages 1 → 2 → 5 → 14 → 16 → 17 → 18, the KL stages under both evaluations, under two more seeds; the
main run is seed 0), bimodality (the one verdict of METHOD §13.3 on every decoder above). Without --main_run the
stages the questions read from the main run are run first in DIR/main. A re-run skips what is finished and continues
what was interrupted, so the questions can be run in parts; the tables always cover every question whose runs exist.
"""
from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from common.config.presets import PRESETS
from common.reporting.study_plan import (
    MAIN,
    SEEDS,
    Run,
    borrowed,
    check_main_run,
    link_to_main,
    merge_runs,
    parse_seeds,
    variant_dir,
)
from common.reporting.study_questions import QUESTIONS, parse_questions, question_runs
from common.reporting.study_report import write_study
from common.stages.cli import run_cli
from common.stages.launch import preload
from common.stages.pipeline import BY_NAME, PipelineRun
from common.stages.runner import run_stage, stage_argv
from common.store.fingerprints import git_commit
from common.store.lock import OutputDir

log = logging.getLogger("study")


def base_args(preset: str) -> argparse.Namespace:
    """What reproduce.py's stage commands take from its own flags, as a plain ``reproduce.py --preset P`` sets them."""
    return argparse.Namespace(preset=preset, device=None, precision=None, seed=None, model=None,
                              cache=preset != "paper", text_files=None, eval_text_files=None)


def stage_command(stage: PipelineRun, run: Run, base: argparse.Namespace, out_dir: Path) -> list[str]:
    """reproduce.py's command line for the stage (a seed as ``reproduce.py --seed N`` gives it), plus the run's
    precision for the trained stages and its extra flags."""
    argv = stage_argv(stage, argparse.Namespace(**{**vars(base), "seed": run.seed}), out_dir)
    if run.precision and stage.trains:
        argv += ["--precision", run.precision]
    return argv + list(run.flags.get(stage.name, ()))


def run_variant(run: Run, study_dir: Path, main_dir: Path, base: argparse.Namespace) -> None:
    out_dir = variant_dir(study_dir, main_dir, run.variant)
    out_dir.mkdir(parents=True, exist_ok=True)
    if out_dir != main_dir:
        if (main_dir / "activation_cache").is_dir():
            link_to_main(out_dir / "activation_cache", main_dir / "activation_cache")
        for name in borrowed(run):
            link_to_main(out_dir / name, main_dir / name)
    with OutputDir(out_dir, resume=True).writing():
        for name in run.stages:
            stage = BY_NAME[name]
            run_stage(stage, stage_command(stage, run, base, out_dir), out_dir, [])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="cpu (default), tiny or paper")
    parser.add_argument("--output_dir", default=None, help="where the variants and STUDY.md go "
                                                           "(default: runs/<preset>-study)")
    parser.add_argument("--main_run", default=None, help="a finished reproduce.py run of the same preset, reused as "
                                                         "seed 0 (default: run its stages in DIR/main)")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)),
                        help="the seeds question's seeds beside the main run's 0 (default: 1,2)")
    parser.add_argument("--regime_seeds", default=None,
                        help="the regime question's seeds beside 0 for fp16 and flushed Adam, or 'none' for seed 0 "
                             "alone (default: --seeds); fp32 at those seeds is the seeds question's")
    parser.add_argument("--questions", default=",".join(QUESTIONS), help=f"comma-separated, from {','.join(QUESTIONS)}")
    args = parser.parse_args(argv)
    questions, seeds = parse_questions(args.questions), parse_seeds(args.seeds)
    regime_seeds = seeds if args.regime_seeds is None else parse_seeds(args.regime_seeds, allow_none=True)
    study_dir = Path(args.output_dir or f"runs/{args.preset}-study")
    main_dir = Path(args.main_run) if args.main_run else study_dir / "main"
    seeds_of = {question: regime_seeds if question == "regime" else seeds for question in questions}
    runs = merge_runs([run for question in questions for run in question_runs(question, args.preset,
                                                                               seeds_of[question])])
    if args.main_run:  # a finished reproduce.py run: checked, never written to
        check_main_run(main_dir, runs)
        runs = [run for run in runs if run.variant != MAIN]
    base = base_args(args.preset)
    preload()  # the stages' heavy imports, once, before they are forked
    with OutputDir(study_dir, resume=True).writing():
        for run in runs:
            log.info("study %s: %s", run.variant, ", ".join(run.stages))
            run_variant(run, study_dir, main_dir, base)
        command = shlex.join(["python", "study.py", *(argv if argv is not None else sys.argv[1:])])
        path = write_study(study_dir, main_dir, args.preset, command, git_commit())
    print(f"study: {path}")


if __name__ == "__main__":
    run_cli(main)
