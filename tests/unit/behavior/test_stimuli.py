"""The shipped stimulus file meets the design of METHOD §10 decision 7, and the loader refuses malformed files."""
from __future__ import annotations

import copy
import itertools
import json
from collections import Counter
from pathlib import Path

import pytest

from common.behavior.stimuli import (
    CELLS,
    MIN_WORDS_PER_CELL,
    SETS,
    STIMULI_FILE,
    cell_levels,
    load_stimuli,
    sentence_words,
    single_token_words,
    words_per_cell,
)
from common.errors import UserError

DESIGN_WORDS = {
    "formal_low": ["perhaps", "may", "however", "therefore", "consequently", "moreover", "accordingly", "furthermore"],
    "formal_high": ["profoundly", "devastated", "magnificent", "appalling", "extraordinary", "overwhelming",
                    "catastrophic", "triumphant"],
    "casual_low": ["yeah", "okay", "kinda", "basically", "anyway", "whatever", "guess", "stuff"],
    "casual_high": ["OMG", "totally", "literally", "seriously", "honestly", "really", "absolutely", "incredibly"],
}
DESIGN_PROMPTS = ["I think that", "The situation is", "My opinion on this is", "It seems to me that",
                  "The best approach would be"]
# Never a factor word: a share difference in any of these is a confound, whatever carries it.
FUNCTION_WORDS = {
    "the", "a", "an", "and", "or", "but", "of", "to", "in", "on", "at", "for", "with", "by", "from", "about", "that",
    "this", "it", "its", "is", "was", "are", "were", "be", "been", "am", "i", "im", "you", "we", "he", "she", "they",
    "me", "my", "our", "so", "not", "as", "if", "when", "may", "shall", "will", "would", "can", "just", "like",
}
MAX_SHARE_GAP = 0.15
MAX_LENGTH_RATIO = 1.10


@pytest.fixture(scope="module")
def shipped():
    return load_stimuli()


def test_shipped_file_loads(shipped) -> None:
    assert shipped.version == 1
    assert shipped.source == str(STIMULI_FILE)
    assert shipped.description.strip()
    assert set(shipped.sets) == set(SETS)


def test_sets_are_four_cells_of_fifty_distinct_sentences(shipped) -> None:
    everything = []
    for name in SETS:
        cells = shipped.sets[name]
        assert tuple(cells) == CELLS
        for cell, texts in cells.items():
            assert len(texts) == 50, (name, cell)
        everything += [s for texts in cells.values() for s in texts]
    repeats = [s for s, n in Counter(everything).items() if n > 1]
    assert not repeats, f"sentences repeated within or across sets: {repeats}"


def test_cells_are_length_matched(shipped) -> None:
    for name in SETS:
        means = words_per_cell(shipped.sets[name])
        assert max(means.values()) <= MAX_LENGTH_RATIO * min(means.values()), (name, means)


def _share_gaps(cells: dict[str, list[str]]) -> list[tuple[float, str, str, str]]:
    """(gap, word, cell, cell) for every word and pair of cells: the difference in the share of sentences using it."""
    share = {c: Counter(w for s in texts for w in set(sentence_words(s))) for c, texts in cells.items()}
    gaps = []
    for a, b in itertools.combinations(cells, 2):
        for word in set(share[a]) | set(share[b]):
            gaps.append((abs(share[a][word] / len(cells[a]) - share[b][word] / len(cells[b])), word, a, b))
    return gaps


def test_no_word_outside_factor_words_separates_cells(shipped) -> None:
    exempt = set(shipped.factor_words)
    for name in SETS:
        bad = [g for g in _share_gaps(shipped.sets[name]) if g[0] > MAX_SHARE_GAP and g[1] not in exempt]
        assert not bad, f"{name}: {sorted(bad, reverse=True)[:5]}"


def test_factor_words_hold_no_function_word(shipped) -> None:
    assert shipped.factor_words
    assert not FUNCTION_WORDS & set(shipped.factor_words)


def test_design_words_and_prompts_are_the_papers(shipped) -> None:
    assert shipped.words == {cell: DESIGN_WORDS[cell] for cell in CELLS}
    assert shipped.prompts == DESIGN_PROMPTS


def test_cell_levels() -> None:
    assert [cell_levels(c) for c in CELLS] == [("formal", "high"), ("formal", "low"), ("casual", "high"),
                                               ("casual", "low")]
    with pytest.raises(ValueError):
        cell_levels("formal")


