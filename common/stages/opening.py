"""What every stage script does around its own work: open the LM and text, guard the output directory, and write
the stage's config. Kept here so the numbered scripts stay thin."""
from __future__ import annotations

import dataclasses
import gc
import logging
from pathlib import Path
from typing import Any

import torch

from common.data.activations import NORM_STATS_FILE, ActivationStream
from common.data.text import WindowedText, resolve_text
from common.errors import UserError
from common.lm.hooks import check_layer
from common.lm.loading import LoadedLM, load_lm
from common.runtime.distributed import ONE, World, join
from common.runtime.regimes import resolve_decode, resolve_device, resolve_precision
from common.store.lock import OutputDir
from common.store.stage_files import CONFIG_FILE, FORMAT_VERSION, git_commit, load_json, upgrade_config, write_config

log = logging.getLogger(__name__)

# Settings that may change between an interrupted run and its resumption without changing the result.
RESUMABLE_CHANGES = {"resume", "overwrite", "stop_at_step", "device", "harvest_batch_size"}


@dataclasses.dataclass
class Runtime:
    device: torch.device
    precision: str
    decode: str
    world: World = ONE


def runtime(cfg: Any) -> Runtime:
    """The device, regimes and (under torchrun) the world of this process, whose process group starts here."""
    world, device = join(resolve_device(cfg.device))
    return Runtime(device, resolve_precision(cfg.precision, device), resolve_decode(cfg.decode, device), world)


def open_lm(cfg: Any, device: torch.device, dtype: torch.dtype | None = None) -> LoadedLM:
    lm = load_lm(cfg.model, device, dtype, trust_remote_code=cfg.trust_remote_code, cache_dir=cfg.cache_dir)
    check_layer(lm.num_layers, cfg.layer)
    return lm


def open_stream(cfg: Any, lm: LoadedLM, role: str = "train", files: list[str] | None = None) -> ActivationStream:
    """Layer-L activations of the preset's training (or evaluation) text."""
    text = resolve_text(files if files is not None else cfg.text_files, cfg.preset, role)
    windows = WindowedText(text, lm.tokenizer, cfg.window, lm.bos_token_id if lm.adds_bos else None)
    windows.get(0)  # fail now, before anything is written, if the text has no window at all
    cache = None if cfg.cache_dir is None else Path(cfg.cache_dir)
    return ActivationStream(lm, cfg.layer, windows, cfg.harvest_batch_size, cfg.exclude_first_position, cache)


def release(lm: LoadedLM) -> None:
    """Free the LM before training: at paper scale its 6.9 GB are better spent elsewhere on a 24 GB card."""
    if lm.model_loaded:
        lm.model.to("meta")
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def model_record(lm: LoadedLM, layer: int) -> dict[str, Any]:
    return {"model_id": lm.model_id, "model_fingerprint": lm.fingerprint, "layer": layer, "d_model": lm.d_model,
            "lm_dtype": str(lm.dtype)}


def start_output_dir(out: OutputDir, cfg: Any, record: dict[str, Any], stage: str,
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


def resume_differences(previous: dict[str, Any], current: dict[str, Any], cfg: Any) -> list[str]:
    """What makes ``current`` another run than ``previous``: any setting that changes the result, the model, an input
    stage's weights or the text's content. Where things live (the output folder, the inputs' paths, the cache) is not
    part of it, so a moved or copied run resumes; a directory of an earlier format that recorded no text identity is
    compared on the rest."""
    where = {f.name for f in dataclasses.fields(cfg) if f.metadata.get("input") or f.metadata.get("output")}
    ignored = RESUMABLE_CHANGES | where
    changed = sorted(key for key in set(previous["config"]) | set(current["config"])
                     if key not in ignored and previous["config"].get(key) != current["config"].get(key))
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


def _input_fingerprints(config: dict[str, Any]) -> dict[str, str]:
    """The weights sha256 of every input stage a config records (``sae1``, ``nfm``, or under ``inputs``)."""
    records = {**{key: value for key, value in config.items() if isinstance(value, dict)}, **config.get("inputs", {})}
    return {name: record["weights_sha256"] for name, record in records.items()
            if isinstance(record, dict) and "weights_sha256" in record}
