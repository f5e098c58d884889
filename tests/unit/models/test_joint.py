"""Stage 5: the joint SAE + NFM equals its dense reference on every path, counts parameters as the paper does, and
part15 learns, resumes exactly, loads where a stage-1 directory is accepted, and refuses bad input."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import part15_joint_SAENFM as part15
from common.models.joint import (
    JointSAENFM,
    joint_reference,
    paper_parameter_counts,
    unique_parameter_counts,
    with_shares,
)
from common.models.loading import load_joint, load_sae
from common.models.sae import dense_codes, sae_reference
from common.runtime.regimes import autocast
from common.stages.cli import run_cli
from common.store.reads import load_json
from common.store.stage_files import CONFIG_FILE, METRICS_FILE, RESUME_FILE, WEIGHTS_FILE, load_resume_state
from tests.helpers import assert_rel_close, copy_stage

D_MODEL, NUM_FEATURES, K, EMBED_DIM, TOP_N, BATCH = 16, 200, 12, 8, 6, 10
PAPER_SHAPES = dict(d_model=3_200, num_features=50_000, k=1_024, embed_dim=300, top_n=512)


def make_joint(tied: bool = True, dtype: torch.dtype = torch.float32) -> JointSAENFM:
    torch.manual_seed(0)
    joint = JointSAENFM(D_MODEL, NUM_FEATURES, K, EMBED_DIM, TOP_N, tied=tied).to(dtype)
    with torch.no_grad():  # the NFM's init (std 0.01) leaves the interaction near zero; larger weights test it
        joint.sae.b_enc.normal_(std=0.1)
        for p in joint.nfm.parameters():
            p.normal_(std=0.3)
    return joint


def run_path(joint: JointSAENFM, x: torch.Tensor, decode: str | None, seed: int = 7):
    """Outputs and parameter gradients of one path (``decode=None``: the dense reference) under a fixed RNG state."""
    joint.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # dropout is the only random draw: the same mask on every path
    out = joint_reference(joint, x) if decode is None else joint(x, decode=decode)
    # every output in the loss, weighted differently so that no gradient cancels another
    loss = ((out.recon - x).square().mean() + out.sae_recon.square().mean() + out.linear.pow(3).mean()
            + out.interaction.square().mean())
    loss.backward()
    return out, {name: p.grad.detach().clone() for name, p in joint.named_parameters()}


# ---- paths against the dense reference ---------------------------------------------------------


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("decode", ["sparse", "dense"])
def test_paths_equal_dense_fp32_reference(decode: str, train: bool, tied: bool):
    joint = make_joint(tied).train(train)
    x = torch.randn(BATCH, D_MODEL, generator=torch.Generator().manual_seed(1)) * 2
    ref_out, ref_grads = run_path(joint, x, None)
    out, grads = run_path(joint, x, decode)
    assert torch.equal(out.top_indices.sort(-1).values, ref_out.top_indices.sort(-1).values)
    for field in ("recon", "sae_recon", "linear", "interaction", "top_acts"):
        assert getattr(out, field).dtype == torch.float32
        assert_rel_close(getattr(out, field), getattr(ref_out, field), 1e-5, field)
    assert set(grads) == set(ref_grads) == {name for name, _ in joint.named_parameters()}
    for name, grad in ref_grads.items():
        assert grad.abs().max() > 0, f"{name}: the loss does not reach it"
        assert_rel_close(grads[name], grad, 1e-5, name)


@pytest.mark.parametrize("decode", ["sparse", "dense"])
def test_bf16_autocast_close_to_reference(decode: str):
    joint = make_joint().eval()
    x = torch.randn(BATCH, D_MODEL, generator=torch.Generator().manual_seed(2)) * 2
    ref_out, ref_grads = run_path(joint, x, None)
    with autocast("bf16", torch.device("cpu")):
        out, grads = run_path(joint, x, decode)
    assert out.recon.dtype == torch.float32  # outputs come back in the master dtype
    assert_rel_close(out.recon, ref_out.recon, 3e-2, "recon")
    for name, grad in ref_grads.items():
        assert grads[name].dtype == torch.float32
        assert_rel_close(grads[name], grad, 6e-2, name)


@pytest.mark.parametrize("decode", ["sparse", "dense"])
def test_faithful_fp16_runs(decode: str):
    joint = make_joint(dtype=torch.float16).train()
    out = joint(torch.randn(BATCH, D_MODEL).half(), decode=decode)
    assert out.recon.dtype == torch.float16
    out.recon.float().square().mean().backward()
    for name, p in joint.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float16 and torch.isfinite(p.grad).all(), name


# ---- parameter counts ----------------------------------------------------------------------------


def test_parameter_counts_at_the_papers_shapes():
    paper = with_shares(paper_parameter_counts(PAPER_SHAPES["d_model"], PAPER_SHAPES["num_features"],
                                               PAPER_SHAPES["embed_dim"]))
    assert paper["total"] == 496_106_700
    assert paper["counts"]["sae_encoder"] + paper["counts"]["sae_decoder"] == 320_050_000
    assert paper["counts"]["nfm_linear"] == 160_003_200 and round(100 * paper["shares"]["nfm_linear"], 1) == 32.3
    assert paper["counts"]["nfm_embeddings"] + paper["counts"]["nfm_mlp"] == 16_053_500
    assert round(100 * (paper["shares"]["nfm_embeddings"] + paper["shares"]["nfm_mlp"]), 2) == 3.24
    with torch.device("meta"):  # the real modules at full size, without allocating 2 GB
        tied, untied = JointSAENFM(**PAPER_SHAPES), JointSAENFM(**PAPER_SHAPES, tied=False)
    assert sum(unique_parameter_counts(tied).values()) == sum(p.numel() for p in tied.parameters()) == 336_106_700
    assert sum(unique_parameter_counts(untied).values()) == 496_106_700  # untied, every counted tensor exists


def test_paper_counts_are_the_untied_modules_tensors():
    counts = paper_parameter_counts(D_MODEL, NUM_FEATURES, EMBED_DIM)
    unique = unique_parameter_counts(make_joint(tied=False))
    assert unique["sae"] == counts["sae_encoder"] + counts["sae_decoder"]
    assert all(unique[name] == counts[name] for name in ("nfm_linear", "nfm_embeddings", "nfm_mlp"))


# ---- the stage script ------------------------------------------------------------------------------


def run_stage(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(part15.main, argv)
    return exit_info.value.code, capsys.readouterr().err


def test_tiny_run_learns_and_reports(tiny_joint_run):
    out, metrics = tiny_joint_run
    train = metrics["history"]["train"]
    assert train[-1]["loss"] < 0.7 * train[0]["loss"]
    assert 0.0 < metrics["improvement"] < 1.0
    assert metrics["improvement"] == pytest.approx(1 - metrics["joint_mse"] / metrics["sae_part_mse"])
    assert (metrics["improvement_vs_standalone"]
            == pytest.approx(1 - metrics["joint_mse"] / metrics["standalone_sae_mse"]))
    assert metrics["linear_share"] + metrics["interaction_share"] == pytest.approx(1.0)
    config = load_json(out / CONFIG_FILE)
    assert config["stage"] == "joint" and config["precision_regime"] == metrics["precision_regime"] == "fp32"
    parameters = metrics["parameters"]
    assert parameters["paper_style"]["total"] == sum(paper_parameter_counts(config["d_model"], 1_000, 6).values())
    assert parameters["unique_tensors"]["total"] == parameters["paper_style"]["total"] - 1_000 * config["d_model"]
    assert (out / "training_curves.png").is_file() and (out / "norm_stats.safetensors").is_file()
    assert load_json(out / METRICS_FILE)["improvement"] == metrics["improvement"]


def test_sequential_comparison_reads_stage_2(tiny_joint_run, tiny_nfm_dir: Path):
    assert (tiny_joint_run[1]["sequential_improvement_val"]
            == load_json(tiny_nfm_dir / METRICS_FILE)["error_reduction_val"])


def test_parts_load_separately_and_the_sae_loads_as_stage_1(tiny_joint_run, tiny_stage1_dir: Path):
    out, _ = tiny_joint_run
    joint, norm, source = load_joint(out)
    config = source.config
    sae, sae_norm, _ = load_sae(out)
    for name, tensor in sae.state_dict().items():
        assert torch.equal(tensor, joint.sae.state_dict()[name]), name
    assert torch.equal(norm.mean, sae_norm.mean) and torch.equal(norm.std, sae_norm.std)
    stage1_norm = load_sae(tiny_stage1_dir)[1]  # the stats came from --sae1_model_path, copied in
    assert torch.equal(norm.mean, stage1_norm.mean)
    weights = load_file(str(out / WEIGHTS_FILE))
    assert {"nfm.linear_weight", "nfm.linear_bias", "nfm.embeddings"} <= set(weights)
    assert config["top_n_features"] == joint.top_n == 10 and config["num_features"] == joint.sae.num_features


def _small_run(out: Path, *extra: str) -> dict:
    # two chunks of 8 windows (16 + 14 steps), one epoch each: the resumed run reloads chunk 1 and goes on into chunk 2
    return part15.main(["--preset", "tiny", "--num_tokens", "2048", "--chunk_tokens", "1024", "--epochs_per_chunk", "1",
                        "--val_every", "5", "--checkpoint_every", "5", "--checkpoint_dir", str(out), *extra])


def test_resume_after_interruption_reaches_the_same_weights(tmp_path: Path):
    full = _small_run(tmp_path / "full")
    _small_run(tmp_path / "split", "--stop_at_step", "10")
    resumed = _small_run(tmp_path / "split", "--resume")
    assert resumed["steps"] == full["steps"] == 30
    final_full, final_resumed = (load_resume_state(tmp_path / name)["model"] for name in ("full", "split"))
    for name, tensor in final_full.items():
        assert torch.equal(tensor, final_resumed[name]), name
    best_full, best_resumed = (load_file(str(tmp_path / name / WEIGHTS_FILE)) for name in ("full", "split"))
    assert all(torch.equal(tensor, best_resumed[name]) for name, tensor in best_full.items())
    assert resumed["joint_mse"] == full["joint_mse"]
    assert (tmp_path / "split" / RESUME_FILE).is_file()


def test_bad_inputs_are_refused_before_anything_is_written(tmp_path: Path, tiny_stage1_dir: Path, capsys):
    out = tmp_path / "out"
    other_layer = copy_stage(tiny_stage1_dir, tmp_path / "layer3", layer=3)
    cases = [
        (["--sae1_model_path", str(tmp_path / "missing")], "not a finished checkpoint"),
        (["--sae1_model_path", str(other_layer)], "layer"),
        (["--k", "2000"], "--k 2000"),
        (["--top_n_features", "30"], "--top_n_features 30"),
        (["--compare_sequential", str(tiny_stage1_dir)], "expected nfm"),
    ]
    for extra, expect in cases:
        code, err = run_stage(["--preset", "tiny", "--checkpoint_dir", str(out), *extra], capsys)
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == 2 and len(errors) == 1 and "Traceback" not in err, (extra, err)
        assert expect in errors[0], errors[0]
        assert not out.exists(), f"{extra}: a refused run must write nothing"


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_sparse_sae_step_passes_the_input_gradient(tied: bool):
    """The gather path's hand-written backward also returns ∂loss/∂x (unused in training)."""
    sae = make_joint(tied).sae
    x = (torch.randn(BATCH, D_MODEL, generator=torch.Generator().manual_seed(3)) * 2).requires_grad_()
    x_reference = x.detach().clone().requires_grad_()
    out = sae(x, decode="sparse")
    (out.recon.square().sum() + out.top_acts.pow(3).sum()).backward()
    dense = dense_codes(sae, x_reference, K)
    (sae_reference(sae, x_reference).square().sum() + dense.pow(3).sum()).backward()
    assert_rel_close(x.grad, x_reference.grad, 1e-5, "x")
