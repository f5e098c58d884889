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