def test_sentence_words_strip_punctuation() -> None:
    assert sentence_words("Yeah, it's the break-in, OMG!") == ["yeah", "its", "the", "breakin", "omg"]


def test_tiny_words_are_single_tokens_of_the_tiny_tokenizer(shipped, tiny_lm) -> None:
    tok = tiny_lm.tokenizer
    for cell in CELLS:
        assert len(shipped.tiny_words[cell]) >= MIN_WORDS_PER_CELL
        for word in shipped.tiny_words[cell]:
            assert len(tok(" " + word, add_special_tokens=False)["input_ids"]) == 1, (cell, word)
    kept, dropped = single_token_words(shipped.tiny_words, tok)
    assert kept == shipped.tiny_words and dropped == []


def test_single_token_words_drops_and_starves(shipped, tiny_lm) -> None:
    tok = tiny_lm.tokenizer
    words = copy.deepcopy(shipped.tiny_words)
    words["formal_low"] = words["formal_low"] + ["hello", "lobster"]
    kept, dropped = single_token_words(words, tok)
    assert kept == shipped.tiny_words
    assert dropped == ["hello", "lobster"]
    # The design words: none is one token of the tiny vocabulary, so every cell starves.
    with pytest.raises(UserError, match="formal_high keeps 0 of 8") as err:
        single_token_words(shipped.words, tok)
    assert "devastated" in str(err.value) and "\n" not in str(err.value)
    starved = copy.deepcopy(shipped.tiny_words)
    starved["casual_low"] = ["a", "an", "hello", "lobster"]
    with pytest.raises(UserError, match="casual_low keeps 2 of 4.*hello, lobster"):
        single_token_words(starved, tok)


def _broken(doc: dict, case: str) -> str | dict:
    doc = copy.deepcopy(doc)
    sel = doc["sets"]["selection"]
    if case == "not json":
        return '{"sets": '
    if case == "missing set":
        del doc["sets"]["discovery"]
    elif case == "missing cell":
        del sel["casual_low"]
    elif case == "unequal cells":
        sel["formal_high"] = sel["formal_high"][:-1]
    elif case == "empty sentence":
        sel["formal_low"][3] = "   "
    elif case == "non-string sentence":
        sel["casual_high"][0] = 7
    elif case == "short word list":
        doc["words"]["formal_high"] = ["profoundly", "devastated", "magnificent"]
    elif case == "short tiny list":
        doc["tiny_words"]["casual_low"] = ["a"]
    elif case == "no prompts":
        del doc["prompts"]
    elif case == "empty prompts":
        doc["prompts"] = []
    return doc


@pytest.mark.parametrize("case, problem", [
    ("not json", "not valid JSON"),
    ("missing set", "lacks set(s) discovery"),
    ("missing cell", "sets.selection lacks cell(s) casual_low"),
    ("unequal cells", "cells differ in size (formal_high 49, formal_low 50"),
    ("empty sentence", "sets.selection.formal_low[3] is empty"),
    ("non-string sentence", "sets.selection.casual_high[0] is not a string"),
    ("short word list", "words.formal_high has 3 word(s)"),
    ("short tiny list", "tiny_words.casual_low has 1 word(s)"),
    ("no prompts", "no 'prompts'"),
    ("empty prompts", "'prompts' is empty"),
])
def test_malformed_files_are_user_errors(tmp_path: Path, case: str, problem: str) -> None:
    broken = _broken(json.loads(STIMULI_FILE.read_text(encoding="utf-8")), case)
    path = tmp_path / "bad_stimuli.json"
    path.write_text(broken if isinstance(broken, str) else json.dumps(broken), encoding="utf-8")
    with pytest.raises(UserError) as err:
        load_stimuli(path)
    message = str(err.value)
    assert str(path) in message and problem in message and "\n" not in message


def test_missing_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_stimuli(tmp_path / "nope.json")


def test_a_minimal_file_loads(tmp_path: Path) -> None:
    """Only sets, words and prompts are required: a user's copy of the original's stimuli needs nothing else."""
    doc = json.loads(STIMULI_FILE.read_text(encoding="utf-8"))
    small = {"sets": {name: {c: doc["sets"][name][c][:3] for c in CELLS} for name in SETS},
             "words": doc["words"], "prompts": doc["prompts"][:1]}
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(small), encoding="utf-8")
    loaded = load_stimuli(str(path))
    assert loaded.tiny_words == loaded.words and loaded.factor_words == [] and loaded.description == ""
    assert all(len(loaded.sets[name][c]) == 3 for name in SETS for c in CELLS)
