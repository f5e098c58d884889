"""The controls of METHOD §14 on the tiny preset: each one's mechanics, its figures held to the same figures computed by
the stage it controls for (another code path), the shuffled control's permutation seeded and recorded, the planted
ground truth found and its twin empty, and the study's controls table read back from the files."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import control_joint_linear
import control_kl
import control_nfm
import control_sae_matched
from common.kl.windows import window_totals
from common.models.joint import JointSAENFM, unique_parameter_counts
from common.models.loading import load_joint, load_nfm, load_sae
from common.reporting.study_controls import VARIANT, controls
from common.reporting.study_tables import Runs
from common.training.ridge_map import RIDGE_FILE, RidgeMap
from tests.helpers import assert_findings_quote_their_tables


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def shuffled(tiny_stage1_dir: Path, tiny_nfm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("controls") / "nfm_shuffled"
    control_nfm.main(["--preset", "tiny", "--sae1_model_path", str(tiny_stage1_dir), "--nfm_model_path",
                      str(tiny_nfm_dir), "--target", "shuffled", "--checkpoint_dir", str(out)])
    return out


@pytest.fixture(scope="module")
def sae_params(tiny_stage1_dir: Path, tiny_joint_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("controls") / "sae_params"
    control_sae_matched.main(["--preset", "tiny", "--sae1_model_path", str(tiny_stage1_dir), "--joint_model_path",
                              str(tiny_joint_dir), "--match_parameters", "--checkpoint_dir", str(out)])
    return out


@pytest.fixture(scope="module")
def joint_linear(tiny_stage1_dir: Path, tiny_joint_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("controls") / "joint_linear"
    control_joint_linear.main(["--preset", "tiny", "--sae1_model_path", str(tiny_stage1_dir), "--joint_model_path",
                               str(tiny_joint_dir), "--checkpoint_dir", str(out)])
    return out


def test_shuffled_control_records_its_permutations_and_adds_nothing_beyond_the_intercept(shuffled, tiny_nfm_dir):
    control = _json(shuffled / "metrics.json")["control"]
    seed = _json(shuffled / "config.json")["config"]["seed"]
    assert [p["chunk"] for p in control["permutations"]] == list(range(_json(tiny_nfm_dir / "config.json")["data"]
                                                                       ["chunks"]))
    for record in control["permutations"]:
        order = torch.randperm(record["rows"], generator=torch.Generator().manual_seed(record["seed"]))
        assert record["seed"] == control_nfm.SHUFFLE_SEED + 1_000 * seed + record["chunk"]
        assert hashlib.sha256(order.numpy().tobytes()).hexdigest() == record["sha256"]
    # its gain minus the intercept's, as the verdict says; a control that had seen true pairs would gain like stage 2
    assert control["verdict"]["estimate"] == pytest.approx(control["reduction"]["estimate"]
                                                           - control["intercept_reduction"]["estimate"], abs=1e-9)
    assert control["holds"] and control["reduction"]["estimate"] < 0.5 * control["reference_reduction"]["estimate"]
    # the stage-2 NFM's reduction on the same rows, computed by stage 2 itself
    assert control["reference_reduction"]["estimate"] == pytest.approx(
        _json(tiny_nfm_dir / "metrics.json")["error_reduction_val"], rel=1e-5)


def test_a_control_loads_wherever_its_models_kind_is_accepted(shuffled, sae_params, joint_linear):
    """part14 reads a control NFM, part18 a control joint model, part16 a control SAE (and a joint's SAE part)."""
    assert load_nfm(shuffled)[0].num_features == _json(shuffled / "metrics.json")["num_features"]
    assert load_sae(sae_params)[0].num_features == _json(sae_params / "metrics.json")["num_features"]
    assert load_sae(joint_linear)[0].num_features == load_joint(joint_linear)[0].sae.num_features


def test_parameter_matched_sae_has_the_joint_models_parameters_and_its_rows(sae_params, tiny_joint_dir):
    metrics = _json(sae_params / "metrics.json")
    joint = JointSAENFM.load(tiny_joint_dir)
    total, width = sum(unique_parameter_counts(joint).values()), joint.sae.d_model
    assert 0 <= total - metrics["parameters"]["this_sae"] < width + 1  # one more feature would exceed it
    assert metrics["parameters"]["joint"] == total and metrics["num_features"] > joint.sae.num_features
    assert _json(sae_params / "config.json")["config"]["k"] == joint.sae.k
    joint_metrics = _json(tiny_joint_dir / "metrics.json")  # the joint stage's own evaluation of the same rows
    assert metrics["control"]["joint_mse"]["estimate"] == pytest.approx(joint_metrics["joint_mse"], rel=1e-5)
    assert metrics["control"]["mse"]["estimate"] == pytest.approx(metrics["mse"], rel=1e-5)
    assert metrics["control"]["verdict"]["estimate"] == pytest.approx(1 - joint_metrics["joint_mse"] / metrics["mse"],
                                                                      rel=1e-5)


def test_linear_only_joint_never_uses_its_interaction_pathway(joint_linear, tiny_joint_dir):
    model = JointSAENFM.load(joint_linear)
    assert not model.nfm.mlp[3].weight.any() and not model.nfm.mlp[3].bias.any()
    metrics = _json(joint_linear / "metrics.json")
    assert metrics["mean_abs_interaction"] == 0.0
    joint_mse = _json(tiny_joint_dir / "metrics.json")["joint_mse"]
    control = metrics["control"]
    assert control["joint_mse"]["estimate"] == pytest.approx(joint_mse, rel=1e-5)
    assert control["linear_only_mse"]["estimate"] == pytest.approx(metrics["joint_mse"], rel=1e-5)
    assert control["verdict"]["estimate"] == pytest.approx(1 - joint_mse / metrics["joint_mse"], rel=1e-5)


def test_main_job_controls_in_the_tiny_run(tiny_run):
    ridge = _json(tiny_run / "ridge" / "results.json")
    scores = ridge["alpha_slice_mse"]
    assert f"{ridge['alpha']:g}" == min(scores, key=scores.get)
    assert ridge["windows"]["set_aside"] > 0 and ridge["windows"]["fit"] > ridge["windows"]["set_aside"]
    # the NFM's reduction of the same held-out error, as stage 2 computed it on its own
    assert ridge["nfm_reduction"]["estimate"] == pytest.approx(
        _json(tiny_run / "nfm" / "metrics.json")["error_reduction_val"], rel=1e-5)
    assert ridge["nfm_minus_ridge"]["estimate"] == pytest.approx(
        ridge["nfm_reduction"]["estimate"] - ridge["ridge_reduction"]["estimate"], abs=1e-9)
    assert RidgeMap.load(tiny_run / "ridge" / RIDGE_FILE).coef.shape == (64, 64)


def test_planted_pairs_are_found_and_the_twin_shows_no_gain(tiny_run):
    results = _json(tiny_run / "planted" / "results.json")  # the main job's run, as reproduce.py made it
    strong, twin = results["strong"], results["twin"]
    assert results["strong"]["strength"] > 0 and twin is not None
    assert strong["interaction_gain"]["low"] > 0 and strong["recall"] >= 0.8
    assert twin["interaction_gain"]["low"] <= 0 <= twin["interaction_gain"]["high"]
    assert results["holds"] == {"planted": True, "twin": True}


def test_study_controls_table_is_read_from_the_files(tiny_run, shuffled, sae_params, joint_linear, tmp_path):
    study = tmp_path / "study"
    for folder in (shuffled, sae_params, joint_linear):
        shutil.copytree(folder, study / VARIANT / folder.name)
    shutil.copytree(tiny_run / "planted", study / VARIANT / "planted_sweep")  # the sweep's format, one strength
    section = controls(Runs(study, tiny_run))
    rows = {row["name"]: row for row in section["rows"]}
    params = rows["joint vs parameter-matched SAE on its schedule"]["cells"]
    verdict = _json(sae_params / "metrics.json")["control"]["verdict"]
    assert [cell["value"] for cell in params[:3]] == [verdict["estimate"], verdict["low"], verdict["high"]]
    assert rows["NFM − ridge map (points)"]["cells"][0]["value"] == \
        _json(tiny_run / "ridge" / "results.json")["nfm_minus_ridge"]["estimate"]
    assert rows["joint vs untied SAE on its schedule"]["cells"][0]["value"] is None  # not run here
    assert "parameter-matched" in section["finding"] and f"{100 * verdict['estimate']:.1f}%" in section["finding"]
    assert "recall@|P|" in section["finding"]
    assert_findings_quote_their_tables({"questions": {"controls": section}})


def test_kl_window_totals_sum_each_windows_positions(tmp_path):
    store = tmp_path / "per_position.npz"
    np.savez(store, window=np.array([5, 5, 2, 2, 2]), **{"sae.kl": np.array([1.0, 2.0, 3.0, 4.0, 5.0])})
    windows, sums = window_totals(store, ["sae.kl"])
    assert windows.tolist() == [2, 5] and sums["sae.kl"].tolist() == [12.0, 3.0]


def test_kl_control_verdict_is_the_joint_models_kl_against_the_saes_per_window(tmp_path):
    store = tmp_path / "per_position.npz"
    np.savez(store, window=np.repeat(np.arange(4), 2), **{"sae.kl": np.array([2.0, 2.0, 1.0, 3.0, 2.0, 2.0, 4.0, 0.0]),
                                                        "joint_full.kl": np.full(8, 1.0)})
    control = control_kl.verdict(store, seed=0)["control"]
    assert control["verdict"]["estimate"] == pytest.approx(1 - 8 / 16)
    assert control["verdict"]["windows"] == 4 and control["holds"] == (control["verdict"]["low"] > 0)
