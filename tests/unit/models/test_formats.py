"""SAELens and sparsify, through their own code: our SAEs exported load into ``load_from_disk`` and give our codes and
reconstructions on raw activations; SAEs their code wrote import and give their codes; the pipeline runs on one."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sae_lens import SAE, TopKSAEConfig
from sae_lens import TopKSAE as LensTopKSAE
from sparsify import SparseCoder, SparseCoderConfig

import export_sae
import part2d_residual_NFM_streaming
import part14_kl_tests
import part15_joint_SAENFM
import part16_orthogonality
from common.data.activations import NormStats
from common.errors import UserError
from common.models.codes import scatter_codes
from common.models.formats import SIDECAR_FILE
from common.models.loading import load_sae
from common.models.sae import TopKSAE
from common.registry import TINY_MODEL

D, F, K = 64, 1000, 20  # the tiny preset's shapes


def raw_rows(n: int = 64, seed: int = 0) -> torch.Tensor:
    """Rows on another scale and centre than z-scored ones, so a normalization left out shows at once."""
    generator = torch.Generator().manual_seed(seed)
    return 3.0 * torch.randn(n, D, generator=generator) + torch.linspace(-2, 5, D)


def ours_in_raw_space(sae: TopKSAE, norm: NormStats, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Our pipeline on raw rows: normalize → SAE → de-normalize. Dense (B, F) codes and the raw reconstruction."""
    with torch.no_grad():
        out = sae(norm.normalize(x), decode="dense")
    return scatter_codes(out.top_acts, out.top_indices, sae.num_features), norm.denormalize(out.recon)


def assert_relative(actual: torch.Tensor, expected: torch.Tensor, tolerance: float = 1e-5) -> float:
    difference = float((actual.float() - expected.float()).abs().max() / expected.float().abs().max())
    assert difference <= tolerance, difference
    return difference


def stage_config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


