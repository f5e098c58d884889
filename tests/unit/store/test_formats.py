"""Directories written before format 2 (no model record in config.json, ``nfm_k``) still load and resume.

The version-1 configs in tests/data/format1 were written by the project's code before format 2 (the tiny preset);
the weights beside them are drawn here in the shapes those configs describe, written as the old code wrote them.
"""
import json
import shutil
from pathlib import Path

import torch

import part2d_residual_NFM_streaming as part2d
from common.data.activations import NORM_STATS_FILE, NormStats
from common.models.joint import JointSAENFM
from common.models.loading import load_joint, load_nfm, load_sae
from common.models.nfm import NFM
from common.models.sae import TopKSAE
from common.store.formats import FORMAT_VERSION
from common.store.model_files import load_weights
from common.store.reads import load_json
from common.store.savers import atomic_save_json, atomic_save_safetensors
from common.store.stage_files import CONFIG_FILE, METRICS_FILE, WEIGHTS_FILE, read_stage
from tests.helpers import DATA

FORMAT1 = DATA / "format1"


def old_dir(tmp_path: Path, stage: str, module: torch.nn.Module) -> Path:
    """A version-1 stage directory: the recorded config.json, weights, stats and metrics, nothing of format 2."""
    config = json.loads((FORMAT1 / f"{stage}.json").read_text())
    folder = tmp_path / stage
    folder.mkdir()
    atomic_save_json(config, folder / CONFIG_FILE)
    atomic_save_safetensors(module.state_dict(), folder / WEIGHTS_FILE)
    width = module.state_dict()["W_dec"].shape[1] if stage == "sae2" else config["d_model"]
    NormStats(torch.randn(width), torch.rand(width) + 0.5).save(folder / NORM_STATS_FILE)
    atomic_save_json({}, folder / METRICS_FILE)
    return folder


def same_weights(module: torch.nn.Module, folder: Path, prefix: str = "") -> bool:
    saved = load_weights(folder, prefix)
    return saved.keys() == module.state_dict().keys() and all(
        torch.equal(saved[name], tensor) for name, tensor in module.state_dict().items())


def test_version_1_directories_load_through_the_model_classes(tmp_path: Path):
    torch.manual_seed(0)
    # The shapes of the tiny preset, read off the recorded configs by hand: F 1,000, d 64, K 20, k 6, top 10;
    # sae2 150 x 6.
    sae1 = old_dir(tmp_path, "sae1", TopKSAE(64, 1000, 20))
    nfm = old_dir(tmp_path, "nfm", NFM(1000, 64, 6))
    sae2 = old_dir(tmp_path, "sae2", TopKSAE(6, 150, 3))
    joint = old_dir(tmp_path, "joint", JointSAENFM(64, 1000, 20, 6, 10))
    before = {folder: (folder / CONFIG_FILE).read_bytes() for folder in (sae1, nfm, sae2, joint)}

    sae, _, source = load_sae(sae1)
    assert (sae.d_model, sae.num_features, sae.k, sae.tied) == (64, 1000, 20, True) and same_weights(sae, sae1)
    assert source.config["format_version"] == FORMAT_VERSION
    loaded_nfm, source = load_nfm(nfm)
    assert (loaded_nfm.embed_dim, loaded_nfm.mlp[0].p) == (6, 0.15) and same_weights(loaded_nfm, nfm)
    assert source.config["config"]["nfm_embed_dim"] == 6 and "nfm_k" not in source.config["config"]
    secondary = TopKSAE.load(sae2)
    assert (secondary.d_model, secondary.num_features, secondary.k) == (6, 150, 3) and same_weights(secondary, sae2)
    loaded_joint, _, _ = load_joint(joint)
    assert (loaded_joint.top_n, loaded_joint.nfm.embed_dim) == (10, 6) and same_weights(loaded_joint, joint)
    part, _, _ = load_sae(joint)  # the joint SAE part, wherever a stage-1 directory is accepted
    assert same_weights(part, joint, "sae.")
    compared_with = json.loads((FORMAT1 / "joint.json").read_text())["config"]["compare_sequential"]
    assert read_stage(joint, "--joint_model_path", ("joint",))[1]["config"]["nfm_model_path"] == compared_with
    assert all((folder / CONFIG_FILE).read_bytes() == text for folder, text in before.items())  # read, never rewritten


def test_a_version_1_run_resumes_to_the_weights_of_an_uninterrupted_run(tiny_stage1_dir: Path, tiny_nfm_dir: Path,
                                                                        tmp_path: Path):
    out = tmp_path / "nfm"
    argv = ["--preset", "tiny", "--sae1_model_path", str(tiny_stage1_dir), "--checkpoint_dir", str(out)]
    part2d.main([*argv, "--stop_at_step", "100"])
    # Rewrite the interrupted run's config.json as version 1 wrote it: the same keys as the recorded one.
    config = load_json(out / CONFIG_FILE)
    config.pop("model")
    config["format_version"] = 1
    config["config"] = {("nfm_k" if key == "nfm_embed_dim" else key): value for key, value in config["config"].items()}
    recorded = json.loads((FORMAT1 / "nfm.json").read_text())
    # settings added since version 1, each with a default that reproduces version 1's run, are absent from its files
    added = {"adam_flush_fp16_underflow"}
    assert config["config"].keys() - recorded["config"].keys() == added
    config["config"] = {key: value for key, value in config["config"].items() if key not in added}
    assert config.keys() == recorded.keys() and config["config"].keys() == recorded["config"].keys()
    atomic_save_json(config, out / CONFIG_FILE)

    part2d.main([*argv, "--resume"])
    uninterrupted = load_weights(tiny_nfm_dir)
    assert all(torch.equal(load_weights(out)[name], tensor) for name, tensor in uninterrupted.items())
    assert load_json(out / CONFIG_FILE)["format_version"] == FORMAT_VERSION  # continued in the current format
    shutil.rmtree(out)
