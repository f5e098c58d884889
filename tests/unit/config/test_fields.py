"""common/config/fields.py: how a field is declared (``opt``, ``like``), which fields are modes (``mode_choices``,
Optional ones included), the one check of a mode whatever built the config, and the inputs a config names."""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Literal, Optional

import pytest

from common.config import modes
from common.config.concepts import TrainedStageConfig
from common.config.fields import Checked, field_names, input_paths, like, mode_choices, opt
from common.config.parse import parse_config
from common.config.presets import build_config, preset_config
from common.config.stages import STAGE_CONFIGS, ClampConfig, NFMConfig, SAE1Config
from common.errors import UserError

# mode_choices misses a Literal under ``X | None`` (a typing.Union, not a types.UnionType): ``--patch bogus`` is
# accepted and then runs as "replace". Remove the marker once common/config/fields.py handles typing.Union.


@dataclass
class Hand(Checked):
    plain: Literal["a", "b"] = "a"
    optional_new: Literal["x", "y"] | None = None
    optional_old: Optional[Literal["p", "q"]] = None  # noqa: UP045 (the spelling this case is about)
    text: str = "free"
    number: int | None = None


def literal_fields_from_annotations(cls: type) -> dict[str, tuple]:
    """Independently of ``typing.get_type_hints``: each field's annotation string, split on ``|``, and every part
    that names a Literal of common.config.modes."""
    found = {}
    for f in dataclasses.fields(cls):
        for part in str(f.type).split("|"):
            alias = getattr(modes, part.strip(), None)
            if typing.get_origin(alias) is Literal:
                found[f.name] = typing.get_args(alias)
    return found


def test_mode_choices_finds_plain_literal_fields():
    assert mode_choices(Hand)["plain"] == ("a", "b")
    for name, cls in STAGE_CONFIGS.items():
        expected = literal_fields_from_annotations(cls)
        plain = {key: value for key, value in expected.items() if "None" not in str(cls.__dataclass_fields__[key].type)}
        assert plain.items() <= mode_choices(cls).items(), name


def test_mode_choices_finds_every_literal_field_optional_ones_included():
    assert mode_choices(Hand) == {"plain": ("a", "b"), "optional_new": ("x", "y"), "optional_old": ("p", "q")}
    for name, cls in STAGE_CONFIGS.items():
        assert mode_choices(cls) == literal_fields_from_annotations(cls), name


def test_a_mode_the_stages_declare_is_found_in_each_stage():
    """A hand-made table: every stage has the run's modes, and the stages with their own modes have them."""
    run_modes = {"preset", "precision", "decode"}
    own = {"sae1": {"schedule"}, "nfm": {"schedule"}, "sae2": {"schedule"}, "joint": {"schedule"},
           "discovery": {"split"}, "selection": {"split", "rank_by"}, "meaning": {"split", "clamp_mode", "interpreter"},
           "clamp": {"split", "clamp_mode", "pathway", "word_list"}, "export": {"format"}}
    for name, cls in STAGE_CONFIGS.items():
        assert run_modes | own.get(name, set()) <= set(mode_choices(cls)), name


def test_a_bad_mode_is_one_line_naming_the_flag_whatever_built_the_config():
    expected = "--precision must be one of auto, fp32, bf16, faithful-fp16, got 'fp64'"
    builders = {
        "the class": lambda: SAE1Config(precision="fp64"),
        "a preset dict": lambda: build_config("sae1", {"preset": "cpu", "precision": "fp64"}),
        "preset_config": lambda: preset_config(SAE1Config, "tiny", precision="fp64"),
    }
    for what, build in builders.items():
        with pytest.raises(UserError) as caught:
            build()
        assert str(caught.value) == expected, what
    with pytest.raises(UserError, match=r"^--schedule must be one of paper, original, got 'cosine'$"):
        build_config("nfm", {"schedule": "cosine"})
    with pytest.raises(UserError, match=r"^--plain must be one of a, b, got 'c'$"):
        Hand(plain="c")


