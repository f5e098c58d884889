import pytest

from common.data.text import TextSource, WindowedText, is_validation_window, local_text, resolve_text
from common.errors import UserError
from common.paths import shared_wikitext_dir


class WordTokenizer:
    """One id per whitespace-separated word: enough to check the window arithmetic exactly."""

    def __call__(self, text, add_special_tokens=True):
        ids = [len(word) for word in text.split()]
        return {"input_ids": ([1] if add_special_tokens else []) + ids}


def _text(rows):
    return TextSource("test rows", lambda: iter(rows))


def test_windows_are_cut_per_row_without_overlap_and_short_rows_skipped():
    rows = ["a bb ccc dddd eeeee\n", "\n", "x y\n", " ".join(["w"] * 9) + "\n"]
    windows = WindowedText(_text(rows), WordTokenizer(), window=4, bos_token_id=None)
    got = [windows.get(i).tolist() for i in windows.available(0, 100)]
    assert got == [[1, 2, 3, 4], [1, 1, 1, 1], [1, 1, 1, 1]]  # the 5th word and the 9th "w" are the row tails


def test_bos_window_is_bos_plus_window_minus_one_tokens():
    rows = ["a bb ccc dddd eeeee ffffff\n"]
    windows = WindowedText(_text(rows), WordTokenizer(), window=4, bos_token_id=99)
    got = [windows.get(i).tolist() for i in windows.available(0, 10)]
    assert got == [[99, 1, 2, 3], [99, 4, 5, 6]]


def test_empty_text_is_a_user_error():
    windows = WindowedText(_text(["\n", "too short\n"]), WordTokenizer(), window=8, bos_token_id=None)
    with pytest.raises(UserError, match="no 8-token windows"):
        windows.get(0)


def test_validation_rule_holds_out_every_tenth_window():
    held_out = [i for i in range(100) if is_validation_window(i)]
    assert held_out == list(range(9, 100, 10))


def test_missing_text_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        local_text([tmp_path / "nope.txt"])


def test_local_rows_keep_their_line_ends(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(" = Title = \n\n body line \n")
    assert list(local_text([path]).rows()) == [" = Title = \n", "\n", " body line \n"]


def test_cpu_preset_finds_the_shared_copy_and_wikitext_dir_wins(tmp_path, monkeypatch):
    shared = shared_wikitext_dir()
    assert shared is not None, "tests need ../shared/data/wikitext-103-raw beside the checkout"
    assert "wiki.valid.raw" in resolve_text(None, "cpu", "train").description
    assert "wiki.test.raw" in resolve_text(None, "cpu", "eval").description
    (tmp_path / "wiki.valid.raw").write_text("hello\n")
    (tmp_path / "wiki.test.raw").write_text("hello\n")
    monkeypatch.setenv("WIKITEXT_DIR", str(tmp_path))
    assert list(resolve_text(None, "cpu", "train").rows()) == ["hello\n"]


def test_no_text_anywhere_offline_names_every_option(monkeypatch, tmp_path):
    monkeypatch.setattr("common.data.text.shared_wikitext_dir", lambda: None)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(UserError) as err:
        resolve_text(None, "cpu", "train")
    message = str(err.value)
    for option in ("--text_files", "WIKITEXT_DIR", "../shared/data/wikitext-103-raw", "hub"):
        assert option in message


def test_paper_text_offline_fails_fast_with_one_line(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = resolve_text(None, "paper", "train")
    with pytest.raises(UserError, match="--preset cpu"):
        next(source.rows())
