"""What every stage script does around its own work: open the LM and text, guard the output directory, and write
the stage's config. Kept here so the numbered scripts stay thin."""
from __future__ import annotations

import dataclasses
import gc
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from common.activations import NORM_STATS_FILE, ActivationStream
from common.checkpoint import CONFIG_FILE, FORMAT_VERSION, git_commit, load_json, upgrade_config, write_config
from common.data import WindowedText, resolve_text
from common.device import resolve_decode, resolve_device, resolve_precision
from common.errors import UserError
from common.hooks import check_layer
from common.lm import LoadedLM, load_lm

log = logging.getLogger(__name__)

# Settings that may change between an interrupted run and its resumption without changing the result.
RESUMABLE_CHANGES = {"resume", "overwrite", "stop_at_step", "device", "cache_dir", "harvest_batch_size"}


@dataclasses.dataclass
class Runtime:
    device: torch.device
    precision: str
    decode: str


def runtime(cfg: Any) -> Runtime:
    device = resolve_device(cfg.device)
    return Runtime(device, resolve_precision(cfg.precision, device), resolve_decode(cfg.decode, device))


def open_lm(cfg: Any, device: torch.device) -> LoadedLM:
    lm = load_lm(cfg.model, device, trust_remote_code=cfg.trust_remote_code)
    check_layer(lm.model, cfg.layer)
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
    lm.model.to("meta")
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def model_record(lm: LoadedLM, layer: int) -> dict[str, Any]:
    return {"model_id": lm.model_id, "model_fingerprint": lm.fingerprint, "layer": layer, "d_model": lm.d_model,
            "lm_dtype": str(lm.dtype)}


def check_output_dir(path: str | Path, resume: bool, overwrite: bool) -> Path:
    """Refuse to clobber a finished or half-finished run unless asked; nothing is written here."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {out} exists and is not a directory")
    busy = out.is_dir() and any(out.iterdir())
    if busy and not (resume or overwrite):
        raise UserError(f"{out} already holds a run: pass --resume to continue it or --overwrite to replace it")
    return out


def start_output_dir(out: Path, cfg: Any, record: dict[str, Any], stage: str,
                     extra: dict[str, Any] | None = None) -> dict:
    """Write ``config.json`` (or, on resume, check that the run's settings did not change)."""
    config = {
        "stage": stage,
        "format_version": FORMAT_VERSION,
        **record,
        "config": dataclasses.asdict(cfg),
        "norm_stats_file": NORM_STATS_FILE,
        "git_commit": git_commit(),
        **(extra or {}),
    }
    if getattr(cfg, "resume", False) and (out / CONFIG_FILE).is_file():
        previous = upgrade_config(load_json(out / CONFIG_FILE))
        changed = sorted(
            key for key in set(previous["config"]) | set(config["config"])
            if key not in RESUMABLE_CHANGES and previous["config"].get(key) != config["config"].get(key)
        )
        if changed or previous.get("model_fingerprint") != config["model_fingerprint"]:
            raise UserError(f"--resume: {out} was started with other settings ({', '.join(changed) or 'model'}); "
                            "use a new --checkpoint_dir")
        if previous != load_json(out / CONFIG_FILE):  # an earlier format: continue in this one
            write_config(out, previous)
        return previous
    if getattr(cfg, "overwrite", False) and out.is_dir():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_config(out, config)
    return config
