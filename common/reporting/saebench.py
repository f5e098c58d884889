"""SAEBench's core metrics of the run's models, one JSON file each in SAEBench's core output format (METHOD §15):
DIR/saebench/core/<model>_eval_results.json.

Every figure is read from a stage's own file, never recomputed here: the CE-loss and KL scores from the KL stages'
means (the clean model, the model spliced in, the residual zeroed at the patch layer), the reconstruction and
shrinkage terms from the stage's held-out evaluation (``saebench_terms``: raw units, explained variance about the
mean), L0 and the dead, dense and alive fractions from the stage's per-feature firing counts on its held-out rows.
A figure whose file lacks it is ``None`` here, -1 in the file (SAEBench's own mark for a value it could not compute)
and named in ``eval_result_unstructured.not_available``."""
from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import UserError
from common.store.fingerprints import git_commit
from common.store.reads import load_json, load_tensors_with_metadata
from common.store.savers import atomic_save_json

SAEBENCH_COMMIT = "8042bb3828c6340da8d12062324e92b2077c571c"  # SAEBench v0.6.0: the schema and formulas followed
CORE_DIR = Path("saebench") / "core"
FIRING_FILE = "feature_firing.safetensors"
DENSE = 0.10  # a dense feature fires on more than 10% of tokens
MISSING = -1  # SAEBench's mark for a value it could not compute
TERMS = ("explained_variance", "explained_variance_legacy", "mse", "cossim", "l2_norm_in", "l2_norm_out", "l2_ratio",
         "relative_reconstruction_bias", "l1", "average_max_encoder_cosine_sim", "average_max_decoder_cosine_sim")


@dataclass(frozen=True)
class CoreModel:
    """One model of the run as SAEBench sees it: where each of its figures lies."""

    name: str  # the file's name: <name>_eval_results.json
    title: str
    kl_stage: str  # its KL stage's folder
    condition: str  # the condition of that stage that splices it in
    terms_stage: str  # the stage whose metrics.json holds its saebench_terms
    sae_stage: str  # the stage whose SAE's firing counts and shape are its sparsity


CORE_MODELS = (
    CoreModel("sae1", "stage-1 SAE", "kl14", "sae", "sae1", "sae1"),
    CoreModel("sae_nfm", "SAE + NFM (sequential)", "kl14", "sae_nfm", "nfm", "sae1"),
    CoreModel("joint", "joint SAE + NFM", "kl18", "joint_full", "joint", "joint"),
)


def _read(path: Path) -> dict[str, Any]:
    return load_json(path) if path.is_file() else {}


def _mean(results: dict[str, Any], *keys: str) -> float | None:
    value: Any = results
    for key in (*keys, "mean"):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return float(value)


def _score(zero: float | None, model: float | None, clean: float) -> float | None:
    """(zero − model) / (zero − clean): 1 for a model as good as the clean run, 0 for one no better than zeroing."""
    if zero is None or model is None or zero == clean:
        return None
    return (zero - model) / (zero - clean)


def preservation(kl: dict[str, Any], condition: str) -> dict[str, dict[str, float | None]]:
    """SAEBench's behaviour and performance preservation of one KL condition (the clean model's KL is 0)."""
    kl_zero, kl_model = _mean(kl, "zero_ablation", "kl"), _mean(kl, "conditions", condition, "kl")
    ce_zero, ce_model = _mean(kl, "zero_ablation", "ce_next"), _mean(kl, "conditions", condition, "ce_next")
    ce_clean = _mean(kl, "clean", "ce_next")
    return {
        "model_behavior_preservation": {"kl_div_score": _score(kl_zero, kl_model, 0.0),
                                        "kl_div_with_ablation": kl_zero, "kl_div_with_sae": kl_model},
        "model_performance_preservation": {
            "ce_loss_score": None if ce_clean is None else _score(ce_zero, ce_model, ce_clean),
            "ce_loss_with_ablation": ce_zero, "ce_loss_with_sae": ce_model, "ce_loss_without_sae": ce_clean},
    }


def firing(folder: Path) -> dict[str, float | int | None]:
    """L0, alive, dense and the firing-frequency fractions from a stage's per-feature firing counts."""
    path = folder / FIRING_FILE
    if not path.is_file():
        return {}
    tensors, metadata = load_tensors_with_metadata(path)
    if "firing_counts" not in tensors or "held_out_rows" not in metadata:
        raise UserError(f"{path} holds no firing_counts with its held_out_rows: re-run the stage that wrote it")
    counts, rows = tensors["firing_counts"].double(), int(metadata["held_out_rows"])
    density = counts / rows
    fired = float(density.sum())

    def share_over(bound: float) -> float:
        return float(density[density > bound].sum()) / fired if fired else 0.0

    return {"l0": float(counts.sum()) / rows, "frac_alive": float((counts > 0).double().mean()),
            "freq_over_1_percent": float((density > 0.01).double().mean()),
            "freq_over_10_percent": float((density > DENSE).double().mean()),
            "normalized_freq_over_1_percent": share_over(0.01), "normalized_freq_over_10_percent": share_over(DENSE),
            "rows": rows, "features": int(counts.numel())}


