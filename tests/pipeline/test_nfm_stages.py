"""Stages 2 and 3 end to end on the tiny preset: the chain 1 -> 2 -> 3 learns, resumes exactly, and refuses bad
input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import part2d_residual_NFM_streaming as part2d
import part10_sae_decomp_of_NFM as part10
from common.config.presets import build_config
from common.data.activations import NormStats, open_stream
from common.models.codes import scatter_codes
from common.models.loading import load_nfm, load_sae
from common.models.nfm import NFM, nfm_reference
from common.models.sae import TopKSAE, sae_reference
from common.stages.cli import run_cli
from common.store.model_files import load_weights
from common.store.reads import load_json
from common.store.savers import atomic_save_json
from common.store.stage_files import CONFIG_FILE, METRICS_FILE, WEIGHTS_FILE, weights_sha256
from common.training.nfm_objective import evaluate_nfm, sae_codes
from tests.helpers import copy_stage


def run_stage(main, argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """Run a script's CLI in-process; (exit code, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv)
    return exit_info.value.code, capsys.readouterr().err


def assert_refused(main, argv: list[str], out: Path, capsys: pytest.CaptureFixture, expect: str) -> None:
    code, err = run_stage(main, argv, capsys)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert expect in errors[0], errors[0]
    assert not out.exists(), "a refused run must write nothing"


# ---- decode paths --------------------------------------------------------------------------------


def test_sae_codes_and_nfm_figures_agree_across_decode_paths():
    torch.manual_seed(0)
    sae = TopKSAE(16, 120, 12).eval()
    nfm = NFM(120, 16, 5).eval()
    with torch.no_grad():
        for p in nfm.parameters():  # the init's std 0.01 would make the interaction term vanish
            p.normal_(std=0.3)
    norm = NormStats(torch.randn(16), torch.rand(16) + 0.5)
    rows = torch.randn(70, 16) * 3
    by_decode = {decode: sae_codes(sae, rows, norm, 8, 6, decode, batch_size=32) for decode in ("sparse", "dense")}
    x = norm.normalize(rows)
    expected_residual = x - sae_reference(sae, x, k=8)
    for codes in by_decode.values():
        assert codes.top_acts.shape == (70, 6)
        torch.testing.assert_close(codes.residual, expected_residual, rtol=1e-5, atol=1e-5)
        assert torch.equal(codes.top_indices, by_decode["sparse"].top_indices)
        # the top 6 of the 8 inference-K codes: the six largest pre-activations of each row
        pre_acts = torch.relu(x @ sae.W_dec.t() + sae.b_enc)
        torch.testing.assert_close(codes.top_acts, pre_acts.topk(6).values)
    codes = by_decode["sparse"]
    reference = nfm_reference(nfm, scatter_codes(codes.top_acts, codes.top_indices, 120))
    expected_after = (codes.residual - reference.total).square().mean().item()
    for decode in ("sparse", "dense"):
        figures = evaluate_nfm(nfm, codes, decode, batch_size=16)
        assert figures["residual_mse_before"] == pytest.approx(codes.residual.square().mean().item(), rel=1e-6)
        assert figures["residual_mse_after"] == pytest.approx(expected_after, rel=1e-5)
        assert figures["mean_abs_linear"] == pytest.approx(reference.linear.abs().mean().item(), rel=1e-5)
        assert figures["mean_abs_interaction"] == pytest.approx(reference.interaction.abs().mean().item(), rel=1e-5)
        assert figures["linear_share"] + figures["interaction_share"] == pytest.approx(1.0)


# ---- the tiny chain ------------------------------------------------------------------------------


