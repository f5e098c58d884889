"""part14_kl_tests.py and part18_joint_kl.py end to end on the tiny preset: what each mode feeds the models, the
outputs, resume equivalence, and every refused input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

import common.stages.kl
import part14_kl_tests
import part18_joint_kl
from common.errors import UserError
from common.kl.conditions import JOINT_CONDITIONS, SEQUENTIAL_CONDITIONS
from common.kl.evaluator import PatchingEvaluator, measured_positions
from common.kl.summary import PER_POSITION_FILE
from tests.helpers import copy_stage

SMALL = ["--preset", "tiny", "--num_wiki_samples", "8", "--batch_size", "4"]
WINDOW_POSITIONS = 127  # positions 0..T-2 of a 128-token window


def run14(stage1: Path, nfm: Path, out: Path, *extra: str) -> dict:
    return part14_kl_tests.main([*SMALL, "--sae1_model_path", str(stage1), "--nfm_model_path", str(nfm),
                                 "--output_dir", str(out), *extra])


def load(out: Path) -> tuple[dict, dict[str, np.ndarray]]:
    with np.load(out / PER_POSITION_FILE) as data:
        columns = {name: data[name] for name in data.files}
    return json.loads((out / "results.json").read_text()), columns


@pytest.fixture(scope="module")
def kl14_dir(tiny_stage1_dir: Path, tiny_nfm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kl14") / "as_trained"
    # the original's flag spellings as aliases
    part14_kl_tests.main([*SMALL, "--primary_sae_path", str(tiny_stage1_dir), "--nfm_path", str(tiny_nfm_dir),
                          "--output_dir", str(out)])
    return out


def test_part14_as_trained(kl14_dir: Path, tiny_nfm_dir: Path) -> None:
    results, columns = load(kl14_dir)
    nfm_config = json.loads((tiny_nfm_dir / "config.json").read_text())
    evaluation = results["evaluation"]
    assert evaluation["original_eval"] is False and evaluation["normalize"] is True and evaluation["pooling"] == "bi"
    assert (evaluation["k"], evaluation["top_n"]) == (nfm_config["sae_k"], nfm_config["top_n_features"])
    assert evaluation["patch_layer"] == evaluation["capture_layer"] == 2 and evaluation["windows_used"] == 8
    assert list(results["conditions"]) == list(SEQUENTIAL_CONDITIONS)
    rows = 8 * WINDOW_POSITIONS
    assert columns["sae.kl"].shape == (rows,) and columns["eps_random.kl"].shape == (rows, 2)
    assert columns["eps_own.sae_nfm.kl"].shape == (rows, 2) and "eps_own.sae.kl" not in columns
    assert results["positions"] == rows and results["measurements"] == rows * (4 + 2)
    sae = results["conditions"]["sae"]
    assert sae["kl"]["mean"] == pytest.approx(columns["sae.kl"].astype(np.float64).mean(), rel=1e-6)
    assert sae["kl_ratio_eps_random"] == pytest.approx(columns["sae.kl"].mean() / columns["eps_random.kl"].mean(),
                                                       rel=1e-5)
    full = results["conditions"]["sae_nfm"]
    assert full["kl_reduction"] == pytest.approx(1 - columns["sae_nfm.kl"].mean() / columns["sae.kl"].mean(), rel=1e-5)
    assert (columns["sae.kl"] > 0).all() and (columns["sae.error_norm"] > 0).all()
    assert not (kl14_dir / "parts").exists()
    for metric in ("kl", "ce_next", "ce_argmax"):
        assert ((kl14_dir / f"{metric}_distribution.png").is_file()
                and (kl14_dir / f"{metric}_by_position.png").is_file())
    # the zero-ablation beside the conditions, and the per-window sums the intervals were drawn from
    zero = columns["zero_ablation.ce_next"].astype(np.float64)
    assert results["zero_ablation"]["ce_next"]["mean"] == pytest.approx(zero.mean(), rel=1e-9)
    assert (columns["zero_ablation.kl"] > columns["sae.kl"]).mean() > 0.5
    with np.load(kl14_dir / results["per_window_file"]) as sums:
        assert sums["window"].tolist() == list(range(8)) and sums["positions"].tolist() == [WINDOW_POSITIONS] * 8
        by_window = np.bincount(columns["window"], weights=columns["sae_nfm.kl"].astype(np.float64))
        np.testing.assert_allclose(sums["sae_nfm.kl"], by_window, rtol=1e-12)
        eps = np.bincount(columns["window"], weights=columns["eps_random.kl"].astype(np.float64).mean(axis=1))
        np.testing.assert_allclose(sums["eps_random.kl"], eps, rtol=1e-12)
    interval = full["ci95"]["kl_reduction"]
    assert interval["low"] <= full["kl_reduction"] <= interval["high"] and interval["windows"] == 8
    assert full["ci99"]["kl_reduction"]["low"] <= interval["low"]
    assert (kl14_dir / "kl_intervals.png").is_file()


def test_part14_original_eval(kl14_dir: Path, tiny_stage1_dir: Path, tiny_nfm_dir: Path, tmp_path: Path,
                              capsys) -> None:
    run14(tiny_stage1_dir, tiny_nfm_dir, tmp_path / "original", "--original_eval")
    assert "SAE + full NFM" in capsys.readouterr().out
    results, columns = load(tmp_path / "original")
    sae1_config = json.loads((tiny_stage1_dir / "config.json").read_text())
    evaluation = results["evaluation"]
    assert evaluation["original_eval"] is True and evaluation["normalize"] is False and evaluation["pooling"] == "sum"
    assert evaluation["k"] == sae1_config["config"]["k"] and evaluation["top_n"] is None
    assert evaluation["patch_layer"] == evaluation["capture_layer"] + 1 == 3
    _, trained = load(kl14_dir)
    assert not np.allclose(columns["sae.kl"], trained["sae.kl"])
    assert np.array_equal(columns["clean.ce_next"], trained["clean.ce_next"])  # same windows, same clean model


def test_resume_gives_the_same_results(kl14_dir: Path, tiny_stage1_dir: Path, tiny_nfm_dir: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "interrupted"

    def interrupt(*args, **kwargs) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(common.stages.kl, "merge_parts", interrupt)
        with pytest.raises(KeyboardInterrupt):
            run14(tiny_stage1_dir, tiny_nfm_dir, out)
    parts = sorted((out / "parts").glob("batch_*.npz"))
    assert len(parts) == 2 and not (out / "results.json").exists()
    parts[1].unlink()
    with pytest.raises(UserError, match="--resume"):
        run14(tiny_stage1_dir, tiny_nfm_dir, out)
    with pytest.raises(UserError, match="other settings"):
        run14(tiny_stage1_dir, tiny_nfm_dir, out, "--resume", "--num_epsilon_samples", "3")

    calls = []
    evaluate = PatchingEvaluator.evaluate
    monkeypatch.setattr(PatchingEvaluator, "evaluate", lambda self, *a: calls.append(a) or evaluate(self, *a))
    run14(tiny_stage1_dir, tiny_nfm_dir, out, "--resume")
    assert len(calls) == 1  # only the missing batch ran again
    results, columns = load(out)
    expected_results, expected = load(kl14_dir)
    assert columns.keys() == expected.keys()
    for name in columns:
        assert np.array_equal(columns[name], expected[name]), name
    assert results["conditions"] == expected_results["conditions"]


# ---- refused inputs: one clear line, nothing written ---------------------------------------------


@pytest.mark.parametrize("extra, message", [
    (["--layer", "1"], "trained at layer 2"),
    (["--num_epsilon_samples", "0"], "num_epsilon_samples must be at least 1"),
    (["--batch_size", "0"], "batch_size must be at least 1"),
    (["--positions_per_window", "0"], "positions_per_window must be at least 1"),
])
def test_bad_settings_are_refused(tiny_stage1_dir: Path, tiny_nfm_dir: Path, tmp_path: Path, extra: list[str],
                                  message: str) -> None:
    with pytest.raises(UserError, match=message):
        run14(tiny_stage1_dir, tiny_nfm_dir, tmp_path / "out", *extra)
    assert not (tmp_path / "out").exists()


def test_mismatched_checkpoints_are_refused(tiny_stage1_dir: Path, tiny_nfm_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="holds a 'nfm' checkpoint"):
        run14(tiny_nfm_dir, tiny_nfm_dir, tmp_path / "out")
    with pytest.raises(UserError, match="not a finished checkpoint"):
        run14(tmp_path / "missing", tiny_nfm_dir, tmp_path / "out")

    other_sae = copy_stage(tiny_stage1_dir, tmp_path / "other_sae")
    weights = load_file(str(other_sae / "best_model.safetensors"))
    save_file({name: 2 * tensor for name, tensor in weights.items()}, str(other_sae / "best_model.safetensors"))
    with pytest.raises(UserError, match="another stage-1 SAE"):
        run14(other_sae, tiny_nfm_dir, tmp_path / "out")

    other_stats = copy_stage(tiny_nfm_dir, tmp_path / "other_stats")
    stats = load_file(str(other_stats / "norm_stats.safetensors"))
    save_file({"mean": stats["mean"] + 1, "std": stats["std"]}, str(other_stats / "norm_stats.safetensors"))
    with pytest.raises(UserError, match="other normalization statistics"):
        run14(tiny_stage1_dir, other_stats, tmp_path / "out")

    record = json.loads((tiny_nfm_dir / "config.json").read_text())["model"]
    narrower = copy_stage(tiny_nfm_dir, tmp_path / "narrower",
                          {"num_features": 999, "model": {**record, "num_features": 999}})
    weights = load_file(str(narrower / "best_model.safetensors"))
    weights.update({name: weights[name][:999].clone() for name in ("linear_weight", "embeddings")})
    save_file(weights, str(narrower / "best_model.safetensors"))
    with pytest.raises(UserError, match="takes F=999 features"):
        run14(tiny_stage1_dir, narrower, tmp_path / "out")

    other_layer = copy_stage(tiny_nfm_dir, tmp_path / "other_layer", {"layer": 3})
    with pytest.raises(UserError, match="layer"):
        run14(tiny_stage1_dir, other_layer, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_original_eval_past_the_last_block_is_refused(tiny_stage1_dir: Path, tiny_nfm_dir: Path,
                                                      tmp_path: Path) -> None:
    last = {"layer": 3}  # the tiny model has 4 blocks: layer 3 is the last that can be patched
    stage1 = copy_stage(tiny_stage1_dir, tmp_path / "sae1", last)
    nfm = copy_stage(tiny_nfm_dir, tmp_path / "nfm", last)
    with pytest.raises(UserError, match="one block later, at layer 4"):
        run14(stage1, nfm, tmp_path / "out", "--layer", "3", "--original_eval")
    assert not (tmp_path / "out").exists()


def test_an_existing_output_dir_needs_resume_or_overwrite(kl14_dir: Path, tiny_stage1_dir: Path,
                                                          tiny_nfm_dir: Path) -> None:
    with pytest.raises(UserError, match="already holds a run"):
        run14(tiny_stage1_dir, tiny_nfm_dir, kl14_dir)


# ---- part18 ------------------------------------------------------------------------------------


def run18(joint: Path, out: Path, *extra: str) -> dict:
    return part18_joint_kl.main([*SMALL, "--joint_model_path", str(joint), "--output_dir", str(out), *extra])


def test_part18_as_trained_and_original(tiny_joint_dir: Path, tmp_path: Path) -> None:
    joint_dir = tiny_joint_dir
    config = json.loads((joint_dir / "config.json").read_text())["config"]
    run18(joint_dir, tmp_path / "trained")
    run18(joint_dir, tmp_path / "original", "--original_eval", "--positions_per_window", "20", "--own_norm_draws", "1")
    trained, trained_columns = load(tmp_path / "trained")
    original, original_columns = load(tmp_path / "original")
    assert list(trained["conditions"]) == list(JOINT_CONDITIONS) and trained["reference"] == "joint_sae"
    assert (trained["evaluation"]["k"], trained["evaluation"]["top_n"]) == (config["k"], config["top_n_features"])
    assert trained["evaluation"]["normalize"] and trained["evaluation"]["patch_layer"] == 2
    assert (original["evaluation"]["k"], original["evaluation"]["top_n"]) == (config["k"], None)
    assert not original["evaluation"]["normalize"] and original["evaluation"]["pooling"] == "bi"
    assert original["evaluation"]["patch_layer"] == 3
    full = trained["conditions"]["joint_full"]
    assert full["kl_reduction"] == pytest.approx(
        1 - trained_columns["joint_full.kl"].mean() / trained_columns["joint_sae.kl"].mean(), rel=1e-5)
    assert trained_columns["eps_random.kl"].shape == (8 * WINDOW_POSITIONS, 2)
    # measured at 20 positions of each window, the same for every series, drawn per window as recorded
    assert original["evaluation"]["positions_per_window_requested"] == 20
    assert (original["windows"], original["positions_per_window"], original["positions"]) == (8, 20, 160)
    assert all(values.shape[0] == 160 for values in original_columns.values())
    assert original_columns["eps_random.kl"].shape == (160, 2) and original_columns["eps_own.joint_full.kl"].shape == (
        160, 1)
    assert original["own_norm_draws"] == 1 and original["measurements_with_own_norm_baselines"] == 160 * (4 + 2 + 3)
    for window in range(8):
        rows = original_columns["window"] == window
        assert np.array_equal(original_columns["position"][rows],
                              measured_positions(window, range(WINDOW_POSITIONS), 20, seed=0))
    assert original["conditions"]["joint_sae"]["kl"]["mean"] != pytest.approx(
        trained["conditions"]["joint_sae"]["kl"]["mean"], rel=1e-3)


def test_part18_refuses_a_stage1_directory(tiny_stage1_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="expected joint"):
        run18(tiny_stage1_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()
