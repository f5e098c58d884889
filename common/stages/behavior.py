"""How a behavioral script opens (METHOD §10): its checkpoints read and checked against each other and, with any
earlier script's results it reads, before the LM is loaded; then the pipeline built as trained or as the original
evaluated; and its ``results.json`` written last."""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from common.analysis.decoders import read_results
from common.behavior.pipeline import Pipeline
from common.behavior.run import BehaviorRun
from common.config.concepts import BehaviorConfig, ToolConfig
from common.data.activations import NormStats
from common.errors import UserError
from common.models.loading import (
    StageInput,
    check_nfm_on_sae,
    check_secondary_on,
    load_nfm,
    load_sae,
    load_secondary,
)
from common.models.nfm import NFM
from common.models.sae import TopKSAE
from common.models.settings import EvalSettings, original_settings, trained_settings
from common.stages.finish import write_results
from common.stages.opening import Opened, SourcesOnly, open_stage
from common.store.fingerprints import git_commit

log = logging.getLogger(__name__)


@dataclass
class BehaviorInputs:
    """The checkpoints of a behavioral script, checked against each other, and how they are evaluated."""

    sources: list[StageInput]
    settings: EvalSettings
    sae: TopKSAE
    norm: NormStats
    nfm: NFM
    secondary: TopKSAE | None = None
    secondary_norm: NormStats | None = None


def read_behavior_inputs(cfg: BehaviorConfig, secondary: bool) -> BehaviorInputs:
    sae, norm, sae_source = load_sae(cfg.sae1_model_path)
    nfm, nfm_source = load_nfm(cfg.nfm_model_path)
    check_nfm_on_sae(nfm_source, sae, sae_source, norm)
    if cfg.original_eval:
        settings = original_settings(sae.k, pooling="sum")
    else:
        settings = trained_settings(nfm_source.config["sae_k"], nfm_source.config["top_n_features"])
    inputs = BehaviorInputs([sae_source, nfm_source], settings, sae, norm, nfm)
    if secondary:
        second, second_norm, second_source = load_secondary(cfg.interaction_sae_path)
        check_secondary_on(second_source, nfm_source, sae_source)
        if second.d_model != nfm.embed_dim:
            raise UserError(f"{second_source.what} decomposes {second.d_model}-wide vectors, but the NFM's interaction "
                            f"vectors are {nfm.embed_dim} wide")
        inputs.sources.append(second_source)
        inputs.secondary, inputs.secondary_norm = second, second_norm
    return inputs


def open_run(cfg: BehaviorConfig, secondary: bool = True, lm_dtype: torch.dtype | None = None,
             check_more: Callable[[list[StageInput]], None] | None = None) -> BehaviorRun:
    """Every check before anything is written (``check_more``: a script's own inputs, checked against the
    checkpoints before the LM is loaded), then the LM and the pipeline."""

    def read_inputs() -> BehaviorInputs:
        inputs = read_behavior_inputs(cfg, secondary)
        if check_more is not None:
            check_more(inputs.sources)
        return inputs

    opened, inputs = open_stage(cfg, read_inputs, lm_dtype)
    device = opened.rt.device
    pipeline = Pipeline(inputs.sae.to(device), inputs.norm.to(device), inputs.nfm.to(device), inputs.settings,
                        opened.rt.decode, None if inputs.secondary is None else inputs.secondary.to(device),
                        None if inputs.secondary_norm is None else inputs.secondary_norm.to(device))
    patch = cfg.patch if getattr(cfg, "patch", None) else ("replace" if cfg.original_eval else "delta")
    return BehaviorRun(cfg, opened.rt, opened.lm, pipeline, inputs.sources, opened.out, opened.patch_layer,
                       int(opened.lm.adds_bos), patch, opened.record)


def open_tool(cfg: ToolConfig, sources: Callable[[], list[StageInput]] = list,
              lm_dtype: torch.dtype | None = torch.float32) -> tuple[Opened, list[StageInput]]:
    """A debugging tool of part13 (13b, 13c, 13d): its checkpoints read and checked against the LM before anything is
    written, the LM in fp32 (what a splice costs is small), and the run's record."""
    opened, inputs = open_stage(cfg, lambda: SourcesOnly(sources()), lm_dtype)
    return opened, inputs.sources


def tool_record(cfg: ToolConfig, opened: Opened, analysis: str, sources: list[StageInput]) -> dict[str, Any]:
    """What a tool's results.json opens with: the analysis, the LM's provenance, the inputs, the config, the commit."""
    return {"analysis": analysis, **opened.record, "inputs": {s.flag.lstrip("-"): s.record() for s in sources},
            "config": dataclasses.asdict(cfg), "git_commit": git_commit()}


def read_earlier(folder: str, flag: str, analysis: str, sources: list[StageInput]) -> dict[str, Any]:
    """An earlier behavioral script's ``results.json``, refused when it holds another analysis or was made with
    other checkpoints than ``sources`` (by the weights sha256 it recorded)."""
    results = read_results(folder, flag, analysis)
    for source in sources:
        recorded = results["inputs"].get(source.flag.lstrip("-"), {}).get("weights_sha256")
        if recorded != source.record()["weights_sha256"]:
            raise UserError(f"{flag} {folder} was made with another {source.what}")
    return results


def finish(run: BehaviorRun, results: dict[str, Any], plot: Callable[[Path], None]) -> dict[str, Any]:
    """Plots, then ``results.json`` last, holding the folder's lock."""
    with run.out.writing(clear=run.cfg.overwrite):
        plot(run.out.path)
        write_results(run.out.path, results)
    return results


