"""``reproduce.py``'s record of each stage it ran (DIR/reproduce_records/<stage>.json): what the stage's run is, so a
re-run skips a finished stage, resumes an interrupted one and starts over one whose settings or inputs changed.

A run is identified by what it is, not where it lives: its command line with the run folder written as ``{DIR}`` and
each text file replaced by its content hash, and the fingerprint of every earlier stage's output it reads. So a run
folder that was moved or copied continues; a stage whose input stage produced other weights runs again."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from common.store.fingerprints import files_sha256
from common.store.reads import load_json
from common.store.savers import atomic_save_json
from common.store.stage_files import RESULTS_FILE, WEIGHTS_FILE, weights_sha256

RUN_RECORDS = "reproduce_records"


def output_fingerprint(folder: Path) -> str | None:
    """A finished stage's output, by content: its weights' sha256, or its results.json's; None if it has neither."""
    if (folder / WEIGHTS_FILE).is_file():
        return weights_sha256(folder)
    if (folder / RESULTS_FILE).is_file():
        return "sha256:" + hashlib.sha256((folder / RESULTS_FILE).read_bytes()).hexdigest()
    return None


def stage_identity(argv: list[str], out_dir: Path, text_files: list[str], input_dirs: list[Path]) -> dict[str, Any]:
    root = str(out_dir)
    settings = [files_sha256([Path(arg)]) if arg in text_files
                else "{DIR}" + arg[len(root):] if arg == root or arg.startswith(root + "/") else arg for arg in argv]
    return {"settings": settings, "inputs": {folder.name: output_fingerprint(folder) for folder in input_dirs}}


class RunRecord:
    """One stage's record: its identity, the script, and the wall time of all its attempts."""

    def __init__(self, out_dir: Path, stage: str, identity: dict[str, Any], argv: list[str]) -> None:
        self.path = out_dir / RUN_RECORDS / f"{stage}.json"
        self.identity, self.argv = identity, argv
        self.previous = load_json(self.path) if self.path.is_file() else None

    @property
    def same_run(self) -> bool:
        """Recorded for this very run (records from before identities were kept are compared by command line)."""
        if self.previous is None:
            return False
        if "identity" in self.previous:
            return self.previous["identity"] == self.identity
        return self.previous.get("argv") == self.argv

    def write(self, script: str, seconds: float) -> dict[str, Any]:
        record = {"identity": self.identity, "argv": self.argv, "script": script, "seconds": seconds}
        atomic_save_json(record, self.path)
        return record
