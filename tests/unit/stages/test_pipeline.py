"""common/stages/pipeline.py: a few runs' command lines, output flags, finishing files and input folders, written
out by hand."""
from __future__ import annotations

from pathlib import Path

from common.registry import all_runs, pipeline_runs
from common.stages.pipeline import BY_NAME, PIPELINE

RUN = Path("/runs/cpu")


def test_stage_1_reads_nothing_and_writes_a_checkpoint_dir_finished_by_metrics():
    sae1 = BY_NAME["sae1"]
    assert (sae1.script, sae1.out_flag, sae1.done_file) == ("part1c_sae_topK_implementation.py", "--checkpoint_dir",
                                                             "metrics.json")
    assert sae1.argv(RUN) == [] and sae1.input_dirs(RUN) == []
    assert sae1.trains and sae1.splits and sae1.uses_lm and sae1.resumable and sae1.text == "train"


def test_the_nfm_reads_stage_1():
    nfm = BY_NAME["nfm"]
    assert nfm.argv(RUN) == ["--sae1_model_path", "/runs/cpu/sae1"]
    assert nfm.input_dirs(RUN) == [RUN / "sae1"]
    assert not nfm.splits and nfm.out_flag == "--checkpoint_dir"


def test_the_original_selection_reads_the_original_discovery_and_says_original_eval():
    run = BY_NAME["selection_original"]
    assert run.argv(RUN) == ["--sae1_model_path", "/runs/cpu/sae1", "--nfm_model_path", "/runs/cpu/nfm",
                             "--interaction_sae_path", "/runs/cpu/sae2", "--discovery_dir",
                             "/runs/cpu/discovery_original", "--original_eval"]
    assert run.input_dirs(RUN) == [RUN / "sae1", RUN / "nfm", RUN / "sae2", RUN / "discovery_original"]
    assert (run.out_flag, run.done_file, run.trains, run.resumable) == ("--output_dir", "results.json", False, False)
    assert run.script == "part11_NFMSAE_Analysis.py"


def test_the_linear_control_and_the_analyses():
    assert BY_NAME["clamp_linear"].argv(Path("r")) == [
        "--sae1_model_path", "r/sae1", "--nfm_model_path", "r/nfm", "--interaction_sae_path", "r/sae2",
        "--selection_dir", "r/selection", "--pathway", "linear", "--null_features", "0", "--null_directions", "0"]
    bimodal = BY_NAME["bimodal"]
    assert bimodal.argv(RUN) == ["--joint_model_path", "/runs/cpu/joint", "--orthogonality_dir", "/runs/cpu/ortho"]
    assert (bimodal.uses_lm, bimodal.done_file, bimodal.text) == (False, "results.json", None)
    kl14 = BY_NAME["kl14_original"]
    assert kl14.splits and kl14.text == "eval" and kl14.resumable and kl14.argv(RUN)[-1] == "--original_eval"


def test_the_pipeline_is_the_registrys_runs_in_order():
    assert [(run.stage, run.run) for run in PIPELINE] == pipeline_runs()
    # BY_NAME also names the runs only study.py runs (the controls of METHOD §14), each beside its stage's
    main_job = [run.name for run in PIPELINE]
    assert [name for name in BY_NAME if name in main_job] == main_job
    assert set(BY_NAME) - {run.name for run in PIPELINE} == {run.name for _, run in all_runs() if not run.in_main_job}
    assert "nfm_shuffled" in BY_NAME and "nfm_shuffled" not in {run.name for run in PIPELINE}
