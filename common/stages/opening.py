"""How every stage opens, once: its config parsed (and refused under torchrun if it does not split), its output
directory checked, every input read and checked, then the runtime, the LM, each input against the LM, and the patch
layer; and its ``config.json`` written with what a resumed run must match. Nothing is loaded before every input
passed, and nothing is written before the LM is open."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import torch

from common.config.concepts import KLConfig, LMStageConfig, TrainedStageConfig
from common.config.fields import Config, input_paths
from common.config.parse import parse_config
from common.config.presets import stage_name
from common.data.activations import NORM_STATS_FILE
from common.errors import UserError
from common.lm.hooks import check_layer
from common.lm.loading import load_lm
from common.lm.model import LoadedLM, model_record
from common.models.loading import StageInput, require_same_lm
from common.models.settings import EvalSettings
from common.runtime.context import Runtime, runtime
from common.runtime.distributed import check_stage
from common.store.fingerprints import git_commit
from common.store.formats import FORMAT_VERSION, upgrade_config
from common.store.lock import OutputDir
from common.store.reads import load_json
from common.store.stage_files import CONFIG_FILE, write_config

C = TypeVar("C")
# Settings that may change between an interrupted run and its resumption without changing the result.
RESUMABLE_CHANGES = {"resume", "overwrite", "stop_at_step", "device", "harvest_batch_size"}


def stage_config(cls: type[C], description: str, argv: list[str] | None) -> C:
    """The stage's config from its command line; a stage that does not split by rank is refused under torchrun here,
    before anything is read."""
    check_stage(stage_name(cls))
    return parse_config(cls, description, argv)


class Inputs(Protocol):
    """What a stage read before the LM is opened: the stage directories it was given (each checked against the LM
    next) and, where it patches the LM, how its models are evaluated (which sets the patch layer)."""

    sources: list[StageInput]
    settings: EvalSettings | None


@dataclass
class SourcesOnly:
    sources: list[StageInput] = field(default_factory=list)
    settings: EvalSettings | None = None


InputsT = TypeVar("InputsT", bound=Inputs)


@dataclass
class Opened:
    """A stage after its opening: everything checked, the LM loaded, nothing written yet."""

    out: OutputDir
    rt: Runtime
    lm: LoadedLM
    record: dict[str, Any]  # the LM's provenance, carried by every output
    patch_layer: int  # where the residual is patched: L as trained, L + 1 under --original_eval


def output_path(cfg: Config) -> str:
    """The config's one output field (``--checkpoint_dir`` or ``--output_dir``)."""
    return next(getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.metadata.get("output"))


def open_stage(cfg: LMStageConfig, read_inputs: Callable[[], InputsT],
               lm_dtype: torch.dtype | None = None) -> tuple[Opened, InputsT]:
    """The one opening order: the output directory → every input (``read_inputs``) → the runtime → the LM → each
    input against the LM → the patch layer."""
    out = OutputDir(output_path(cfg), getattr(cfg, "resume", False), cfg.overwrite, input_paths(cfg))
    inputs = read_inputs()
    rt = runtime(cfg)
    lm = load_lm(cfg.model, rt.device, lm_dtype, trust_remote_code=cfg.trust_remote_code, cache_dir=cfg.cache_dir)
    check_layer(lm.num_layers, cfg.layer)
    record = model_record(lm, cfg.layer)
    for source in inputs.sources:
        require_same_lm(source, record)
    patch_layer = cfg.layer + (inputs.settings.layer_offset if inputs.settings else 0)
    if patch_layer > lm.num_layers - 1:
        raise UserError(f"--original_eval reads and patches the residual one block later, at layer {patch_layer}, but "
                        f"this {lm.num_layers}-block model's last patchable layer is {lm.num_layers - 1}")
    return Opened(out, rt, lm, record, patch_layer), inputs


def start_output_dir(out: OutputDir, cfg: TrainedStageConfig | KLConfig, record: dict[str, Any], stage: str,
                     extra: dict[str, Any] | None = None) -> dict:
    """Write ``config.json``; on --resume first check that the run is the same one (settings, model, inputs, text).

    Call it holding the directory's lock (``with out.writing():``). On --overwrite everything but the lock goes first.
    """
    config = {
        "stage": stage,
        "format_version": FORMAT_VERSION,
        **record,
        "config": dataclasses.asdict(cfg),
        "norm_stats_file": NORM_STATS_FILE,
        "git_commit": git_commit(),
        **(extra or {}),
    }
    folder = out.path
    if cfg.resume and (folder / CONFIG_FILE).is_file():
        changed = resume_differences(upgrade_config(load_json(folder / CONFIG_FILE)), config, cfg)
        if changed:
            raise UserError(f"--resume: {folder} was started with other settings or inputs ({', '.join(changed)}); "
                            "resume with those, or start a new run with --overwrite or another output directory")
    elif cfg.overwrite and folder.is_dir():
        out.clear()
    folder.mkdir(parents=True, exist_ok=True)
    write_config(folder, config)
    return config


def resume_differences(previous: dict[str, Any], current: dict[str, Any], cfg: Config) -> list[str]:
    """What makes ``current`` another run than ``previous``: any setting that changes the result, the model, an input
    stage's weights or the text's content. Where things live (the output folder, the inputs' paths, the cache) is not
    part of it, so a moved or copied run resumes; a directory of an earlier format that recorded no text identity is
    compared on the rest."""
    where = {f.name for f in dataclasses.fields(cfg) if f.metadata.get("input") or f.metadata.get("output")}
    ignored = RESUMABLE_CHANGES | where
    # A setting added after the run started is absent from its record: it ran as that setting's default does.
    earlier = {**_defaults(cfg), **previous["config"]}
    changed = sorted(key for key in set(previous["config"]) | set(current["config"])
                     if key not in ignored and earlier.get(key) != current["config"].get(key))
    if previous.get("model_fingerprint") != current.get("model_fingerprint"):
        changed.append("the model")
    before, now = _input_fingerprints(previous), _input_fingerprints(current)
    changed += [f"the input {name}" for name in sorted(set(before) & set(now)) if before[name] != now[name]]
    for section in ("data", "evaluation"):
        for key, what in (("text_identity", "the text"), ("tokenizer_fingerprint", "the tokenizer")):
            old, new = previous.get(section, {}).get(key), current.get(section, {}).get(key)
            if old is not None and new is not None and old != new:
                changed.append(what)
    return changed


def _defaults(cfg: Config) -> dict[str, Any]:
    return {f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(cfg) if f.default is not dataclasses.MISSING
            or f.default_factory is not dataclasses.MISSING}


def _input_fingerprints(config: dict[str, Any]) -> dict[str, str]:
    """The weights sha256 of every input stage a config records (``sae1``, ``nfm``, or under ``inputs``)."""
    records = {**{key: value for key, value in config.items() if isinstance(value, dict)}, **config.get("inputs", {})}
    return {name: record["weights_sha256"] for name, record in records.items()
            if isinstance(record, dict) and "weights_sha256" in record}
