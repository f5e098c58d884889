"""The shipped stimulus file meets the design of METHOD §10 decision 7, and the loader refuses malformed files."""
from __future__ import annotations

import copy
import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from wordfreq import zipf_frequency

from common.behavior.balance import zipf_balance
from common.behavior.stimuli import (
    CELLS,
    MIN_WORDS_PER_CELL,
    PAPER_DESIGN,
    POWERED,
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


def test_the_powered_design_is_sized_and_apart_from_the_papers(shipped) -> None:
    powered = shipped.powered
    assert list(shipped.designs("design")) == [POWERED, PAPER_DESIGN]  # the primary design first
    assert tuple(powered.words) == CELLS and all(len(powered.words[c]) >= 32 for c in CELLS)
    assert len(powered.prompts) >= 20 and len(set(powered.prompts)) == len(powered.prompts)
    everything = [w.lower() for c in CELLS for w in powered.words[c]]
    assert len(set(everything)) == len(everything)  # no word in two cells
    paper = {w.lower() for c in CELLS for w in DESIGN_WORDS[c]}
    assert not any(w[:6] == p[:6] for w in everything for p in paper)  # no paper word, nor a word of its stem
    prompt_words = {w for prompt in powered.prompts for w in sentence_words(prompt)}
    assert not prompt_words & (set(everything) | set(shipped.factor_words))
    assert not set(powered.prompts) & set(DESIGN_PROMPTS)
    assert shipped.designs("tiny")[POWERED].words == shipped.tiny_words  # the tiny words stand in, the prompts stay
    assert shipped.designs("tiny")[POWERED].prompts == powered.prompts


def test_the_powered_cells_are_matched_on_word_frequency(shipped) -> None:
    """Recomputed here with wordfreq: the one-way ANOVA over the cells p > 0.5, both main effects under 0.1 Zipf (a
    tenth of a decade of frequency), and the interaction contrast (the one the 2×2 tests) not significant, p > 0.2 by
    the two-way ANOVA's t, and under 0.2 Zipf (METHOD §10 decision 8 states its size)."""
    zipf = {cell: np.array([zipf_frequency(word, "en") for word in shipped.powered.words[cell]]) for cell in CELLS}
    means = [zipf[cell].mean() for cell in CELLS]
    contrasts = {"formality": (means[0] + means[1] - means[2] - means[3]) / 2,
                 "emotion": (means[0] + means[2] - means[1] - means[3]) / 2,
                 "interaction": (means[0] - means[1]) - (means[2] - means[3])}
    words = len(zipf[CELLS[0]])
    mse = sum(((zipf[cell] - zipf[cell].mean()) ** 2).sum() for cell in CELLS) / (4 * words - 4)
    t = contrasts["interaction"] / np.sqrt(4 * mse / words)
    assert stats.f_oneway(*zipf.values()).pvalue > 0.5
    assert abs(contrasts["formality"]) < 0.1 and abs(contrasts["emotion"]) < 0.1, contrasts
    assert abs(contrasts["interaction"]) < 0.2 and 2 * stats.t.sf(abs(t), 4 * words - 4) > 0.2, contrasts
    reported = zipf_balance(shipped.powered.words)  # what part13 reports
    assert reported["cell_means"] == pytest.approx(dict(zip(CELLS, means)), rel=1e-12)
    assert {key: reported[key] for key in contrasts} == pytest.approx(contrasts, rel=1e-9)


def test_the_powered_words_are_one_smollm2_token_each(shipped, smollm2) -> None:
    kept, dropped = single_token_words(shipped.powered.words, smollm2.tokenizer)
    assert dropped == [] and kept == shipped.powered.words


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
    elif case == "short powered list":
        doc["powered"]["words"]["casual_high"] = ["ace", "rad"]
    elif case == "powered without prompts":
        del doc["powered"]["prompts"]
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
    ("short powered list", "powered.words.casual_high has 2 word(s)"),
    ("powered without prompts", "powered lacks 'prompts'"),
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
    assert loaded.powered is None and list(loaded.designs("design")) == [PAPER_DESIGN]
    assert all(len(loaded.sets[name][c]) == 3 for name in SETS for c in CELLS)
