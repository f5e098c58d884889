"""SAEBench's core files (METHOD §15) on a run folder built here with round numbers: every figure held to the
arithmetic written out below, the files valid under SAEBench's own published schema (tests/data/saebench), and a
figure a stage's file lacks marked -1 and named, never invented."""
import json
from pathlib import Path

import pytest
import torch
from jsonschema import Draft202012Validator

from common.reporting.saebench import CORE_DIR, write_saebench
from common.store.savers import atomic_save_json, atomic_save_safetensors
from tests.helpers import DATA

SCHEMA = json.loads((DATA / "saebench" / "eval_output_schema_core.json").read_text())
TERMS = {"explained_variance": 0.7, "explained_variance_legacy": 0.6, "mse": 2.0, "cossim": 0.9, "l2_norm_in": 10.0,
         "l2_norm_out": 9.0, "l2_ratio": 0.9, "relative_reconstruction_bias": 0.95, "l1": 30.0,
         "average_max_encoder_cosine_sim": 0.2, "average_max_decoder_cosine_sim": 0.2, "rows": 200, "k": 4}


def _kl(condition: str, kl: float, ce: float, zero: bool = True) -> dict:
    results = {"positions": 1000, "clean": {"ce_next": {"mean": 3.0}},
               "conditions": {condition: {"kl": {"mean": kl}, "ce_next": {"mean": ce}}}}
    if zero:
        results["zero_ablation"] = {"kl": {"mean": 5.0}, "ce_next": {"mean": 8.0}}
    return results


def _run(root: Path, zero: bool = True) -> Path:
    atomic_save_json(_kl("sae", 1.0, 4.0, zero), root / "kl14" / "results.json")
    atomic_save_json({"model_id": "m", "lm_dtype": "torch.float32", "config": {"batch_size": 8},
                      "evaluation": {"windows_used": 20, "text": "t", "window_tokens": 128, "first_position": 1}},
                     root / "kl14" / "config.json")
    atomic_save_json({"saebench_terms": TERMS}, root / "sae1" / "metrics.json")
    atomic_save_json({"layer": 3, "model_id": "m", "model": {"d_model": 8, "num_features": 10, "k": 4}},
                     root / "sae1" / "config.json")
    # 10 features on 200 rows: densities 0, 0, 0.005, 0.02, 0.05, 0.05, 0.1, 0.15, 0.2, 0.5
    counts = torch.tensor([0, 0, 1, 4, 10, 10, 20, 30, 40, 100], dtype=torch.int64)
    atomic_save_safetensors({"firing_counts": counts}, root / "sae1" / "feature_firing.safetensors",
                            {"held_out_rows": "200"})
    return root


def test_core_figures_equal_the_hand_computation_and_validate(tmp_path):
    written = write_saebench(_run(tmp_path))
    assert written == [tmp_path / CORE_DIR / "sae1_eval_results.json"]  # only the models whose stages ran
    core = json.loads(written[0].read_text())
    Draft202012Validator(SCHEMA).validate(core)
    metrics = core["eval_result_metrics"]
    assert metrics["model_performance_preservation"]["ce_loss_score"] == pytest.approx((8 - 4) / (8 - 3))
    assert metrics["model_behavior_preservation"]["kl_div_score"] == pytest.approx((5 - 1) / 5)
    assert metrics["sparsity"] == {"l0": 215 / 200, "l1": 30.0}
    misc = metrics["misc_metrics"]
    assert misc["frac_alive"] == pytest.approx(0.8)
    assert misc["freq_over_1_percent"] == pytest.approx(0.7)  # 0.02 and above
    assert misc["freq_over_10_percent"] == pytest.approx(0.3)  # 0.1 itself is not over 10%
    assert misc["normalized_freq_over_10_percent"] == pytest.approx((30 + 40 + 100) / 215)
    assert metrics["reconstruction_quality"]["explained_variance"] == 0.7
    assert metrics["token_stats"] == {"total_tokens_eval_reconstruction": 1000,
                                      "total_tokens_eval_sparsity_variance": 200}
    assert core["eval_config"]["n_eval_reconstruction_batches"] == 3
    assert core["eval_result_unstructured"]["not_available"] == []


def test_a_kl_file_without_zero_ablation_marks_the_scores_missing(tmp_path):
    core = json.loads(write_saebench(_run(tmp_path, zero=False))[0].read_text())
    Draft202012Validator(SCHEMA).validate(core)
    assert core["eval_result_metrics"]["model_performance_preservation"]["ce_loss_score"] == -1
    assert "model_behavior_preservation.kl_div_score" in core["eval_result_unstructured"]["not_available"]
    assert core["eval_result_metrics"]["model_performance_preservation"]["ce_loss_without_sae"] == 3.0


def test_the_schema_refuses_what_saebench_would():
    core = json.loads((DATA / "saebench" / "eval_output_schema_core.json").read_text())
    assert core["title"] == "Core"
    validator = Draft202012Validator(SCHEMA)
    assert not validator.is_valid({"eval_type_id": "core"})  # no metrics, no config
