"""common/store/fingerprints.py: the sha256 of a file and of a list of files, held to hashlib on hand-made bytes
(also when a file spans many blocks), a split of one file into two differing; the commit of the code."""
from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

import pytest

from common.store import fingerprints
from common.store.fingerprints import file_sha256, files_sha256, git_commit

DATA = bytes(range(256)) * 5 + b"tail"  # 1,284 bytes


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    made = {"whole": DATA, "first": DATA[:700], "second": DATA[700:], "empty": b""}
    for name, content in made.items():
        (tmp_path / name).write_bytes(content)
    return {name: tmp_path / name for name in made}


def test_file_sha256_is_hashlibs_digest_of_the_bytes(files: dict[str, Path]):
    assert file_sha256(files["whole"]) == "sha256:" + hashlib.sha256(DATA).hexdigest()
    assert file_sha256(files["empty"]) == ("sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    assert file_sha256(str(files["first"])) == "sha256:" + hashlib.sha256(DATA[:700]).hexdigest()


def test_a_file_read_in_many_blocks_has_the_same_digest(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(fingerprints, "BLOCK", 7)  # 184 blocks, the last one partial
    assert file_sha256(files["whole"]) == "sha256:" + hashlib.sha256(DATA).hexdigest()


def test_files_sha256_covers_the_count_then_each_file_and_a_separator(files: dict[str, Path]):
    two = files_sha256([files["first"], files["second"]])
    assert two == "sha256:" + hashlib.sha256(b"2" + DATA[:700] + b"\0" + DATA[700:] + b"\0").hexdigest()
    assert files_sha256([files["whole"]]) == "sha256:" + hashlib.sha256(b"1" + DATA + b"\0").hexdigest()
    assert files_sha256([]) == "sha256:" + hashlib.sha256(b"0").hexdigest()


def test_a_split_of_one_file_into_two_or_another_order_differs(files: dict[str, Path]):
    whole = files_sha256([files["whole"]])
    assert files_sha256([files["first"], files["second"]]) != whole
    assert files_sha256([files["second"], files["first"]]) != files_sha256([files["first"], files["second"]])
    assert files_sha256([files["whole"], files["empty"]]) != whole  # an empty file still counts
    assert files_sha256([files["whole"]]) != file_sha256(files["whole"])  # a set of one is not the file itself


def test_git_commit_is_the_checkouts_head_or_none_outside_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    commit = git_commit()
    if commit is not None:
        assert re.fullmatch(r"[0-9a-f]{40}", commit)
        kind = subprocess.run(["git", "cat-file", "-t", commit], cwd=fingerprints.REPO_ROOT, capture_output=True,
                              text=True)
        assert kind.stdout.strip() == "commit"
    monkeypatch.setattr(fingerprints, "REPO_ROOT", tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert git_commit() is None