def core_metrics(out_dir: Path, model: CoreModel) -> dict[str, dict[str, Any]]:
    """SAEBench's seven metric groups of one model, ``None`` where its stage's file lacks the figure."""
    kl = _read(out_dir / model.kl_stage / "results.json")
    terms = _read(out_dir / model.terms_stage / "metrics.json").get("saebench_terms", {})
    fires = firing(out_dir / model.sae_stage)
    term = {key: terms.get(key) for key in TERMS}
    return {
        **preservation(kl, model.condition),
        "reconstruction_quality": {key: term[key] for key in ("explained_variance", "explained_variance_legacy",
                                                              "mse", "cossim")},
        "shrinkage": {key: term[key] for key in ("l2_norm_in", "l2_norm_out", "l2_ratio",
                                                 "relative_reconstruction_bias")},
        "sparsity": {"l0": fires.get("l0"), "l1": term["l1"]},
        "token_stats": {"total_tokens_eval_reconstruction": kl.get("positions"),
                        "total_tokens_eval_sparsity_variance": fires.get("rows", terms.get("rows"))},
        "misc_metrics": {**{key: fires.get(key) for key in (
            "freq_over_1_percent", "freq_over_10_percent", "normalized_freq_over_1_percent",
            "normalized_freq_over_10_percent")},
            "average_max_encoder_cosine_sim": term["average_max_encoder_cosine_sim"],
            "average_max_decoder_cosine_sim": term["average_max_decoder_cosine_sim"],
            "frac_alive": fires.get("frac_alive")},
    }


def _filled(metrics: dict[str, dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """None (and NaN or infinity) as SAEBench's -1, and the names of the figures so marked."""
    missing = [f"{group}.{key}" for group, values in metrics.items() for key, value in values.items()
               if value is None or (isinstance(value, float) and not math.isfinite(value))]
    filled = {group: {key: MISSING if f"{group}.{key}" in missing else value for key, value in values.items()}
              for group, values in metrics.items()}
    return filled, missing


def _eval_config(out_dir: Path, model: CoreModel) -> dict[str, Any]:
    kl_config = _read(out_dir / model.kl_stage / "config.json")
    evaluation = kl_config.get("evaluation", {})
    batch = kl_config.get("config", {}).get("batch_size", 1)
    return {"model_name": kl_config.get("model_id", ""), "llm_dtype": kl_config.get("lm_dtype", ""),
            "batch_size_prompts": batch,
            "n_eval_reconstruction_batches": math.ceil(evaluation.get("windows_used", 0) / batch),
            "n_eval_sparsity_variance_batches": 1, "dataset": evaluation.get("text", ""),
            "context_size": evaluation.get("window_tokens", 0),
            "compute_kl": True, "compute_ce_loss": True, "compute_l2_norms": True, "compute_sparsity_metrics": True,
            "compute_variance_metrics": True, "compute_featurewise_density_statistics": False,
            "compute_featurewise_weight_based_metrics": False,
            "exclude_special_tokens_from_reconstruction": bool(evaluation.get("first_position", 0)),
            "verbose": False}


def core_output(out_dir: Path, model: CoreModel) -> dict[str, Any]:
    """One model's file: SAEBench's core output object, with where each figure came from."""
    metrics, missing = _filled(core_metrics(out_dir, model))
    sae_config = _read(out_dir / model.sae_stage / "config.json")
    shape = sae_config.get("model", {})
    shape = shape.get("sae", shape)  # the joint model's SAE part
    terms = _read(out_dir / model.terms_stage / "metrics.json").get("saebench_terms", {})
    layer = sae_config.get("layer")
    return {
        "eval_type_id": "core", "eval_config": _eval_config(out_dir, model), "eval_id": str(uuid.uuid4()),
        "datetime_epoch_millis": int(time.time() * 1000), "eval_result_metrics": metrics,
        "sae_bench_commit_hash": SAEBENCH_COMMIT, "sae_lens_id": None, "sae_lens_release_id": None,
        "sae_lens_version": None,
        "sae_cfg_dict": {"architecture": "topk", "d_in": shape.get("d_model"), "d_sae": shape.get("num_features"),
                         "k": shape.get("k"), "hook_name": f"blocks.{layer}.hook_resid_post" if layer is not None
                         else None, "model_name": sae_config.get("model_id"), "model": model.title},
        "eval_result_unstructured": {
            "computed_by": f"this project's reproduce.py (git commit {git_commit()}), not SAEBench's code",
            "definitions": f"SAEBench v0.6.0 core ({SAEBENCH_COMMIT[:8]}); explained_variance about the mean as a "
                           "ratio of sums (SAELens's fix), in raw residual units; METHOD §15",
            "sources": {"ce_and_kl": f"{model.kl_stage}/results.json, condition {model.condition!r} against "
                                     "zero_ablation", "reconstruction": f"{model.terms_stage}/metrics.json "
                                     f"saebench_terms (K {terms.get('k')})",
                        "sparsity": f"{model.sae_stage}/{FIRING_FILE} (the stage's trained K)"},
            "not_available": missing},
    }


def write_saebench(out_dir: Path) -> list[Path]:
    """Every model's core file whose stages ran; returns the paths written."""
    written = []
    for model in CORE_MODELS:
        if not (out_dir / model.terms_stage / "metrics.json").is_file():
            continue
        path = out_dir / CORE_DIR / f"{model.name}_eval_results.json"
        atomic_save_json(core_output(out_dir, model), path)
        written.append(path)
    return written
