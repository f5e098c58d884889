"""common/config/modes.py: every named mode is a Literal that some stage's setting takes, and a stage's command line
offers exactly its values (read here from the annotation text, not from ``mode_choices``)."""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Literal

import pytest

from common.config import modes
from common.config.parse import add_config_args
from common.config.stages import STAGE_CONFIGS

MODES = {name: value for name, value in vars(modes).items() if typing.get_origin(value) is Literal}


def users_of(mode: str) -> list[tuple[str, str]]:
    """(stage, field) of every field whose annotation names ``mode``."""
    return [(stage, f.name) for stage, cls in STAGE_CONFIGS.items() for f in dataclasses.fields(cls)
            if mode in (part.strip() for part in str(f.type).split("|"))]


def offered_choices(cls: type) -> dict[str, tuple | None]:
    parser = argparse.ArgumentParser()
    add_config_args(parser, cls)
    return {action.dest: None if action.choices is None else tuple(action.choices) for action in parser._actions}


def test_the_modes_are_the_ones_the_method_names():
    assert set(MODES) == {"Preset", "Precision", "Decode", "Schedule", "StimulusSplit", "Patch", "ClampMode",
                          "RankBy", "Pathway", "WordList", "Interpreter", "ExportFormat", "NFMTarget",
                          "NFMPathways"}
    assert typing.get_args(modes.NFMTarget) == ("residual", "beyond_ridge", "shuffled")  # METHOD §14's controls
    assert typing.get_args(modes.Precision) == ("auto", "fp32", "bf16", "faithful-fp16")
    assert typing.get_args(modes.Decode) == ("auto", "dense", "sparse")
    for name, mode in MODES.items():
        values = typing.get_args(mode)
        assert values and len(set(values)) == len(values) and all(isinstance(v, str) for v in values), name


@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_mode_is_some_stages_setting(mode: str):
    assert users_of(mode), f"no config field takes {mode}"


@pytest.mark.parametrize("mode", sorted(MODES))
def test_the_command_line_offers_exactly_the_modes_values(mode: str):
    values = typing.get_args(MODES[mode])
    for stage, name in users_of(mode):
        offered = offered_choices(STAGE_CONFIGS[stage])[name]
        if name == "preset":
            assert sorted(offered) == sorted(values), stage  # offered sorted, from the registry's presets
        else:
            assert offered == values, (stage, name)
