"""common/stages/runner.py: the command line reproduce.py passes each stage, flag by flag; --stages refuses an input
that is neither run now nor finished; a fresh run that failed leaves no trace, an earlier one keeps what it had."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from common.errors import UserError
from common.stages.pipeline import BY_NAME
from common.stages.run_folder import check_inputs_exist, forget_empty_run
from common.stages.run_records import RUN_RECORDS
from common.stages.runner import stage_argv

RUN = Path("/runs/x")


def args(**given: object) -> argparse.Namespace:
    """reproduce.py's parsed flags, with its defaults."""
    defaults = dict(preset="tiny", model=None, text_files=None, eval_text_files=None, device=None, precision=None,
                    seed=None, cache=False)
    return argparse.Namespace(**{**defaults, **given})


def test_with_no_flags_a_stage_gets_the_preset_and_its_output():
    assert stage_argv(BY_NAME["sae1"], args(), RUN) == ["--preset", "tiny", "--checkpoint_dir", "/runs/x/sae1"]
    assert stage_argv(BY_NAME["ortho"], args(preset="cpu"), RUN) == [
        "--preset", "cpu", "--output_dir", "/runs/x/ortho", "--sae1_model_path", "/runs/x/sae1",
        "--sae2_model_path", "/runs/x/joint"]


def test_device_precision_and_seed_pass_to_every_stage_seed_0_included():
    flags = args(device="cpu", precision="fp32", seed=0)
    for name in ("sae1", "ortho", "clamp_linear"):
        assert stage_argv(BY_NAME[name], flags, RUN)[-6:] == ["--device", "cpu", "--precision", "fp32", "--seed", "0"]


def test_the_model_and_the_cache_go_only_to_stages_that_open_the_lm():
    flags = args(model="m", cache=True)
    assert stage_argv(BY_NAME["sae1"], flags, RUN)[-4:] == ["--model", "m", "--cache_dir", "/runs/x/activation_cache"]
    assert "--model" not in stage_argv(BY_NAME["ortho"], flags, RUN)
    assert "--cache_dir" not in stage_argv(BY_NAME["sparsity"], flags, RUN)


def test_training_text_goes_to_training_stages_and_evaluation_text_to_evaluations():
    flags = args(text_files=["t1.txt", "t2.txt"], eval_text_files=["e.txt"])
    assert stage_argv(BY_NAME["nfm"], flags, RUN)[-3:] == ["--text_files", "t1.txt", "t2.txt"]
    assert "--eval_text_files" not in stage_argv(BY_NAME["nfm"], flags, RUN)
    for name in ("kl14", "kl18_original", "meaning"):
        argv = stage_argv(BY_NAME[name], flags, RUN)
        assert argv[-2:] == ["--eval_text_files", "e.txt"] and "--text_files" not in argv, name
    for name in ("discovery", "clamp"):
        argv = stage_argv(BY_NAME[name], flags, RUN)
        assert "--text_files" not in argv and "--eval_text_files" not in argv, name


def test_everything_at_once_in_order():
    flags = args(preset="cpu", model="m", cache=True, device="cpu", precision="bf16", seed=3, eval_text_files=["e"])
    assert stage_argv(BY_NAME["kl14_original"], flags, RUN) == [
        "--preset", "cpu", "--output_dir", "/runs/x/kl14_original", "--sae1_model_path", "/runs/x/sae1",
        "--nfm_model_path", "/runs/x/nfm", "--original_eval", "--device", "cpu", "--precision", "bf16", "--seed", "3",
        "--model", "m", "--cache_dir", "/runs/x/activation_cache", "--eval_text_files", "e"]


def finish(folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("{}")


def test_an_input_neither_run_now_nor_finished_is_refused(tmp_path: Path):
    nfm = BY_NAME["nfm"]
    with pytest.raises(UserError, match=r"^stage nfm reads .*/sae1, which is not finished: add --stages sae1 "):
        check_inputs_exist([nfm], tmp_path)
    check_inputs_exist([BY_NAME["sae1"], nfm], tmp_path)  # run now, before it
    (tmp_path / "sae1").mkdir()
    with pytest.raises(UserError, match="sae1, which is not finished"):  # started, never finished
        check_inputs_exist([nfm], tmp_path)
    finish(tmp_path / "sae1", "metrics.json")
    check_inputs_exist([nfm], tmp_path)


def test_an_evaluations_input_is_finished_by_its_results(tmp_path: Path):
    bimodal = BY_NAME["bimodal"]
    finish(tmp_path / "joint", "metrics.json")
    finish(tmp_path / "ortho", "metrics.json")  # not the file ortho finishes with
    with pytest.raises(UserError, match="ortho, which is not finished"):
        check_inputs_exist([bimodal], tmp_path)
    finish(tmp_path / "ortho", "results.json")
    check_inputs_exist([bimodal], tmp_path)


def test_a_fresh_failed_run_leaves_no_trace(tmp_path: Path):
    out = tmp_path / "run"
    (out / RUN_RECORDS).mkdir(parents=True)
    (out / RUN_RECORDS / "sae1.json").write_text("{}")  # recorded before it started, failed before it wrote
    forget_empty_run(out, fresh=True)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_an_earlier_run_keeps_its_folder_and_the_records_of_stages_that_wrote(tmp_path: Path):
    out = tmp_path / "run"
    finish(out / "sae1", "metrics.json")
    (out / RUN_RECORDS).mkdir()
    for stage in ("sae1", "nfm"):
        (out / RUN_RECORDS / f"{stage}.json").write_text("{}")
    forget_empty_run(out, fresh=False)
    assert sorted(p.name for p in (out / RUN_RECORDS).iterdir()) == ["sae1.json"]
    forget_empty_run(out, fresh=True)  # a folder this call made but that holds a stage's output stays
    assert (out / "sae1" / "metrics.json").is_file() and (out / RUN_RECORDS / "sae1.json").is_file()


def test_an_existing_empty_folder_is_not_removed_unless_this_call_made_it(tmp_path: Path):
    out = tmp_path / "run"
    out.mkdir()
    forget_empty_run(out, fresh=False)
    assert out.is_dir()
    forget_empty_run(tmp_path / "never_made", fresh=True)  # nothing there: nothing to do
