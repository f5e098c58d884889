"""What identifies a file, a set of files and the code: the sha256 every record carries, computed one way."""
from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from common.paths import REPO_ROOT

BLOCK = 1 << 24


def feed_file(digest: hashlib._Hash, path: Path) -> None:
    """Add a file's bytes to ``digest``, a block at a time (weights files are GBs at paper scale)."""
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(BLOCK), b""):
            digest.update(block)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    feed_file(digest, Path(path))
    return f"sha256:{digest.hexdigest()}"


def files_sha256(paths: list[Path]) -> str:
    """One digest over the files' bytes, in order (and their count, so a split of one file into two differs)."""
    digest = hashlib.sha256(str(len(paths)).encode())
    for path in paths:
        feed_file(digest, Path(path))
        digest.update(b"\0")
    return f"sha256:{digest.hexdigest()}"


def git_commit() -> str | None:
    """The commit of the code that wrote a record (None outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
