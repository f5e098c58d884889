"""What ``reproduce.py`` checks and tidies around a run folder: inputs of a partial run, the study it quotes, and no
trace left by a run refused on bad input."""
from __future__ import annotations

from pathlib import Path

from common.errors import UserError
from common.paths import REPO_ROOT
from common.stages.pipeline import BY_NAME, PipelineRun
from common.stages.run_records import RUN_RECORDS


def check_inputs_exist(stages: list[PipelineRun], out_dir: Path) -> None:
    """With --stages, an input stage that is neither run now nor finished is refused before anything is written."""
    chosen = {stage.name for stage in stages}
    for stage in stages:
        for folder in stage.input_dirs(out_dir):
            if folder.name not in chosen and not (folder / BY_NAME[folder.name].done_file).is_file():
                raise UserError(f"stage {stage.name} reads {folder}, which is not finished: add --stages "
                                f"{folder.name} (or run it first)")


def study_file(given: str | None, preset: str) -> Path | None:
    """``--study``'s file (refused when missing), else the committed study of the preset where there is one."""
    if given is not None:
        if not Path(given).is_file():
            raise UserError(f"--study {given}: no such file (study.py writes study.json in its --output_dir)")
        return Path(given)
    default = REPO_ROOT / "docs" / "results" / f"{preset}-study.json"
    return default if default.is_file() else None


def forget_empty_run(out_dir: Path, fresh: bool) -> None:
    """After a failure, the records of stages that wrote nothing go, and so does a run folder this call created and
    that holds nothing else: bad input leaves no trace."""
    records = out_dir / RUN_RECORDS
    for record in records.glob("*.json") if records.is_dir() else []:
        if not (out_dir / record.stem).is_dir():
            record.unlink()
    if fresh and records.is_dir() and not any(records.iterdir()):
        records.rmdir()
    if fresh and out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()
