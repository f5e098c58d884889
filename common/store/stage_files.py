"""Stage directories on disk: atomic writes, a JSON config beside safetensors weights, and checks on load (METHOD §0).

Every stage file is read and written only here. A trained stage's directory holds ``config.json`` (the stage's
settings and provenance, with the model's own shape under ``model``), ``best_model.safetensors``,
``norm_stats.safetensors``, ``metrics.json`` and ``resume.pt``; an evaluation's holds ``config.json`` or its run record
and ``results.json``.
"""
from __future__ import annotations

import copy
import dataclasses
import errno
import hashlib
import json
import os
import re
import subprocess
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from common.errors import UserError
from common.paths import REPO_ROOT
from common.runtime.distributed import world_size
from common.runtime.resources import usage

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "best_model.safetensors"
METRICS_FILE = "metrics.json"
RESULTS_FILE = "results.json"
RESUME_FILE = "resume.pt"
# 2: the model's shape under "model" in config.json; nfm_k renamed nfm_embed_dim, part15's compare_sequential
# renamed nfm_model_path. Version-1 directories are upgraded in memory when read (``upgrade_config``).
FORMAT_VERSION = 2
MODEL_KEY = "model"


# ---- atomic writes -----------------------------------------------------------------------------------------------


# A test sets this to a file name: every atomic write of that name then pauses between writing its temp file and the
# rename (announced by a ".paused-<name>" file beside it, holding the pid), so that the test can kill the process at
# that moment (under torchrun: the one rank that writes the file).
PAUSE_WRITE_ENV = "FEATURE_INTEGRATION_PAUSE_WRITE"
FULL_DISK_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write through a temp file in the same folder, then rename: a kill never leaves a half-written file, and a
    failed write (a full disk) leaves the previous file as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes the file private; the result gets the usual permissions
    try:
        write(tmp)
        _pause_for_tests(path)
        os.replace(tmp, path)
    except (OSError, RuntimeError, SafetensorError) as err:
        full = _full_disk(err)
        if full is None:
            raise
        raise UserError(f"cannot write {path}: {os.strerror(full.errno)}; the previous {path.name} is intact: free "
                        "space and re-run with --resume") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _full_disk(err: BaseException | None) -> OSError | None:
    """The full-disk OSError behind ``err``, if any: torch's writer reports it as a RuntimeError raised while the
    file object's OSError is being handled."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in FULL_DISK_ERRNOS:
            return err
        reported = re.search(r"\(os error (\d+)\)", str(err))  # safetensors' Rust writer names the errno in its text
        if reported and int(reported.group(1)) in FULL_DISK_ERRNOS:
            return OSError(int(reported.group(1)), os.strerror(int(reported.group(1))))
        err = err.__cause__ or err.__context__
    return None


def _pause_for_tests(path: Path) -> None:
    if os.environ.get(PAUSE_WRITE_ENV) == path.name:
        (path.parent / f".paused-{path.name}").write_text(str(os.getpid()))
        time.sleep(60)


def atomic_save_safetensors(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    contiguous = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    atomic_write(path, lambda tmp: save_file(contiguous, tmp, metadata=metadata))


def atomic_save_json(obj: Any, path: Path) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(obj, handle, indent=2, sort_keys=False)
            handle.write("\n")

    atomic_write(path, write)


def atomic_torch_save(obj: Any, path: Path) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:  # a Python file, so that a failed write keeps its OSError (see _full_disk)
            torch.save(obj, handle)

    atomic_write(path, write)


def atomic_save_npz(columns: Iterable[tuple[str, np.ndarray]], path: Path) -> None:
    """A plain ``.npz`` (``np.load`` reads it) written one array at a time: a generator of columns keeps one in
    memory."""

    def write(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w", allowZip64=True) as archive:
            for name, array in columns:
                with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)

    atomic_write(path, write)


def atomic_save_text(text: str, path: Path) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)

    atomic_write(path, write)


# ---- checked reads: a missing, truncated or corrupt file is a UserError naming the file and the fix --------------

REWRITE_HINT = "re-run the stage that wrote it (or restore the file)"


def load_json(path: Path) -> Any:
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise UserError(f"{path} is missing: {REWRITE_HINT}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is truncated or corrupt (not valid JSON: {err}): {REWRITE_HINT}") from None


def load_tensors(path: Path) -> dict[str, Tensor]:
    """A safetensors file (no unpickling), refusing a missing, truncated or corrupt one with one clear line."""
    return load_tensors_with_metadata(path)[0]


def load_tensors_with_metadata(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} is missing: {REWRITE_HINT}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: handle.get_tensor(name) for name in handle.keys()}, handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{path} is truncated or corrupt (safetensors: {err}): {REWRITE_HINT}") from None


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# ---- the stage files ---------------------------------------------------------------------------------------------


def write_config(folder: Path, config: dict[str, Any]) -> None:
    atomic_save_json(config, Path(folder) / CONFIG_FILE)


def write_metrics(folder: Path, metrics: dict[str, Any]) -> None:
    """``metrics.json`` is written last: its presence marks a finished trained stage. It records what the stage cost
    (``resources``: wall time, peak memory)."""
    atomic_save_json({**metrics, "resources": usage()}, Path(folder) / METRICS_FILE)


def write_results(folder: Path, results: dict[str, Any]) -> Path:
    """``results.json`` is written last: its presence marks a finished evaluation or analysis (with ``resources``, and
    ``world_size``: 1 but for the KL tests under torchrun)."""
    path = Path(folder) / RESULTS_FILE
    atomic_save_json({"world_size": world_size(), **results, "resources": usage()}, path)
    return path


def write_resume_state(folder: Path, state: dict[str, Any]) -> None:
    atomic_torch_save(state, Path(folder) / RESUME_FILE)


def load_resume_state(folder: Path) -> dict | None:
    """Resume state written by this project (``weights_only=True``: the safe unpickler, tensors and plain types)."""
    path = Path(folder) / RESUME_FILE
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # zipfile, pickle and torch raise many types for a damaged file; all mean the same
        raise UserError(f"{path} is truncated or corrupt ({type(err).__name__}): this run cannot be resumed; start it "
                        "again with --overwrite") from None


def write_model(folder: Path, record: dict[str, Any], tensors: dict[str, Tensor], step: int | None = None) -> None:
    """A model's weights (fp32) and, in ``config.json``, its shape ``record`` (``{"class": ..., ...}``).

    A stage writes its ``config.json`` before training, with the record in it, so the best-model saves during training
    rewrite only the weights; a model saved into a fresh folder gets a ``config.json`` holding just its record.
    """
    folder = Path(folder)
    metadata = None if step is None else {"step": str(step)}
    atomic_save_safetensors({name: t.float() for name, t in tensors.items()}, folder / WEIGHTS_FILE, metadata)
    path = folder / CONFIG_FILE
    config = load_json(path) if path.is_file() else {"format_version": FORMAT_VERSION}
    if config.get(MODEL_KEY) != record:
        atomic_save_json({**config, MODEL_KEY: record}, path)


def read_model(folder: Path, kind: str, part: str = "") -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The shape record and the weights of the model of class ``kind`` in ``folder``; ``part`` ("sae") selects a
    sub-model of a composite one, its record and its tensors (whose names lose the ``part.`` prefix)."""
    config = upgrade_config(load_json(Path(folder) / CONFIG_FILE))
    record = config.get(MODEL_KEY)
    if record is None:
        raise UserError(f"{folder}: its {CONFIG_FILE} records no model")
    if part:
        record = record.get(part)
    if record is None or record.get("class") != kind:
        found = config[MODEL_KEY].get("class")
        raise UserError(f"{folder}: holds a {found} model, not a {kind}{f' (as its {part!r} part)' if part else ''}")
    return record, load_weights(folder, f"{part}." if part else "")


