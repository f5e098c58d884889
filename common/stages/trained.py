"""The one shape of every trained stage (1, 2, 3, 5): settings and inputs checked → the LM opened → data prepared →
the output directory started → trained → the best model reloaded through its own class → evaluated → timed →
plotted → finished. A stage script subclasses ``TrainedStage`` and declares only what differs: its config, inputs,
data, model, evaluation and table."""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from common.config.concepts import TrainedStageConfig
from common.config.presets import stage_name
from common.data.activations import NORM_STATS_FILE, NormStats
from common.errors import UserError
from common.lm.model import LoadedLM
from common.models.loading import StageInput
from common.plots import plot_training_history
from common.runtime.context import Runtime
from common.runtime.distributed import split_record
from common.runtime.regimes import param_dtype
from common.stages.finish import write_metrics
from common.stages.opening import SourcesOnly, open_stage, stage_config, start_output_dir
from common.store.lock import OutputDir
from common.training.trainer import BatchSource, Trainer

log = logging.getLogger(__name__)
CURVES_FILE = "training_curves.png"


@dataclass
class StageData:
    """What a stage prepared before training: its batches, objective and validation, and what to record."""

    batches: BatchSource
    loss_fn: Callable[[nn.Module, tuple[Tensor, ...]], tuple[Tensor, dict[str, Tensor]]]
    validate: Callable[[nn.Module], dict[str, float]]
    norm: NormStats  # saved as norm_stats.safetensors: the z-score stats of the model's own input
    record: dict[str, Any]  # config.json "data": the text, the rows, the chunks
    extra: dict[str, Any] = field(default_factory=dict)  # more config.json entries (shapes, inputs' fingerprints)
    extra_stats: dict[str, NormStats] = field(default_factory=dict)  # more stats files, by file name
    train_steps: int | None = None  # the planned steps when the data decides them (streamed stages)
    load_seconds: Callable[[], float] = lambda: 0.0  # time spent loading data so far, inside training or not
    ranks: list[dict[str, Any]] = field(default_factory=list)  # what each rank did (metrics.json "ranks")


@dataclass
class StageRun:
    """The run as the stage's hooks see it."""

    cfg: TrainedStageConfig
    rt: Runtime
    lm: LoadedLM
    record: dict[str, Any]  # model id, fingerprint, layer, width: the provenance every output carries
    out: Path
    inputs: list[StageInput]
    steps: int = 0  # the steps trained, once training is over


class TrainedStage:
    """Subclass and set ``config_class`` (which names the stage in ``common.registry``) and ``description``; override
    the hooks."""

    config_class: type[TrainedStageConfig]
    description: str

    def __init__(self, argv: list[str] | None = None) -> None:
        self.name = stage_name(self.config_class)
        self.cfg = stage_config(self.config_class, self.description, argv)

    # ---- hooks -----------------------------------------------------------------------------------------------
    def check(self) -> None:
        """Settings checks that need nothing loaded."""

    def load_inputs(self) -> list[StageInput]:
        """Earlier stages' directories, loaded and checked against each other (each is checked against the LM)."""
        return []

    def prepare(self, run: StageRun) -> StageData:
        raise NotImplementedError

    def build(self, run: StageRun) -> nn.Module:
        raise NotImplementedError

    def title(self) -> str:
        raise NotImplementedError

    def evaluate(self, run: StageRun, data: StageData, best: nn.Module) -> dict[str, Any]:
        raise NotImplementedError

    def print_table(self, metrics: dict[str, Any], out: Path) -> None:
        raise NotImplementedError

    # ---- the one order ---------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self.check()
        opened, inputs = open_stage(cfg, lambda: SourcesOnly(self.load_inputs()))
        rt, out_dir = opened.rt, opened.out
        run = StageRun(cfg, rt, opened.lm, opened.record, out_dir.path, inputs.sources)
        try:
            data = self.prepare(run)
        except UserError as err:  # bad data (a NaN activation, a too-short text) is named with the stage it stopped
            raise UserError(f"stage {self.name}: {err}") from None
        if data.train_steps is not None and cfg.train_steps is None:
            run.cfg = self.cfg = cfg = dataclasses.replace(cfg, train_steps=data.train_steps)
        torch.manual_seed(cfg.seed)  # the model's init from the run's seed, whatever ran before it
        model = self.build(run)
        extra = {**data.extra, "model": model.record(), "data": {**data.record, **split_record(rt.world, data.ranks)},
                 "precision_regime": rt.precision, "decode_path": rt.decode}
        with out_dir.writing():
            return self._train(run, data, model, out_dir, extra)

    def _train(self, run: StageRun, data: StageData, model: nn.Module, out_dir: OutputDir,
               extra: dict[str, Any]) -> dict[str, Any]:
        cfg, rt, out = self.cfg, run.rt, out_dir.path
        if rt.world.is_main:
            start_output_dir(out_dir, cfg, run.record, self.name, extra)
            data.norm.save(out / NORM_STATS_FILE)
            for file_name, stats in data.extra_stats.items():
                stats.save(out / file_name)
        rt.world.barrier()  # the others read a resume state only once rank 0 has checked (or cleared) the folder

        trainer = Trainer(model, cfg, out, rt.device, rt.precision, data.loss_fn, data.batches, data.validate, cfg.seed,
                          rt.world)
        loads_before = data.load_seconds()
        started = time.perf_counter()
        history = trainer.fit(resume=cfg.resume)
        run.steps = trainer.step
        if not rt.world.is_main:  # rank 0 evaluates and writes the outputs
            return {}
        train_seconds = max(time.perf_counter() - started - (data.load_seconds() - loads_before), 1e-9)

        best = type(model).load(out).to(rt.device, param_dtype(rt.precision)).eval()
        metrics = self.evaluate(run, data, best)
        metrics.update({
            "steps": trainer.step,
            "planned_steps": cfg.train_steps,
            "train_seconds": train_seconds,
            "train_rows_per_second": trainer.step * cfg.batch_size / train_seconds,
            "data_load_seconds": data.load_seconds(),
            "precision_regime": rt.precision,
            "decode_path": rt.decode,
            **split_record(rt.world, data.ranks),
            "history": history,
        })
        plot_training_history(history, out / CURVES_FILE, self.title())
        write_metrics(out, metrics)
        self.print_table(metrics, out)
        return metrics
