"""A stage's command line: one flag per config field (with its old spellings), ``--help`` listing the paper's
default of each, and the config built from the flags and the preset."""
from __future__ import annotations

import argparse
import dataclasses
from typing import TypeVar

from common.config.fields import mode_choices
from common.config.presets import PRESETS, build_config, stage_name

C = TypeVar("C")


def add_config_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--name`` (plus its aliases) per field, defaulting to None so that presets can fill in what the user did
    not say."""
    choices = mode_choices(cls)
    for f in dataclasses.fields(cls):
        names = [f"--{f.name}", *f.metadata.get("aliases", ())]
        help_text = f.metadata.get("help", "")
        if f.default is not dataclasses.MISSING:
            help_text = f"{help_text} (paper: {f.default!r})"
        if f.name == "preset":
            parser.add_argument(*names, choices=sorted(PRESETS), default=None, help=help_text)
        elif isinstance(f.default, bool):
            parser.add_argument(*names, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif "nargs" in f.metadata:
            parser.add_argument(*names, nargs=f.metadata["nargs"], type=f.metadata.get("type", str), default=None,
                                help=help_text)
        elif f.name in choices:
            parser.add_argument(*names, choices=choices[f.name], default=None, help=help_text)
        else:
            parser.add_argument(*names, type=_field_type(f), default=None, metavar=f.name.upper(), help=help_text)


def _field_type(f: dataclasses.Field) -> type:
    annotation = str(f.type)
    for name, kind in (("int", int), ("float", float)):
        if annotation.startswith(name):
            return kind
    return str


def parse_config(cls: type[C], description: str, argv: list[str] | None) -> C:
    """The config of ``cls``'s stage from its command line (``--help`` lists every field with the paper's default)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, cls)
    return build_config(stage_name(cls), parser.parse_args(argv))
