"""common/stages/opening.py: a stage that does not split is refused under torchrun before its command line is even
read; the opening order (output directory → inputs → runtime → LM → each input against the LM → patch layer), shown
with a model that fails loudly if it is ever loaded; the one output path of every config; what makes a resumed run
another run (``resume_differences``, on hand-made records)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from common.config.presets import build_config
from common.config.stages import STAGE_CONFIGS, NFMConfig, SAE1Config
from common.errors import UserError
from common.models.loading import StageInput
from common.models.settings import original_settings
from common.registry import STAGES, TINY_MODEL
from common.stages.opening import SourcesOnly, open_stage, output_path, resume_differences, stage_config
from common.store.stage_files import read_stage


@pytest.fixture(autouse=True)
def outside_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


# ---- stage_config ------------------------------------------------------------------------------------------------


def test_a_stage_that_does_not_split_is_refused_under_torchrun_before_its_flags_are_read(
        monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    # an unknown flag would stop argparse with exit 2: the refusal comes first
    with pytest.raises(UserError, match=r"^stage nfm runs in one process, not under torchrun with 2 processes: "):
        stage_config(NFMConfig, "", ["--no_such_flag"])
    assert stage_config(SAE1Config, "", ["--preset", "tiny"]).preset == "tiny"  # stage 1 splits


def test_outside_torchrun_every_stage_parses():
    assert stage_config(NFMConfig, "", ["--preset", "cpu", "--lr", "0.5"]).lr == 0.5


# ---- output_path -------------------------------------------------------------------------------------------------


def test_output_path_is_the_configs_one_output():
    assert output_path(SAE1Config()) == "checkpoints_topk"
    assert output_path(STAGE_CONFIGS["kl14"]()) == "kl_results_sequential"
    assert output_path(STAGE_CONFIGS["export"](output_dir="there")) == "there"
    for name, cls in STAGE_CONFIGS.items():
        flag = "checkpoint_dir" if STAGES[name].trains else "output_dir"
        assert output_path(cls(**{flag: f"out/{name}"})) == f"out/{name}", name


# ---- open_stage --------------------------------------------------------------------------------------------------


def kl14(tmp_path: Path, **settings: Any):
    return build_config("kl14", {"preset": "tiny", "output_dir": str(tmp_path / "out"), **settings})


def loud_model(tmp_path: Path) -> str:
    """A model path that cannot be loaded: loading it is an error of its own ("cannot load model")."""
    return str(tmp_path / "no-such-model")


def not_called() -> SourcesOnly:
    raise AssertionError("read_inputs ran")


def test_a_bad_input_is_refused_before_the_runtime_or_the_lm(tmp_path: Path):
    (tmp_path / "empty_stage").mkdir()
    cfg = kl14(tmp_path, model=loud_model(tmp_path), device="cuda:99")  # both would fail, later

    def read_inputs() -> SourcesOnly:
        read_stage(tmp_path / "empty_stage", "--sae1_model_path", ("sae1",))
        raise AssertionError("unreachable")

    with pytest.raises(UserError, match=r"--sae1_model_path .*empty_stage: not a finished checkpoint directory"):
        open_stage(cfg, read_inputs)
    assert not (tmp_path / "out").exists()


def test_the_loud_model_is_loud_once_the_inputs_pass(tmp_path: Path):
    with pytest.raises(UserError, match="cannot load model"):
        open_stage(kl14(tmp_path, model=loud_model(tmp_path), device="cpu"), SourcesOnly)


def test_a_busy_or_overlapping_output_directory_is_refused_before_any_input_is_read(tmp_path: Path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "results.json").write_text("{}")
    with pytest.raises(UserError, match="already holds a run"):
        open_stage(kl14(tmp_path, model=loud_model(tmp_path)), not_called)
    inside = kl14(tmp_path, model=loud_model(tmp_path), sae1_model_path=str(tmp_path / "out"), overwrite=True)
    with pytest.raises(UserError, match="the input --sae1_model_path"):
        open_stage(inside, not_called)


def test_with_every_input_good_the_stage_opens_on_the_lm_without_loading_its_weights(tmp_path: Path):
    order: list[str] = []

    def read_inputs() -> SourcesOnly:
        order.append("inputs")
        return SourcesOnly()

    opened, inputs = open_stage(kl14(tmp_path, device="cpu"), read_inputs)
    assert order == ["inputs"] and inputs == SourcesOnly()
    assert opened.record == {"model_id": TINY_MODEL, "model_fingerprint": opened.lm.fingerprint, "layer": 2,
                             "d_model": 64, "lm_dtype": "torch.float32"}
    assert opened.patch_layer == 2 and opened.rt.device.type == "cpu" and opened.rt.precision == "fp32"
    assert not opened.lm.model_loaded  # the weights wait for their first use
    assert not (tmp_path / "out").exists()  # nothing written


def test_each_input_is_held_to_the_lm(tmp_path: Path):
    trained_elsewhere = {"model_id": TINY_MODEL, "layer": 3, "d_model": 64}

    def read_inputs() -> SourcesOnly:
        lm_record = open_stage(kl14(tmp_path / "probe", device="cpu"), SourcesOnly)[0].record
        config = {**lm_record, **trained_elsewhere}
        return SourcesOnly([StageInput("--sae1_model_path", "runs/sae1", tmp_path, config)])

    with pytest.raises(UserError, match=r"^--sae1_model_path runs/sae1: layer is 3 there but 2 here$"):
        open_stage(kl14(tmp_path, device="cpu"), read_inputs)


def test_the_originals_patch_one_block_later_must_fit_the_model(tmp_path: Path):
    settings = original_settings(trained_k=20, pooling="sum")
    opened, _ = open_stage(kl14(tmp_path, device="cpu", layer=2), lambda: SourcesOnly([], settings))
    assert opened.patch_layer == 3
    with pytest.raises(UserError, match="at layer 4, but this 4-block model's last patchable layer is 3"):
        open_stage(kl14(tmp_path, device="cpu", layer=3), lambda: SourcesOnly([], settings))


# ---- resume_differences ------------------------------------------------------------------------------------------


def record(**changes: Any) -> dict[str, Any]:
    """A hand-made config.json of a stage-2 run."""
    base = {
        "stage": "nfm",
        "model_fingerprint": "sha256:model",
        "config": {**dataclasses.asdict(NFMConfig()), "preset": "cpu"},
        "sae1": {"path": "runs/sae1", "weights_sha256": "sha256:sae1"},
        "data": {"text_identity": "sha256:text", "tokenizer_fingerprint": "sha256:tok"},
    }
    for key, value in changes.items():
        if key in base["config"]:
            base["config"] = {**base["config"], key: value}
        else:
            base[key] = value
    return base


CFG = NFMConfig()


def test_the_same_run_moved_or_resumed_with_other_bookkeeping_has_no_differences():
    previous = record()
    assert resume_differences(previous, record(), CFG) == []
    moved = record(checkpoint_dir="elsewhere/nfm", sae1_model_path="elsewhere/sae1", cache_dir="/cache",
                   text_files=["moved/wiki.txt"])
    assert resume_differences(previous, moved, CFG) == []
    bookkeeping = record(resume=True, overwrite=True, stop_at_step=123, device="cuda", harvest_batch_size=4)
    assert resume_differences(previous, bookkeeping, CFG) == []


def test_each_kind_of_difference_is_named():
    previous = record()
    assert resume_differences(previous, record(lr=0.5, seed=1), CFG) == ["lr", "seed"]
    assert resume_differences(previous, record(model_fingerprint="sha256:other"), CFG) == ["the model"]
    other_sae = record(sae1={"path": "runs/sae1", "weights_sha256": "sha256:retrained"})
    assert resume_differences(previous, other_sae, CFG) == ["the input sae1"]
    assert resume_differences(previous, record(data={"text_identity": "sha256:other", "tokenizer_fingerprint":
                                                     "sha256:tok"}), CFG) == ["the text"]
    assert resume_differences(previous, record(data={"text_identity": "sha256:text", "tokenizer_fingerprint":
                                                     "sha256:other"}), CFG) == ["the tokenizer"]
    everything = record(sae_k=7, model_fingerprint="x", sae1={"weights_sha256": "y"}, data={"text_identity": "z"})
    assert resume_differences(previous, everything, CFG) == ["sae_k", "the model", "the input sae1", "the text"]


def test_inputs_recorded_under_inputs_and_evaluation_text_are_compared():
    previous = record(inputs={"sae2": {"weights_sha256": "sha256:a"}}, evaluation={"text_identity": "sha256:e"})
    now = record(inputs={"sae2": {"weights_sha256": "sha256:b"}}, evaluation={"text_identity": "sha256:f"})
    assert resume_differences(previous, now, CFG) == ["the input sae2", "the text"]


def test_what_an_older_directory_did_not_record_is_not_a_difference():
    older = record(data={})
    del older["sae1"]
    assert resume_differences(older, record(), CFG) == []
    assert resume_differences(record(), older, CFG) == []
    gone = record()
    del gone["config"]["adam_flush_fp16_underflow"]  # added later: the older run ran as its default (off) does
    assert resume_differences(gone, record(), CFG) == []
    assert resume_differences(gone, record(adam_flush_fp16_underflow=True), CFG) == ["adam_flush_fp16_underflow"]
    del gone["config"]["dropout"]  # NFMConfig's default is 0.15: resumed with another dropout, it is another run
    assert resume_differences(gone, record(dropout=0.15), CFG) == []
    assert resume_differences(gone, record(dropout=0.1), CFG) == ["dropout"]
