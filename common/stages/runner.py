"""reproduce.py's stage runner, which the study shares: each pipeline run in its own process (forked, or under
torchrun where it splits by rank), skipped when its outputs are complete for the same run, resumed when interrupted,
started over when its settings or inputs changed; its record written before it starts."""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from common.errors import UserError
from common.paths import REPO_ROOT
from common.stages.cli import ERROR_FILE_ENV
from common.stages.launch import run_script, run_torchrun
from common.stages.pipeline import PipelineRun
from common.stages.run_records import RunRecord, stage_identity

log = logging.getLogger("reproduce")


def stage_argv(stage: PipelineRun, args: argparse.Namespace, out_dir: Path) -> list[str]:
    """The stage's command line: its inputs, the shared settings, and where it writes."""
    argv = ["--preset", args.preset, stage.out_flag, str(out_dir / stage.name), *stage.argv(out_dir)]
    for flag in ("device", "precision", "seed"):
        if getattr(args, flag) is not None:
            argv += [f"--{flag}", str(getattr(args, flag))]
    if stage.uses_lm:
        if args.model:
            argv += ["--model", args.model]
        if args.cache:
            argv += ["--cache_dir", str(out_dir / "activation_cache")]
        if args.text_files and stage.text == "train":
            argv += ["--text_files", *args.text_files]
        if args.eval_text_files and stage.text == "eval":
            argv += ["--eval_text_files", *args.eval_text_files]
    return argv


def run_stage(stage: PipelineRun, argv: list[str], out_dir: Path, text_files: list[str], nproc: int = 1) -> dict:
    """Run one stage in its own process (a crash cannot take earlier outputs with it), or in ``nproc`` under torchrun
    where its work splits by rank; skip it if already done."""
    stage_out = out_dir / stage.name
    record = RunRecord(out_dir, stage.name, stage_identity(argv, out_dir, text_files, stage.input_dirs(out_dir)), argv)
    if record.same_run and (stage_out / stage.done_file).is_file():
        log.info("%s: already complete, skipped", stage.name)
        return {**record.previous, "skipped": True}
    extra: list[str] = []
    if stage_out.is_dir() and any(stage_out.iterdir()):
        extra = ["--resume"] if record.same_run and stage.resumable else ["--overwrite"]
    launcher = f"torchrun --nproc_per_node {nproc}" if nproc > 1 and stage.splits else "python"
    log.info("%s: %s %s %s", stage.name, launcher, stage.script, " ".join(argv + extra))
    # Recorded before the run, so that a run killed part-way is resumed (not overwritten) the next time.
    earlier = record.previous["seconds"] if extra == ["--resume"] else 0.0
    record.write(stage.script, earlier)
    error_file = record.path.with_suffix(".error")
    error_file.unlink(missing_ok=True)
    started = time.perf_counter()
    env = {ERROR_FILE_ENV: str(error_file)}
    if launcher == "python":
        returncode = run_script(REPO_ROOT / stage.script, [*argv, *extra], env)
    else:
        returncode = run_torchrun(REPO_ROOT / stage.script, [*argv, *extra], env, nproc)
    # A resumed stage reports the wall time of all its attempts.
    written = record.write(stage.script, earlier + time.perf_counter() - started)
    if returncode != 0:
        reason = error_file.read_text(encoding="utf-8") if error_file.is_file() else (
            f"exit code {returncode}, see its output above"
            + ("" if launcher == "python" else " (torchrun's report there names the rank that failed)"))
        error_file.unlink(missing_ok=True)
        raise UserError(f"stage {stage.name} ({stage.script}) failed: {reason}; earlier stages' outputs in {out_dir} "
                        "are intact, re-run the same command to continue")
    return {**written, "skipped": False}

