"""Earlier stages' directories as inputs: their models loaded through the model classes, with the shape and
provenance checks of METHOD §0 (model id, fingerprint, layer, width; the SAE an NFM was trained on). Wherever a
stage-1 directory is accepted, a SAELens or sparsify TopK SAE directory is too (``common.models.formats``)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from common.data.activations import NORM_STATS_FILE, NormStats
from common.errors import UserError
from common.models.formats import foreign_format, import_sae, same_model
from common.models.joint import JointSAENFM
from common.models.nfm import NFM
from common.models.sae import TopKSAE
from common.store.reads import load_json
from common.store.stage_files import METRICS_FILE, WEIGHTS_FILE, read_stage, require_match, weights_sha256

log = logging.getLogger(__name__)

# A control of METHOD §14 holds its model's kind, so it loads wherever that model is accepted.
NFM_STAGES = ("nfm", "nfm_control")
JOINT_STAGES = ("joint", "joint_linear")
SAE_STAGES = ("sae1", "sae_control", *JOINT_STAGES)  # a joint directory's SAE part loads as a stage-1 directory
PROVENANCE_KEYS = ("model_id", "model_fingerprint", "layer", "d_model")


@dataclass
class StageInput:
    """A finished stage directory given on the command line: the flag and path it came from, and its config."""

    flag: str
    path: str
    folder: Path
    config: dict[str, Any]
    weights_file: str = WEIGHTS_FILE
    imported: str | None = None  # "saelens" or "sparsify": an SAE of another library, read in raw activation space
    norm: NormStats | None = None  # an imported SAE's stats (the identity); ours are read from the folder

    @property
    def what(self) -> str:
        return f"{self.flag} {self.path}"

    def weights_sha256(self) -> str:
        return weights_sha256(self.folder, self.weights_file)

    def record(self) -> dict[str, str]:
        """What a later stage records of this input: where it was, and the sha256 of its weights (and the library's
        format, for an imported SAE)."""
        record = {"path": str(self.path), "weights_sha256": self.weights_sha256()}
        return record if self.imported is None else {**record, "format": self.imported}

    def norm_stats(self) -> NormStats:
        if self.norm is not None:
            return self.norm
        return NormStats.load(self.folder / self.config.get("norm_stats_file", NORM_STATS_FILE))

    def metrics(self) -> dict[str, Any]:
        return load_json(self.folder / METRICS_FILE)


def open_input(path: str | Path, flag: str, stages: tuple[str, ...]) -> StageInput:
    folder, config = read_stage(path, flag, stages)
    return StageInput(flag, str(path), folder, config)


def load_sae(path: str | Path, flag: str = "--sae1_model_path") -> tuple[TopKSAE, NormStats, StageInput]:
    """The SAE of a stage-1 or joint directory, or of a SAELens or sparsify TopK directory (fp32, CPU), its
    normalization stats (the identity for an imported one) and where it came from."""
    if foreign_format(path) is not None:
        imported = import_sae(path, flag)
        source = StageInput(flag, str(path), imported.folder, imported.config, imported.weights_file, imported.format,
                            NormStats.identity(imported.sae.d_model))
        return imported.sae, source.norm_stats(), source
    source = open_input(path, flag, SAE_STAGES)
    sae = TopKSAE.load(source.folder, part="sae" if source.config["stage"] in JOINT_STAGES else "")
    return sae, source.norm_stats(), source


def load_nfm(path: str | Path, flag: str = "--nfm_model_path") -> tuple[NFM, StageInput]:
    """The stage-2 NFM (fp32, CPU) and where it came from (its config records the SAE's inference K and top-N)."""
    source = open_input(path, flag, NFM_STAGES)
    return NFM.load(source.folder), source


def load_joint(path: str | Path, flag: str = "--joint_model_path") -> tuple[JointSAENFM, NormStats, StageInput]:
    """The stage-5 joint model (fp32, CPU), its normalization stats and where it came from."""
    source = open_input(path, flag, JOINT_STAGES)
    return JointSAENFM.load(source.folder), source.norm_stats(), source


def require_same_lm(source: StageInput, record: dict[str, Any]) -> None:
    """Refuse a checkpoint trained on another model, layer or width than the one loaded now. An imported SAE is held
    to what its format names; what it does not name (a sparsify SAE's model) is then the run's, recorded as such."""
    require_provenance(source.what, source, record)
    if source.imported is not None:
        unnamed = [key for key in PROVENANCE_KEYS if source.config.get(key) is None]
        if unnamed:
            log.info("%s names no %s: taken from this run (--model %s, --layer %s)", source.what, ", ".join(unnamed),
                     record["model_id"], record["layer"])
        source.config.update({key: record[key] for key in unnamed})


def require_provenance(what: str, source: StageInput, record: dict[str, Any], source_there: bool = True) -> None:
    """``record`` (an LM's or a later stage's provenance) must agree with ``source``'s on model, layer and width; the
    error names ``source``'s value "there" (or, with ``source_there=False``, ``record``'s). An imported SAE is held
    only to what its format names, and a model name also matches an HF id's last part."""
    if source.imported is None:
        here, there = (record, source.config) if source_there else (source.config, record)
        require_match(what, here, there, PROVENANCE_KEYS)
        return
    for key in PROVENANCE_KEYS:
        named, other = source.config.get(key), record.get(key)
        if named is not None and not (same_model(named, other) if key == "model_id" else named == other):
            there, here = (named, other) if source_there else (other, named)
            raise UserError(f"{what}: {key} is {there!r} there but {here!r} here")


def check_nfm_on_sae(nfm: StageInput, sae: TopKSAE, sae_source: StageInput, sae_norm: NormStats) -> None:
    """The NFM must have been trained on this very SAE: same F, LM, layer and width, a K within the SAE's, the same
    weights (by the sha256 the NFM recorded) and the same normalization statistics."""
    if nfm.config["num_features"] != sae.num_features:
        raise UserError(f"{nfm.what}: the NFM takes F={nfm.config['num_features']} features but the SAE of "
                        f"{sae_source.what} has F={sae.num_features}")
    require_provenance(f"{nfm.what} against {sae_source.flag}", sae_source, nfm.config, source_there=False)
    if not 1 <= nfm.config["sae_k"] <= sae.k:
        raise UserError(f"{nfm.what} was fed the SAE at K={nfm.config['sae_k']}, outside 1..{sae.k} of "
                        f"{sae_source.what}")
    recorded = nfm.config.get("sae1", {}).get("weights_sha256")
    if recorded is not None and recorded != sae_source.weights_sha256():
        raise UserError(f"{nfm.what} was trained on another stage-1 SAE than {sae_source.what} "
                        "(its weights fingerprint differs)")
    nfm_norm = nfm.norm_stats()
    if not (torch.equal(nfm_norm.mean, sae_norm.mean) and torch.equal(nfm_norm.std, sae_norm.std)):
        raise UserError(f"{nfm.what} was trained with other normalization statistics than {sae_source.what}")


def load_secondary(path: str | Path, flag: str = "--interaction_sae_path") -> tuple[TopKSAE, NormStats, StageInput]:
    """The stage-3 secondary SAE (fp32, CPU), the z-score stats of its own input (the NFM's interaction vectors) and
    where it came from."""
    source = open_input(path, flag, ("sae2",))
    return TopKSAE.load(source.folder), source.norm_stats(), source


def check_secondary_on(secondary: StageInput, nfm: StageInput, sae: StageInput) -> None:
    """The secondary SAE must have decomposed this very NFM, fed by this very SAE (by the sha256 it recorded)."""
    for name, source in (("nfm", nfm), ("sae1", sae)):
        recorded = secondary.config.get(name, {}).get("weights_sha256")
        if recorded is not None and recorded != source.weights_sha256():
            raise UserError(f"{secondary.what} was trained on another {'NFM' if name == 'nfm' else 'stage-1 SAE'} "
                            f"than {source.what} (its weights fingerprint differs)")