@pytest.fixture(scope="module")
def exported(tiny_stage1_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exported")
    return {fmt: export_sae.main(["--sae1_model_path", str(tiny_stage1_dir), "--format", fmt,
                                  "--output_dir", str(root / ("layers.1" if fmt == "sparsify" else fmt))])
            for fmt in ("saelens", "sparsify")}


def test_saelens_loads_our_export_and_gives_our_codes(exported: dict[str, Path], tiny_stage1_dir: Path) -> None:
    sae, norm, _ = load_sae(tiny_stage1_dir)
    assert float(norm.std.min()) < 0.9 or float(norm.mean.abs().max()) > 0.1, "the stats must be non-trivial"
    x = raw_rows()
    codes, recon = ours_in_raw_space(sae, norm, x)
    theirs = SAE.load_from_disk(str(exported["saelens"]), device="cpu")
    with torch.no_grad():
        their_codes = theirs.encode(x)
        assert_relative(their_codes, codes)
        assert_relative(theirs.decode(their_codes), recon)
    assert theirs.cfg.metadata.hook_name == "blocks.2.hook_resid_pre"  # the tiny preset's layer 2
    assert theirs.cfg.metadata.model_name == TINY_MODEL


def test_sparsify_loads_our_export_and_gives_our_codes(exported: dict[str, Path], tiny_stage1_dir: Path) -> None:
    sae, norm, _ = load_sae(tiny_stage1_dir)
    x = raw_rows(seed=1)
    codes, recon = ours_in_raw_space(sae, norm, x)
    theirs = SparseCoder.load_from_disk(exported["sparsify"], device="cpu")
    with torch.no_grad():
        encoded = theirs.encode(x)
        assert_relative(scatter_codes(encoded.top_acts, encoded.top_indices, F), codes)
        assert_relative(theirs.decode(encoded.top_acts, encoded.top_indices), recon)


def test_a_round_trip_keeps_the_provenance_and_the_function(exported: dict[str, Path], tiny_stage1_dir: Path) -> None:
    ours, norm, source = load_sae(tiny_stage1_dir)
    x = raw_rows(seed=2)
    codes, recon = ours_in_raw_space(ours, norm, x)
    for folder in exported.values():
        back, back_norm, imported = load_sae(folder)
        assert torch.equal(back_norm.mean, torch.zeros(D)) and torch.equal(back_norm.std, torch.ones(D))
        for key in ("model_id", "model_fingerprint", "layer", "d_model"):
            assert imported.config[key] == source.config[key], key
        back_codes, back_recon = ours_in_raw_space(back, back_norm, x)
        assert_relative(back_codes, codes)
        assert_relative(back_recon, recon)
        sidecar = json.loads((folder / SIDECAR_FILE).read_text())
        assert sidecar["source"]["weights_sha256"] == source.weights_sha256()
        assert "folded in" in sidecar["normalization"]


def test_a_joint_directory_exports_its_sae_part(tiny_joint_dir: Path, tmp_path: Path) -> None:
    out = export_sae.main(["--sae1_model_path", str(tiny_joint_dir), "--format", "saelens",
                           "--output_dir", str(tmp_path / "joint_sae")])
    sae, norm, _ = load_sae(tiny_joint_dir)
    codes, recon = ours_in_raw_space(sae, norm, raw_rows(seed=3))
    theirs = SAE.load_from_disk(str(out), device="cpu")
    with torch.no_grad():
        assert_relative(theirs.decode(theirs.encode(raw_rows(seed=3))), recon)
        assert_relative(theirs.encode(raw_rows(seed=3)), codes)


def randomized(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter drawn at random (biases included, which both libraries initialize at zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    return module


def saelens_dir(folder: Path, hook: str = "blocks.2.hook_resid_pre", model: str = TINY_MODEL,
                apply_b_dec_to_input: bool = True, seed: int = 0) -> tuple[Path, LensTopKSAE]:
    from sae_lens.saes.sae import SAEMetadata

    cfg = TopKSAEConfig(d_in=D, d_sae=F, k=K, dtype="float32", device="cpu",
                        apply_b_dec_to_input=apply_b_dec_to_input,
                        metadata=SAEMetadata(model_name=model, hook_name=hook))
    theirs = randomized(LensTopKSAE(cfg), seed)
    theirs.save_model(str(folder))
    return folder, theirs


@pytest.mark.parametrize("centred", [True, False], ids=["apply_b_dec_to_input", "no_input_centring"])
def test_a_saelens_sae_their_code_wrote_imports_with_their_codes(tmp_path: Path, centred: bool) -> None:
    folder, theirs = saelens_dir(tmp_path / "lens", apply_b_dec_to_input=centred)
    ours, norm, source = load_sae(folder)
    assert source.imported == "saelens" and source.config["layer"] == 2 and source.config["model_id"] == TINY_MODEL
    x = raw_rows(seed=4)
    with torch.no_grad():
        their_codes = theirs.encode(x)
        codes, recon = ours_in_raw_space(ours, norm, x)
        assert_relative(codes, their_codes)
        assert_relative(recon, theirs.decode(their_codes))


def test_a_sparsify_sae_their_code_wrote_imports_with_their_codes(tmp_path: Path) -> None:
    theirs = randomized(SparseCoder(D, SparseCoderConfig(num_latents=F, k=K), device="cpu"), 5)
    theirs.save_to_disk(tmp_path / "layers.1")
    ours, norm, source = load_sae(tmp_path / "layers.1")
    assert source.imported == "sparsify" and source.config["layer"] == 2 and source.config["model_id"] is None
    x = raw_rows(seed=5)
    with torch.no_grad():
        encoded = theirs.encode(x)
        codes, recon = ours_in_raw_space(ours, norm, x)
        assert_relative(codes, scatter_codes(encoded.top_acts, encoded.top_indices, F))
        assert_relative(recon, theirs.decode(encoded.top_acts, encoded.top_indices))


SMALL_NFM = ["--preset", "tiny", "--num_tokens", "2560", "--val_tokens", "256", "--chunk_tokens", "1280",
             "--epochs_per_chunk", "1", "--val_every", "10", "--checkpoint_every", "10", "--log_every", "10"]


def test_stage_2_and_part14_run_on_a_saelens_sae(tmp_path: Path) -> None:
    folder, _ = saelens_dir(tmp_path / "lens")
    nfm_dir = tmp_path / "nfm"
    metrics = part2d_residual_NFM_streaming.main([*SMALL_NFM, "--sae1_model_path", str(folder),
                                                  "--checkpoint_dir", str(nfm_dir)])
    assert metrics["steps"] > 0 and metrics["residual_mse_before_val"] > 0
    recorded = stage_config(nfm_dir)
    assert recorded["sae1"]["format"] == "saelens" and recorded["model_id"] == TINY_MODEL
    results = part14_kl_tests.main(["--preset", "tiny", "--num_wiki_samples", "4", "--batch_size", "4",
                                    "--sae1_model_path", str(folder), "--nfm_model_path", str(nfm_dir),
                                    "--output_dir", str(tmp_path / "kl")])
    assert results["evaluation"]["windows_used"] == 4


def test_stage_5_compares_the_joint_model_with_a_sparsify_sae(tmp_path: Path) -> None:
    theirs = randomized(SparseCoder(D, SparseCoderConfig(num_latents=F, k=K), device="cpu"), 8)
    theirs.save_to_disk(tmp_path / "layers.1")
    metrics = part15_joint_SAENFM.main([*SMALL_NFM, "--sae1_model_path", str(tmp_path / "layers.1"),
                                        "--checkpoint_dir", str(tmp_path / "joint")])
    assert metrics["standalone_sae_mse"] > 0 and "improvement_vs_standalone" in metrics
    assert stage_config(tmp_path / "joint")["sae1"]["format"] == "sparsify"
    norm = NormStats.load(tmp_path / "joint" / "norm_stats.safetensors")  # the imported SAE's: the identity
    assert torch.equal(norm.mean, torch.zeros(D)) and torch.equal(norm.std, torch.ones(D))


def test_part16_compares_a_saelens_and_a_sparsify_decoder(tmp_path: Path) -> None:
    import hashlib

    lens, theirs = saelens_dir(tmp_path / "lens", seed=6)
    coder = randomized(SparseCoder(D, SparseCoderConfig(num_latents=F, k=K), device="cpu"), 7)
    coder.save_to_disk(tmp_path / "layers.1")
    results = part16_orthogonality.main(["--preset", "tiny", "--sae1_model_path", str(lens), "--sae2_model_path",
                                         str(tmp_path / "layers.1"), "--output_dir", str(tmp_path / "ortho")])
    for name, folder, W_dec, weights in (("standalone", lens, theirs.W_dec, "sae_weights.safetensors"),
                                         ("joint", tmp_path / "layers.1", coder.W_dec, "sae.safetensors")):
        figures = results["saes"][name]
        digest = hashlib.sha256((folder / weights).read_bytes()).hexdigest()
        assert figures["source"]["weights_sha256"] == f"sha256:{digest}"
        expected = W_dec.detach().double().square().sum(1).mean().item()
        assert figures["squared_norms"]["mean"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("hook, model, message", [
    ("blocks.3.hook_resid_pre", TINY_MODEL, "layer is 3 there but 2 here"),
    ("blocks.1.hook_resid_post", "gpt2", "model_id is 'gpt2' there"),
    ("blocks.2.hook_mlp_out", TINY_MODEL, "not the residual stream"),
])
def test_a_saelens_sae_of_another_model_or_hook_is_refused(tmp_path: Path, hook: str, model: str,
                                                           message: str) -> None:
    folder, _ = saelens_dir(tmp_path / "lens", hook=hook, model=model)
    with pytest.raises(UserError, match=message):
        part2d_residual_NFM_streaming.main([*SMALL_NFM, "--sae1_model_path", str(folder),
                                            "--checkpoint_dir", str(tmp_path / "nfm")])
    assert not (tmp_path / "nfm").exists()


def test_a_sparsify_sae_of_another_width_or_layer_is_refused(tmp_path: Path) -> None:
    SparseCoder(D + 1, SparseCoderConfig(num_latents=F, k=K), device="cpu").save_to_disk(tmp_path / "wide")
    SparseCoder(D, SparseCoderConfig(num_latents=F, k=K), device="cpu").save_to_disk(tmp_path / "layers.2")
    for folder, message in (("wide", "d_model is 65 there but 64 here"), ("layers.2", "layer is 3 there but 2 here")):
        with pytest.raises(UserError, match=message):
            part2d_residual_NFM_streaming.main([*SMALL_NFM, "--sae1_model_path", str(tmp_path / folder),
                                                "--checkpoint_dir", str(tmp_path / f"nfm-{folder}")])


def test_other_architectures_are_refused_in_one_line(tmp_path: Path) -> None:
    from sae_lens import StandardSAE, StandardSAEConfig

    StandardSAE(StandardSAEConfig(d_in=D, d_sae=F, dtype="float32", device="cpu")).save_model(str(tmp_path / "relu"))
    with pytest.raises(UserError, match="'standard' SAE; only TopK SAEs are supported") as refused:
        load_sae(tmp_path / "relu")
    assert "\n" not in str(refused.value)
    SparseCoder(D, SparseCoderConfig(num_latents=F, k=K, skip_connection=True), device="cpu").save_to_disk(
        tmp_path / "skip")
    with pytest.raises(UserError, match="skip_connection is set; only TopK SAEs are supported"):
        load_sae(tmp_path / "skip")


def test_an_export_whose_weights_changed_is_refused(exported: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    copy = tmp_path / "saelens"
    shutil.copytree(exported["saelens"], copy)
    weights = load_file(copy / "sae_weights.safetensors")
    weights["b_enc"][0] += 1.0
    save_file(weights, copy / "sae_weights.safetensors")
    with pytest.raises(UserError, match="describes other weights"):
        load_sae(copy)
