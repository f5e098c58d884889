"""The behavioral scripts' stimuli (METHOD §10, decision 7): one JSON data file, read and checked in one place.

The file holds the 2×2 of formality (formal vs casual register) × emotion (high vs low intensity) four times over:
two sentence sets (``discovery`` for part9b, ``selection`` for part11), the paper's target words and five neutral
logit prompts (part13's "paper design", used unchanged), and the ``powered`` design, part13's primary one: its own
target words (32 or more per cell) and prompts (20 or more), sized by power (METHOD §10 decision 8).
``common/behavior/stimuli.json`` is the shipped set, written for this project because the original's sentences were
confounded by length and by function words;
``--stimuli PATH`` reads any file of the same shape (a user's copy of the original's, say), so everything a script
relies on is checked here and a bad file stops with one line instead of a traceback deep in a statistic.
"""
from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path

from common.errors import UserError

STIMULI_FILE = Path(__file__).with_name("stimuli.json")
# The 2×2 of the design; the behavioral statistics read cells in this order (formality major, emotion minor).
FORMALITY = ("formal", "casual")
EMOTION = ("high", "low")
CELLS = tuple(f"{formality}_{emotion}" for formality in FORMALITY for emotion in EMOTION)
SETS = ("discovery", "selection")
# part13's two designs: the primary one first. A file without a "powered" section has the paper design only.
POWERED, PAPER_DESIGN = "powered", "paper"
# Below four words a cell's mean Δlogit rests on too few words for the by-word 2×2 (METHOD §10 decision 7).
MIN_WORDS_PER_CELL = 4
FORMAT_VERSION = 1
_STRIP = str.maketrans("", "", string.punctuation + "\u2018\u2019\u201c\u201d\u2013\u2014\u2026")


def cell_levels(cell: str) -> tuple[str, str]:
    """``(formality, emotion)`` of a cell key, e.g. ``"casual_low"`` -> ``("casual", "low")``."""
    if cell not in CELLS:
        raise ValueError(f"unknown cell {cell!r}; cells are {', '.join(CELLS)}")
    formality, emotion = cell.split("_")
    return formality, emotion


def sentence_words(sentence: str) -> list[str]:
    """The words of a sentence as the length and confound checks count them: lowercased, punctuation removed
    (so "It's" is "its" and "break-in" is "breakin"), split on whitespace."""
    return sentence.lower().translate(_STRIP).split()


@dataclass(frozen=True)
class Design:
    """One design of the 2×2 logit test: target words per cell and the neutral prompts they follow."""

    words: dict[str, list[str]]
    prompts: list[str]


@dataclass(frozen=True)
class Stimuli:
    """A loaded stimulus file. ``sets``: set name -> cell -> sentences; ``words`` / ``tiny_words``: cell -> target
    words for a real model / for the tiny random model (whose 512-piece vocabulary has none of the design words);
    ``factor_words``: the words that carry a factor (register markers, emotion words), the only ones allowed to
    differ in frequency between cells; ``powered``: the primary design's words and prompts, where the file has one;
    ``source``: the file it came from, for run records."""

    sets: dict[str, dict[str, list[str]]]
    words: dict[str, list[str]]
    tiny_words: dict[str, list[str]]
    prompts: list[str]
    factor_words: list[str]
    description: str
    source: str
    version: int = FORMAT_VERSION
    powered: Design | None = None

    def designs(self, word_list: str) -> dict[str, Design]:
        """part13's designs, the primary one first: ``powered`` (where the file has it), then the paper's. With
        ``word_list="tiny"`` the tiny model's words stand in for every design's words (its prompts stay)."""
        designs = {} if self.powered is None else {POWERED: self.powered}
        designs[PAPER_DESIGN] = Design(self.words, self.prompts)
        if word_list == "tiny":
            designs = {name: Design(self.tiny_words, design.prompts) for name, design in designs.items()}
        return designs


