import os

import pytest
import torch

from common.errors import UserError
from common.store.model_files import load_weights
from common.store.reads import load_json
from common.store.savers import atomic_save_json, atomic_save_safetensors
from common.store.stage_files import CONFIG_FILE, METRICS_FILE, WEIGHTS_FILE, read_stage, require_match


def test_safetensors_round_trip_is_bit_exact(tmp_path):
    tensors = {"a": torch.randn(7, 3), "b": torch.randn(5).half(), "c": torch.arange(4)}
    atomic_save_safetensors(tensors, tmp_path / WEIGHTS_FILE)
    loaded = load_weights(tmp_path)
    assert loaded.keys() == tensors.keys()
    for name, t in tensors.items():
        assert loaded[name].dtype == t.dtype and torch.equal(loaded[name], t)


def test_prefix_selects_one_part(tmp_path):
    atomic_save_safetensors({"sae.W_dec": torch.ones(2), "nfm.x": torch.zeros(1)}, tmp_path / WEIGHTS_FILE)
    assert list(load_weights(tmp_path, "sae.")) == ["W_dec"]


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "m.json"
    atomic_save_json({"v": 1}, path)
    with pytest.raises(TypeError):
        atomic_save_json({"v": object()}, path)
    assert load_json(path) == {"v": 1}
    assert os.listdir(tmp_path) == ["m.json"]


def test_read_stage_refuses_missing_unfinished_and_wrong_stage(tmp_path):
    with pytest.raises(UserError, match="not a finished checkpoint"):
        read_stage(tmp_path / "nothing", "--sae1_model_path", ("sae1",))
    atomic_save_json({"stage": "nfm"}, tmp_path / CONFIG_FILE)
    atomic_save_safetensors({"w": torch.ones(1)}, tmp_path / WEIGHTS_FILE)
    with pytest.raises(UserError, match="not a finished"):
        read_stage(tmp_path, "--sae1_model_path", ("sae1",))  # no metrics.json yet: the run did not finish
    atomic_save_json({}, tmp_path / METRICS_FILE)
    with pytest.raises(UserError, match="'nfm' checkpoint"):
        read_stage(tmp_path / WEIGHTS_FILE, "--sae1_model_path", ("sae1",))
    folder, config = read_stage(tmp_path / WEIGHTS_FILE, "--nfm_model_path", ("nfm",))
    assert folder == tmp_path and config["stage"] == "nfm"


def test_require_match_names_the_difference():
    with pytest.raises(UserError, match="layer is 15 there but 16 here"):
        require_match("stage 1", {"layer": 16}, {"layer": 15}, ("layer",))
    require_match("stage 1", {"layer": 16}, {"layer": 16}, ("layer",))
