"""How a config field is declared (its help, its other spellings, whether it names an input or the output) and the
one check of every mode setting."""
from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import field
from typing import Any, ClassVar, Literal, Protocol

from common.errors import UserError


class Config(Protocol):
    """Any stage's config: a dataclass of fields declared with ``opt``."""

    __dataclass_fields__: ClassVar[dict[str, Any]]


def opt(default: Any, help: str, aliases: tuple[str, ...] = (), **extra: Any) -> Any:
    """A config field with its ``--help`` text and any other spellings of its flag (old names, the original's)."""
    metadata = {"help": help, "aliases": aliases, **extra}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def like(base: type, name: str, default: Any, help: str | None = None) -> Any:
    """``base``'s field ``name`` (its help and aliases) with another paper default, and optionally other help."""
    metadata = dict(next(f for f in dataclasses.fields(base) if f.name == name).metadata)
    if help is not None:
        metadata["help"] = help
    return field(default=default, metadata=metadata)


def field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


@functools.cache
def mode_choices(cls: type) -> dict[str, tuple[Any, ...]]:
    """Each ``Literal`` field of a config class (``common.config.modes``) and its allowed values."""
    choices = {}
    for name, hint in typing.get_type_hints(cls).items():
        union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union  # X | None, Optional[X]
        options = [hint, *typing.get_args(hint)] if union else [hint]
        for option in options:
            if typing.get_origin(option) is Literal:
                choices[name] = typing.get_args(option)
    return choices


class Checked:
    """A config whose mode settings are checked when it is built, whatever built it (a command line, a preset, the
    study): a value outside its ``Literal`` is one error line naming the flag."""

    def __post_init__(self) -> None:
        for name, allowed in mode_choices(type(self)).items():
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise UserError(f"--{name} must be one of {', '.join(map(str, allowed))}, got {value!r}")


def input_paths(cfg: Config) -> list[tuple[str, str, str]]:
    """(flag, path, "dir" or "file") of every input the config names: the paths an output must keep apart from."""
    found = []
    for f in dataclasses.fields(cfg):
        kind, value = f.metadata.get("input"), getattr(cfg, f.name)
        if kind and value:
            found += [(f"--{f.name}", str(path), kind) for path in (value if isinstance(value, list) else [value])]
    return found