def load_weights(folder: Path, prefix: str = "") -> dict[str, Tensor]:
    """Weights of a stage (safetensors: no unpickling); ``prefix`` selects one part, stripped from the names."""
    tensors = load_tensors(Path(folder) / WEIGHTS_FILE)
    if not prefix:
        return tensors
    return {name[len(prefix) :]: t for name, t in tensors.items() if name.startswith(prefix)}


def weights_sha256(folder: Path, name: str = WEIGHTS_FILE) -> str:
    """Fingerprint of a stage's weights file (or of an imported SAE's, ``name``): a later stage records it and refuses
    a checkpoint built on another."""
    digest = hashlib.sha256()
    with open(Path(folder) / name, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


# ---- reading a finished stage ------------------------------------------------------------------------------------


def stage_dir(path: str | Path, flag: str) -> Path:
    """Accept a stage directory or a file inside it (e.g. ``.../best_model.safetensors``)."""
    path = Path(path)
    folder = path.parent if path.suffix else path
    needed = (CONFIG_FILE, WEIGHTS_FILE, METRICS_FILE)
    if not folder.is_dir() or not all((folder / name).is_file() for name in needed):
        raise UserError(f"{flag} {path}: not a finished checkpoint directory (needs {', '.join(needed)})")
    return folder


def read_stage(path: str | Path, flag: str, stages: tuple[str, ...]) -> tuple[Path, dict]:
    """A stage directory and its config (upgraded to this format), refusing a directory written by another stage."""
    folder = stage_dir(path, flag)
    config = upgrade_config(load_json(folder / CONFIG_FILE))
    if config.get("stage") not in stages:
        raise UserError(f"{flag} {path}: holds a '{config.get('stage')}' checkpoint, expected {' or '.join(stages)}")
    return folder, config


def require_match(what: str, mine: dict, theirs: dict, keys: tuple[str, ...]) -> None:
    """Refuse to combine checkpoints that disagree on model, layer or shapes, naming the first difference."""
    for key in keys:
        if mine.get(key) != theirs.get(key):
            raise UserError(f"{what}: {key} is {theirs.get(key)!r} there but {mine.get(key)!r} here")


# ---- older formats -----------------------------------------------------------------------------------------------

RENAMED_SETTINGS = {"nfm_k": "nfm_embed_dim", "compare_sequential": "nfm_model_path"}


def upgrade_config(config: dict[str, Any]) -> dict[str, Any]:
    """A ``config.json`` of any earlier format as this format writes it (in memory; the file is left as it is).

    Version 1 had no ``model`` record: it is rebuilt from the stage's settings, which held the same numbers.
    """
    if config.get("format_version", 1) >= FORMAT_VERSION or "config" not in config:
        return config
    config = copy.deepcopy(config)
    settings = {RENAMED_SETTINGS.get(key, key): value for key, value in config["config"].items()}
    config["config"] = settings
    stage = config.get("stage")
    sae = {"class": "TopKSAE", "d_model": config.get("d_model"), "num_features": settings.get("features"),
           "k": settings.get("k"), "tied": settings.get("tied", True)}
    nfm = {"class": "NFM", "num_features": config.get("num_features"), "d_model": config.get("d_model"),
           "embed_dim": settings.get("nfm_embed_dim"), "dropout": settings.get("dropout")}
    if stage == "sae1":
        config[MODEL_KEY] = sae
    elif stage == "nfm":
        config[MODEL_KEY] = nfm
    elif stage == "sae2":
        config[MODEL_KEY] = {**sae, "d_model": config["input_dim"], "num_features": config["num_features"],
                             "k": config["k"]}
    elif stage == "joint":
        config[MODEL_KEY] = {"class": "JointSAENFM", "top_n": settings["top_n_features"], "sae": sae,
                             "nfm": {**nfm, "num_features": settings["features"]}}
    config["format_version"] = FORMAT_VERSION
    return config


# ---- models that save and load themselves ------------------------------------------------------------------------


class SavesItself:
    """Mixin for a model (an ``nn.Module``) with a small shape dataclass ``Shape``: ``save(folder)`` writes its weights
    and its shape record, ``Model.load(folder)`` builds it from that record and loads the weights strictly."""

    Shape: type

    @property
    def shape(self) -> Any:
        raise NotImplementedError

    @classmethod
    def from_shape(cls, shape: Any) -> Any:
        raise NotImplementedError

    def record(self) -> dict[str, Any]:
        return {"class": type(self).__name__, **dataclasses.asdict(self.shape)}

    @classmethod
    def shape_from_record(cls, record: dict[str, Any]) -> Any:
        return cls.Shape(**{key: value for key, value in record.items() if key != "class"})

    def save(self, folder: Path, step: int | None = None) -> None:
        write_model(folder, self.record(), self.state_dict(), step)

    @classmethod
    def load(cls, folder: Path, part: str = "") -> Any:
        record, tensors = read_model(folder, cls.__name__, part)
        model = cls.from_shape(cls.shape_from_record(record))
        try:
            missing, unexpected = model.load_state_dict(tensors, strict=False)
        except RuntimeError as err:  # a tensor of another shape than the record says
            raise UserError(f"{folder}: weights do not match its config "
                            f"({str(err).splitlines()[-1].strip()})") from None
        if missing or unexpected:
            raise UserError(f"{folder}: weights do not match its config (missing {missing}, unexpected {unexpected})")
        return model