def words_per_cell(cells: dict[str, list[str]]) -> dict[str, float]:
    """Mean words per sentence in each cell of one set (``sentence_words``): the length match the design asks for."""
    return {cell: sum(len(sentence_words(s)) for s in texts) / len(texts) for cell, texts in cells.items() if texts}


def tokens_per_cell(cells: dict[str, list[str]], tokenizer) -> dict[str, float]:
    """Mean tokens per sentence in each cell, without special tokens: what the report states beside the word counts,
    since a model sees tokens, and a cell of rare words can be longer in tokens than in words."""
    return {cell: sum(len(tokenizer(s, add_special_tokens=False)["input_ids"]) for s in texts) / len(texts)
            for cell, texts in cells.items() if texts}


def is_single_token(word: str, tokenizer) -> bool:
    """Does ``" " + word`` (the word as it follows a prompt) encode to exactly one token? Only then is one logit at
    the prompt's last position the model's score for the word."""
    return len(tokenizer(" " + word, add_special_tokens=False)["input_ids"]) == 1


def single_token_words(words: dict[str, list[str]], tokenizer) -> tuple[dict[str, list[str]], list[str]]:
    """Keep the words that are one token with their leading space; return ``(kept per cell, dropped)``.

    The design's words are used as given, so a tokenizer that splits some of them loses those words, and the drop is
    reported rather than hidden. A cell left with fewer than ``MIN_WORDS_PER_CELL`` words is a ``UserError`` naming
    the cells and everything dropped.
    """
    kept: dict[str, list[str]] = {}
    dropped: list[str] = []
    for cell in CELLS:
        kept[cell] = []
        for word in words.get(cell, []):
            (kept[cell] if is_single_token(word, tokenizer) else dropped).append(word)
    starved = [f"{cell} keeps {len(kept[cell])} of {len(words.get(cell, []))}" for cell in CELLS
               if len(kept[cell]) < MIN_WORDS_PER_CELL]
    if starved:
        raise UserError(
            f"too few single-token target words for this tokenizer (each cell needs {MIN_WORDS_PER_CELL}): "
            f"{'; '.join(starved)}; dropped (not one token after a space): {', '.join(dropped) or 'none'}"
        )
    return kept, dropped


# --- reading and checking a file -------------------------------------------------------------------------------


class _Bad(Exception):
    """A problem with the file's content; ``load_stimuli`` turns it into one UserError line naming the file."""


def _object(value: object, where: str) -> dict:
    if not isinstance(value, dict):
        raise _Bad(f"{where} must be a JSON object, got {type(value).__name__}")
    return value


