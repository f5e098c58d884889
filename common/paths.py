"""Where offline text lives: the one place that knows the shared WikiText copy's location."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
WIKITEXT_FILES = {"train": "wiki.valid.raw", "eval": "wiki.test.raw"}


def shared_wikitext_dir() -> Path | None:
    """The offline WikiText folder: ``$WIKITEXT_DIR`` if set, else ``../shared/data/wikitext-103-raw`` beside the
    checkout."""
    env_dir = os.environ.get("WIKITEXT_DIR")
    candidates = [Path(env_dir)] if env_dir else []
    candidates.append(REPO_ROOT.parent / "shared" / "data" / "wikitext-103-raw")
    for folder in candidates:
        if (folder / WIKITEXT_FILES["train"]).is_file():
            return folder
    return None


def portable(path: str | Path, base: str | Path) -> str:
    """``path`` as a results file may record it, never as an absolute path of this machine: relative to the
    repository when it lies inside it, else relative to ``base`` (the run folder of the file that records it)."""
    absolute = Path(os.path.abspath(path))  # not resolved: a linked folder keeps the name the run gave it
    if absolute.is_relative_to(REPO_ROOT):
        return absolute.relative_to(REPO_ROOT).as_posix()
    return Path(os.path.relpath(absolute, os.path.abspath(base))).as_posix()
