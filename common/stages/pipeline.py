"""reproduce.py's pipeline: every run of a stage script in order (``common.registry``), where it writes, which
earlier runs' directories it reads, and how its command line is built."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.registry import Run, Stage, all_runs, pipeline_runs
from common.store.stage_files import METRICS_FILE, RESULTS_FILE


@dataclass(frozen=True)
class PipelineRun:
    """One run of a stage's script: the stage it runs and its own name, inputs and fixed flags."""

    stage: Stage
    run: Run

    @property
    def name(self) -> str:
        return self.run.name

    @property
    def script(self) -> str:
        return self.stage.script

    @property
    def inputs(self) -> tuple[tuple[str, str], ...]:
        return self.run.inputs

    @property
    def trains(self) -> bool:
        return self.stage.trains

    @property
    def text(self) -> str | None:
        return self.stage.text

    @property
    def uses_lm(self) -> bool:
        return self.stage.uses_lm

    @property
    def resumable(self) -> bool:
        return self.stage.resumable

    @property
    def splits(self) -> bool:
        """Does its work split by rank (``reproduce.py --nproc N`` runs it under torchrun)?"""
        return self.stage.splits is not None

    @property
    def out_flag(self) -> str:
        return "--checkpoint_dir" if self.trains else "--output_dir"

    @property
    def done_file(self) -> str:
        """Written last by the script: its presence means the run finished."""
        return METRICS_FILE if self.trains else RESULTS_FILE

    def input_dirs(self, out_dir: Path) -> list[Path]:
        return [out_dir / name for _, name in self.inputs]

    def argv(self, out_dir: Path) -> list[str]:
        return [part for flag, name in self.inputs for part in (flag, str(out_dir / name))] + list(self.run.extra)


PIPELINE = tuple(PipelineRun(stage, run) for stage, run in pipeline_runs())  # reproduce.py's main job
BY_NAME = {run.name: PipelineRun(stage, run) for stage, run in all_runs()}  # the study's runs too