def _strings(value: object, where: str, what: str) -> list[str]:
    if not isinstance(value, list):
        raise _Bad(f"{where} must be a list of {what}, got {type(value).__name__}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise _Bad(f"{where}[{i}] is not a string ({type(item).__name__})")
        if not item.strip():
            raise _Bad(f"{where}[{i}] is empty")
    return list(value)


def _cells(value: object, where: str) -> dict[str, object]:
    cells = _object(value, where)
    missing = [c for c in CELLS if c not in cells]
    if missing:
        raise _Bad(f"{where} lacks cell(s) {', '.join(missing)} (cells are {', '.join(CELLS)})")
    unknown = [c for c in cells if c not in CELLS]
    if unknown:
        raise _Bad(f"{where} has unknown cell(s) {', '.join(map(str, unknown))} (cells are {', '.join(CELLS)})")
    return {c: cells[c] for c in CELLS}


def _sentence_set(value: object, where: str) -> dict[str, list[str]]:
    cells = {c: _strings(v, f"{where}.{c}", "sentences") for c, v in _cells(value, where).items()}
    sizes = {c: len(v) for c, v in cells.items()}
    if len(set(sizes.values())) != 1:
        raise _Bad(f"{where}: cells differ in size ({', '.join(f'{c} {n}' for c, n in sizes.items())}); "
                   "the 2×2 needs the same number of sentences in every cell")
    if not sizes[CELLS[0]]:
        raise _Bad(f"{where}: the cells are empty")
    return cells


def _word_lists(value: object, where: str) -> dict[str, list[str]]:
    cells = {c: _strings(v, f"{where}.{c}", "words") for c, v in _cells(value, where).items()}
    for cell, words in cells.items():
        if len(words) < MIN_WORDS_PER_CELL:
            raise _Bad(f"{where}.{cell} has {len(words)} word(s); each cell needs at least {MIN_WORDS_PER_CELL}")
        spaced = [w for w in words if w != w.strip() or len(w.split()) != 1]
        if spaced:
            raise _Bad(f"{where}.{cell}: a target word is one word without spaces, got {spaced[0]!r}")
    return cells


def _prompts(value: object, where: str) -> list[str]:
    prompts = _strings(value, where, "prompts")
    if not prompts:
        raise _Bad(f"'{where}' is empty; the logit test needs at least one prompt")
    return prompts


def _powered(doc: dict) -> Design | None:
    if "powered" not in doc:
        return None
    section = _object(doc["powered"], "powered")
    missing = [key for key in ("words", "prompts") if key not in section]
    if missing:
        raise _Bad(f"powered lacks {' and '.join(repr(key) for key in missing)}")
    return Design(_word_lists(section["words"], "powered.words"), _prompts(section["prompts"], "powered.prompts"))


def _parse(doc: object) -> tuple:
    doc = _object(doc, "the file")
    version = doc.get("version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise _Bad(f"format version {version!r} is not supported (this code reads version {FORMAT_VERSION})")
    if "sets" not in doc:
        raise _Bad("no 'sets' (the sentence sets 'discovery' and 'selection')")
    sets_in = _object(doc["sets"], "sets")
    missing = [s for s in SETS if s not in sets_in]
    if missing:
        raise _Bad(f"sets lacks set(s) {', '.join(missing)}")
    sets = {name: _sentence_set(sets_in[name], f"sets.{name}") for name in SETS}
    if "words" not in doc:
        raise _Bad("no 'words' (the target words of the 2×2 logit test, per cell)")
    words = _word_lists(doc["words"], "words")
    # Absent: the design words, so the tiny preset on such a file fails in single_token_words with the list of drops.
    tiny_words = _word_lists(doc["tiny_words"], "tiny_words") if "tiny_words" in doc else words
    if "prompts" not in doc:
        raise _Bad("no 'prompts' (the neutral logit prompts)")
    prompts = _prompts(doc["prompts"], "prompts")
    factor_words = [w.lower() for w in _strings(doc.get("factor_words", []), "factor_words", "words")]
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise _Bad(f"'description' must be a string, got {type(description).__name__}")
    return sets, words, tiny_words, prompts, factor_words, description, version, _powered(doc)


def load_stimuli(path: str | Path | None = None) -> Stimuli:
    """Read and check a stimulus file (``None``: the shipped ``common/behavior/stimuli.json``).

    Checked: valid JSON; both sets with all four cells, every cell of a set the same size (the 2×2 statistics and
    the even/odd split assume a balanced design), sentences non-empty strings; every word-list cell at least
    ``MIN_WORDS_PER_CELL`` one-word strings; at least one prompt; the same of the optional ``powered`` section.
    Any failure is a ``UserError`` naming the file.
    Words are not checked against a tokenizer here: that depends on the model (``single_token_words``).
    """
    file = Path(path) if path is not None else STIMULI_FILE
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"stimulus file not found: {file}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read stimulus file {file}: {err}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        where = f"line {err.lineno}, column {err.colno}"
        raise UserError(f"stimulus file {file} is not valid JSON: {err.msg} ({where})") from None
    try:
        sets, words, tiny_words, prompts, factor_words, description, version, powered = _parse(doc)
    except _Bad as err:
        raise UserError(f"stimulus file {file}: {err}") from None
    return Stimuli(sets=sets, words=words, tiny_words=tiny_words, prompts=prompts, factor_words=factor_words,
                   description=description, source=str(file), version=version, powered=powered)
