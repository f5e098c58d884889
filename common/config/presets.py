"""The presets (data in ``common.registry``) checked against the configs, and a stage's config built from them.

A value comes from, in order: the command line, the preset's entry for the stage, the preset's ``common`` entry, the
dataclass default. The dataclass defaults are the paper's configuration, so no flags means the paper's run.
"""
from __future__ import annotations

import argparse
from typing import Any, TypeVar

from common.config.fields import field_names
from common.config.stages import STAGE_CONFIGS
from common.errors import UserError
from common.registry import PRESET_NAMES, preset_entries

C = TypeVar("C")
PRESETS: dict[str, dict[str, dict[str, Any]]] = {preset: preset_entries(preset) for preset in PRESET_NAMES}


def check_presets(presets: dict[str, dict[str, dict[str, Any]]], stage_configs: dict[str, type]) -> None:
    """A misspelled stage or key in a preset would be dropped silently; refuse it at import instead."""
    every_field = set().union(*(field_names(cls) for cls in stage_configs.values()))
    for preset, entries in presets.items():
        for stage, values in entries.items():
            if stage != "common" and stage not in stage_configs:
                raise ValueError(f"preset {preset!r}: unknown stage {stage!r} (stages: {', '.join(stage_configs)})")
            known = every_field if stage == "common" else field_names(stage_configs[stage])
            unknown = sorted(set(values) - known)
            if unknown:
                raise ValueError(f"preset {preset!r}, {stage!r}: unknown settings {', '.join(unknown)}")


check_presets(PRESETS, STAGE_CONFIGS)


def build_config(stage: str, args: argparse.Namespace | dict[str, Any]) -> Any:
    """Dataclass default < preset ``common`` < preset stage entry < command line."""
    cls = STAGE_CONFIGS[stage]
    given = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    preset = given.get("preset") or "paper"
    if preset not in PRESETS:
        raise UserError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    names = field_names(cls)
    values: dict[str, Any] = {}
    for layer in (PRESETS[preset].get("common", {}), PRESETS[preset].get(stage, {})):
        values.update({k: v for k, v in layer.items() if k in names})
    values.update({k: v for k, v in given.items() if k in names and v is not None})
    values["preset"] = preset
    return cls(**values)


def stage_name(cls: type) -> str:
    """The registry's name of the stage whose config class is ``cls``."""
    return next(name for name, config in STAGE_CONFIGS.items() if config is cls)


def preset_config(cls: type[C], preset: str, **settings: Any) -> C:
    """The config of ``cls``'s stage under a preset, as a command line giving only ``settings`` would build it."""
    return build_config(stage_name(cls), {"preset": preset, **settings})