def test_stage2_reduces_the_held_out_residual_error(tiny_stage1_dir: Path, tiny_nfm_dir: Path, tiny_lm):
    metrics = load_json(tiny_nfm_dir / METRICS_FILE)
    assert metrics["residual_mse_after_val"] < metrics["residual_mse_before_val"]
    assert metrics["error_reduction_val"] > 0.05 and metrics["error_reduction_train"] > 0.05
    assert metrics["linear_share"] + metrics["interaction_share"] == pytest.approx(1.0)
    assert metrics["steps"] == metrics["planned_steps"] > 0
    config = load_json(tiny_nfm_dir / CONFIG_FILE)
    assert (config["stage"], config["num_features"], config["sae_k"], config["top_n_features"]) == ("nfm", 1000, 5, 5)
    assert config["sae1"]["weights_sha256"] == weights_sha256(tiny_stage1_dir)
    assert (tiny_nfm_dir / "training_curves.png").is_file()
    assert ((tiny_nfm_dir / "norm_stats.safetensors").read_bytes()
            == (tiny_stage1_dir / "norm_stats.safetensors").read_bytes())

    # The saved NFM, fed the saved SAE's codes of the held-out windows, gives the recorded figures again.
    sae, norm, _ = load_sae(tiny_stage1_dir)
    nfm, _ = load_nfm(tiny_nfm_dir)
    cfg = build_config("nfm", {"preset": "tiny"})
    stream = open_stream(cfg, tiny_lm)
    val_rows = stream.val_rows(cfg.val_tokens // cfg.window, within=cfg.num_tokens // cfg.window)
    codes = sae_codes(sae.eval(), val_rows, norm, config["sae_k"], config["top_n_features"], "sparse", 256)
    figures = evaluate_nfm(nfm.eval(), codes, "dense", 256)
    assert figures["error_reduction"] == pytest.approx(metrics["error_reduction_val"], rel=1e-4)


def test_stage3_trains_on_the_interaction_vectors(tiny_stage1_dir: Path, tiny_nfm_dir: Path, tmp_path: Path):
    out = tmp_path / "sae2"
    metrics = part10.main(["--preset", "tiny", "--sae1_model_path", str(tiny_stage1_dir),
                           "--nfm_model_path", str(tiny_nfm_dir / WEIGHTS_FILE), "--checkpoint_dir", str(out)])
    val_losses = [row["loss"] for row in metrics["history"]["val"]]
    assert val_losses[-1] < val_losses[0]
    assert 0 < metrics["variance_explained"] < 1 and metrics["l0"] == pytest.approx(3)
    config = load_json(out / CONFIG_FILE)
    assert (config["stage"], config["input_dim"], config["num_features"], config["k"]) == ("sae2", 6, 150, 3)
    assert config["nfm"]["weights_sha256"] == weights_sha256(tiny_nfm_dir)
    weights = load_weights(out)
    assert weights["W_dec"].shape == (150, 6) and "W_enc" not in weights  # tied, as stage 1
    assert (out / part10.LM_NORM_STATS_FILE).read_bytes() == (tiny_stage1_dir / "norm_stats.safetensors").read_bytes()
    # The interaction vectors are z-scored with their own stats, saved beside the weights.
    vector_norm = NormStats.load(out / "norm_stats.safetensors")
    assert vector_norm.mean.shape == (6,) and (vector_norm.std >= 1e-8).all()


def test_stage2_resume_equals_an_uninterrupted_run(tiny_stage1_dir: Path, tiny_nfm_dir: Path, tmp_path: Path):
    argv = ["--preset", "tiny", "--sae1_model_path", str(tiny_stage1_dir), "--checkpoint_dir", str(tmp_path / "nfm")]
    part2d.main([*argv, "--stop_at_step", "100"])  # inside the first chunk
    resumed = part2d.main([*argv, "--resume"])
    uninterrupted = load_json(tiny_nfm_dir / METRICS_FILE)
    for name, tensor in load_weights(tiny_nfm_dir).items():
        assert torch.equal(load_weights(tmp_path / "nfm")[name], tensor), name
    for key in ("error_reduction_val", "error_reduction_train", "linear_share", "steps"):
        assert resumed[key] == uninterrupted[key], key
    assert resumed["history"]["val"] == uninterrupted["history"]["val"]


# ---- bad input: one error line, exit code 2, nothing written ----------------------------------------


def test_stage2_refuses_bad_input(tiny_stage1_dir: Path, tiny_nfm_dir: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    base = ["--preset", "tiny", "--checkpoint_dir", str(out)]
    other_layer = copy_stage(tiny_stage1_dir, tmp_path / "layer3", layer=3)
    cases = [
        (["--sae1_model_path", str(tmp_path / "missing")], "not a finished checkpoint directory"),
        (["--sae1_model_path", str(tiny_nfm_dir)], "holds a 'nfm' checkpoint"),
        (["--sae1_model_path", str(tiny_stage1_dir), "--sae_k", "21"], "--sae_k 21"),
        (["--sae1_model_path", str(tiny_stage1_dir), "--top_n_features", "6"], "--top_n_features 6"),
        (["--sae1_model_path", str(other_layer)], "layer is 3 there but 2 here"),
    ]
    for extra, expect in cases:
        assert_refused(part2d.main, [*base, *extra], out, capsys, expect)


def fake_stage1(src: Path, dst: Path, features: int) -> Path:
    """A stage-1 directory like ``src`` but with freshly initialized weights of another size."""
    dst = copy_stage(src, dst)
    config = load_json(dst / CONFIG_FILE)
    config["config"]["features"] = features
    atomic_save_json(config, dst / CONFIG_FILE)
    torch.manual_seed(1)
    TopKSAE(config["d_model"], features, config["config"]["k"]).save(dst)
    return dst


def test_stage3_refuses_bad_input(tiny_stage1_dir: Path, tiny_nfm_dir: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    base = ["--preset", "tiny", "--checkpoint_dir", str(out)]
    stage1 = ["--sae1_model_path", str(tiny_stage1_dir)]
    nfm = ["--nfm_model_path", str(tiny_nfm_dir)]
    other_width = fake_stage1(tiny_stage1_dir, tmp_path / "f500", 500)
    other_weights = fake_stage1(tiny_stage1_dir, tmp_path / "f1000", 1000)
    other_layer = copy_stage(tiny_stage1_dir, tmp_path / "layer3", layer=3)
    cases = [
        ([*stage1, "--nfm_model_path", str(tmp_path / "missing")], "not a finished checkpoint directory"),
        ([*stage1, "--nfm_model_path", str(tiny_stage1_dir)], "holds a 'sae1' checkpoint"),
        (["--sae1_model_path", str(other_width), *nfm], "F=1000 features but the SAE"),
        (["--sae1_model_path", str(other_weights), *nfm], "another stage-1 SAE"),
        (["--sae1_model_path", str(other_layer), *nfm], "layer is 2 there but 3 here"),
        ([*stage1, *nfm, "--layer", "3"], "layer is 2 there but 3 here"),
    ]
    for extra, expect in cases:
        assert_refused(part10.main, [*base, *extra], out, capsys, expect)
    assert json.loads((tiny_nfm_dir / CONFIG_FILE).read_text())["stage"] == "nfm"  # the inputs were left alone
