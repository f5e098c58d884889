"""Text sources and 128-token windows (METHOD §0): the one place where a window is cut and a split is decided."""
from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from common.errors import UserError
from common.paths import WIKITEXT_FILES, shared_wikitext_dir
from common.store.fingerprints import files_sha256

HUB_DATASET = ("wikitext", "wikitext-103-raw-v1")
VAL_EVERY = 10  # window i is held out when i % 10 == 9: 10% of windows, the same ones in every stage


def is_validation_window(window_index: int) -> bool:
    return window_index % VAL_EVERY == VAL_EVERY - 1


@dataclass
class TextSource:
    """Rows of text (one document line each, as the Hub's ``wikitext`` rows), how to name them in configs, and what
    they are: ``identity`` is the sha256 of local files' bytes or the hub dataset, config and split, so a cache or a
    resumed run recognizes the same text wherever it lives and never mistakes another text of the same name."""

    description: str
    open_rows: Callable[[], Iterator[str]] = field(repr=False)
    identify: Callable[[], str] | None = field(repr=False, default=None)  # None: the digest of the rows themselves

    def rows(self) -> Iterator[str]:
        return self.open_rows()

    @functools.cached_property
    def identity(self) -> str:
        if self.identify is not None:
            return self.identify()
        digest = hashlib.sha256()
        for row in self.rows():
            digest.update(row.encode("utf-8") + b"\0")
        return f"sha256-rows:{digest.hexdigest()}"


def _file_rows(paths: list[Path]) -> Iterator[str]:
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            yield from handle  # keeps each line's newline, matching keep_linebreaks=True rows


def local_text(paths: list[str | Path]) -> TextSource:
    files = [Path(p) for p in paths]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise UserError(f"text file not found: {', '.join(missing)}")
    return TextSource(f"local files: {', '.join(p.name for p in files)}", lambda: _file_rows(files),
                      lambda: files_sha256(files))


def hub_wikitext(split: str) -> TextSource:
    """WikiText-103 raw streamed through ``datasets``; offline it fails at once with one line."""
    desc = f"hub {HUB_DATASET[0]}/{HUB_DATASET[1]} split {split} (streaming)"

    def open_rows() -> Iterator[str]:
        import datasets

        try:
            stream = iter(datasets.load_dataset(*HUB_DATASET, split=split, streaming=True))
            first = next(stream)
        except Exception as err:  # the hub client raises many types when offline; all mean the same to the user
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise UserError(
                f"cannot stream {HUB_DATASET[1]} ({split}) from the Hugging Face hub ({reason}); pass --text_files / "
                "--eval_text_files, or run the offline CPU preset: --preset cpu"
            ) from None
        yield first["text"]
        for row in stream:
            yield row["text"]

    # The hub's wikitext configs are frozen releases: name, config and split identify the rows.
    return TextSource(desc, open_rows, lambda: f"hub:{HUB_DATASET[0]}/{HUB_DATASET[1]}/{split}")


def resolve_text(files: list[str] | None, preset: str, role: str) -> TextSource:
    """Training (``role='train'``) or KL evaluation (``role='eval'``) text for a preset, in METHOD §0's order.

    ``paper``: the flag, else WikiText-103 train/test from the hub. ``cpu``/``tiny``: the flag, ``$WIKITEXT_DIR``,
    the shared copy beside the checkout, else the hub's validation/test splits (the same text).
    """
    if files:
        return local_text(files)
    hub_split = ({"train": "train", "eval": "test"}[role] if preset == "paper"
                 else {"train": "validation", "eval": "test"}[role])
    if preset != "paper":
        folder = shared_wikitext_dir()
        if folder is not None:
            return local_text([folder / WIKITEXT_FILES[role]])
        if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
            raise UserError(
                f"no {role} text found: pass --text_files/--eval_text_files, set WIKITEXT_DIR, put the shared copy in "
                f"../shared/data/wikitext-103-raw/, or go online for the hub's {HUB_DATASET[1]} {hub_split} split"
            )
    return hub_wikitext(hub_split)


class WindowedText:
    """Cuts a text into non-overlapping windows of token ids, lazily, remembering every window it has cut.

    A row is tokenized without special tokens and skipped when shorter than one window; where the tokenizer adds a
    BOS by default a window is BOS + (window - 1) tokens. Window ``i`` is the i-th window of the whole text.
    """

    def __init__(self, source: TextSource, tokenizer, window: int, bos_token_id: int | None) -> None:
        if window < 2:
            raise UserError(f"--window must be at least 2 tokens, got {window}")
        self.source, self.tokenizer, self.window, self.bos_token_id = source, tokenizer, window, bos_token_id
        self.body = window - 1 if bos_token_id is not None else window
        self._windows: list[Tensor] = []
        self._rows: Iterator[str] | None = None
        self._exhausted = False

    def _cut_next_row(self) -> bool:
        if self._rows is None:
            self._rows = self.source.rows()
        for row in self._rows:
            if not row.strip():
                continue
            ids = self.tokenizer(row, add_special_tokens=False)["input_ids"]
            if len(ids) < self.body:
                continue
            for start in range(0, len(ids) - self.body + 1, self.body):
                piece = ids[start : start + self.body]
                if self.bos_token_id is not None:
                    piece = [self.bos_token_id] + piece
                self._windows.append(torch.tensor(piece, dtype=torch.int64))
            return True
        self._exhausted = True
        return False

    def get(self, index: int) -> Tensor | None:
        """Window ``index`` (window,) or ``None`` past the end of the text."""
        while index >= len(self._windows) and not self._exhausted:
            self._cut_next_row()
        if index < len(self._windows):
            return self._windows[index]
        if index == 0:
            raise UserError(f"no {self.window}-token windows in {self.source.description} "
                            "(rows shorter than one window are skipped)")
        return None

    def available(self, start: int, stop: int) -> list[int]:
        """The indices in [start, stop) that exist in the text."""
        out = []
        for i in range(start, stop):
            if self.get(i) is None:
                break
            out.append(i)
        return out
