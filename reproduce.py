"""Run the whole pipeline for a preset, stage by stage, and write REPORT.md, REPORT.html and SAEBench's core metrics
(DIR/saebench/core/) beside the stage outputs.

    python reproduce.py --preset cpu --output_dir runs/cpu      # offline, SmolLM2-135M, 2 CPU cores
    python reproduce.py --output_dir runs/paper --cache          # the paper's configuration, one 24 GB GPU
    python reproduce.py --output_dir runs/paper --nproc 8        # the stages that split, on 8 GPUs under torchrun

Each stage writes DIR/<stage>/. A stage whose outputs are complete for the same settings is skipped, an interrupted
one is resumed, so re-running the command continues where it stopped. Activations are harvested once into
DIR/activation_cache and shared by the stages (on by default for cpu and tiny; at paper scale it takes ~32 GB).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from common.config.presets import PRESETS
from common.errors import UserError
from common.reporting.publish import publish
from common.stages.cli import run_cli
from common.stages.launch import preload
from common.stages.pipeline import PIPELINE
from common.stages.run_folder import check_inputs_exist, forget_empty_run, study_file
from common.stages.runner import run_stage, stage_argv
from common.store.lock import OutputDir

log = logging.getLogger("reproduce")
ROOT = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="paper", help="paper (default), cpu or tiny")
    parser.add_argument("--output_dir", "--out", default=None, help="where every stage writes (default: runs/<preset>)")
    parser.add_argument("--model", default=None, help="LM id or path (default: the preset's)")
    parser.add_argument("--text_files", nargs="+", default=None, help="training text (default: the preset's)")
    parser.add_argument("--eval_text_files", nargs="+", default=None, help="KL evaluation text (default: the preset's)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA when present)")
    parser.add_argument("--precision", default=None, help="auto, fp32, bf16 or faithful-fp16 (default: auto)")
    parser.add_argument("--seed", type=int, default=None, help="random seed for every stage")
    parser.add_argument("--cache", action=argparse.BooleanOptionalAction, default=None,
                        help="harvest activations once into DIR/activation_cache "
                             "(default: on for cpu and tiny and with --nproc, off for paper)")
    parser.add_argument("--stages", nargs="+", choices=[s.name for s in PIPELINE], default=None,
                        help="run only these stages (their inputs must exist)")
    parser.add_argument("--study", default=None,
                        help="a study.py study.json of this preset, quoted at the top of REPORT.md "
                             "(default: docs/results/<preset>-study.json where it exists)")
    parser.add_argument("--nproc", type=int, default=1,
                        help="processes (one per GPU) for the stages that split by rank (the harvest, stages 1 and 3, "
                             "the KL tests), each started under torchrun on this node; the others run in one")
    args = parser.parse_args(argv)
    if args.nproc < 1:
        raise UserError(f"--nproc must be at least 1, got {args.nproc}")
    if args.nproc > 1 and args.cache is False:
        raise UserError(f"--nproc {args.nproc}: the ranks share their harvest through the activation cache, so "
                        "--no-cache cannot be used with it")
    if args.cache is None:
        args.cache = args.preset != "paper" or args.nproc > 1
    out_dir = Path(args.output_dir or f"runs/{args.preset}")
    text_files = [*(args.text_files or []), *(args.eval_text_files or [])]
    stages = [stage for stage in PIPELINE if not args.stages or stage.name in args.stages]
    check_inputs_exist(stages, out_dir)
    study = study_file(args.study, args.preset)
    if any(not (args.nproc > 1 and stage.splits) for stage in stages):
        preload()  # for the stages forked from here; torchrun's ranks are fresh interpreters
    fresh = not out_dir.exists()
    try:
        with OutputDir(out_dir, resume=True).writing():  # one reproduce.py per run folder at a time
            timings = {stage.name: run_stage(stage, stage_argv(stage, args, out_dir), out_dir, text_files, args.nproc)
                       for stage in stages}
            reports = publish(out_dir, vars(args), timings, study)  # REPORT.md, report.json, SAEBench, REPORT.html
    except UserError:
        forget_empty_run(out_dir, fresh)
        raise
    print("report: " + ", ".join(str(path) for path in reports))




if __name__ == "__main__":
    run_cli(main)