def test_argparse_refuses_a_bad_mode_in_one_error_line_naming_the_flag(capsys: pytest.CaptureFixture):
    with pytest.raises(SystemExit) as stop:
        parse_config(SAE1Config, "", ["--precision", "fp64"])
    assert stop.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "argument --precision: invalid choice: 'fp64'" in errors[0]


@pytest.mark.parametrize("build", ["class", "dict", "argv"])
def test_an_optional_mode_is_checked_too(build: str):
    with pytest.raises((UserError, SystemExit)):
        if build == "class":
            ClampConfig(patch="bogus")
        elif build == "dict":
            build_config("clamp", {"patch": "bogus"})
        else:
            parse_config(ClampConfig, "", ["--patch", "bogus"])


def test_none_and_every_allowed_value_pass():
    assert Hand(optional_new=None, optional_old=None).plain == "a"
    for value in ("auto", "fp32", "bf16", "faithful-fp16"):
        assert SAE1Config(precision=value).precision == value
    assert ClampConfig(patch="delta").patch == "delta" and ClampConfig(patch=None).patch is None


def test_opt_records_help_and_aliases_and_gives_each_config_its_own_list():
    first, second = ClampConfig(), ClampConfig()
    assert first.multipliers == [-4.0, -2.0, 0.0, 2.0, 4.0]  # the original's -4, 0, 4 and a dose between
    first.multipliers.append(9.0)
    assert second.multipliers == [-4.0, -2.0, 0.0, 2.0, 4.0]
    declared = {f.name: f for f in dataclasses.fields(NFMConfig)}
    assert declared["nfm_embed_dim"].metadata["aliases"] == ("--nfm_k",)
    assert declared["nfm_embed_dim"].metadata["help"] == "NFM embedding dimension k"
    assert declared["lr"].metadata["aliases"] == ()


def test_like_keeps_the_base_fields_help_and_aliases_with_another_default():
    base = {f.name: f for f in dataclasses.fields(TrainedStageConfig)}
    stage = {f.name: f for f in dataclasses.fields(SAE1Config)}
    assert stage["checkpoint_dir"].default == "checkpoints_topk" != base["checkpoint_dir"].default
    assert dict(stage["checkpoint_dir"].metadata) == dict(base["checkpoint_dir"].metadata)  # help and output=True
    assert stage["stop_at_step"].metadata["help"] == "stop here (the paper's run stopped at about 200k of 500k planned)"

    @dataclass
    class Other:
        nfm_embed_dim: int = like(NFMConfig, "nfm_embed_dim", 7, "another help")

    other = dataclasses.fields(Other)[0]
    assert (other.default, other.metadata["help"], other.metadata["aliases"]) == (7, "another help", ("--nfm_k",))


def test_field_names():
    assert field_names(Hand) == {"plain", "optional_new", "optional_old", "text", "number"}


def test_input_paths_are_every_input_the_config_names():
    cfg = ClampConfig(text_files=["a.txt", "b.txt"], cache_dir=None, stimuli="cells.json")
    assert sorted(input_paths(cfg)) == sorted([
        ("--sae1_model_path", "checkpoints_topk", "dir"),
        ("--nfm_model_path", "checkpoints_nfm", "dir"),
        ("--interaction_sae_path", "interaction_sae", "dir"),
        ("--selection_dir", "selection_results", "dir"),
        ("--text_files", "a.txt", "file"),
        ("--text_files", "b.txt", "file"),
        ("--stimuli", "cells.json", "file"),
    ])
    assert ("--cache_dir", "runs/cache", "dir") in input_paths(ClampConfig(cache_dir="runs/cache"))
    assert input_paths(SAE1Config()) == []  # its only output, nothing read from disk by default


def test_opt_spells_a_field():
    declared = opt(3, "three", aliases=("--three",), input="dir")
    assert declared.default == 3 and dict(declared.metadata) == {"help": "three", "aliases": ("--three",),
                                                                 "input": "dir"}
