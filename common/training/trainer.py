"""The one training loop every trained stage uses: Adam, the linear-decay schedule, clipping, validation,
best-model selection, periodic resumable checkpoints (METHOD §1, §5b, §9)."""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from common.config.concepts import TrainConfig
from common.errors import UserError
from common.runtime.distributed import ONE, World
from common.runtime.fp16_emulation import fp16_products
from common.runtime.regimes import autocast, param_dtype
from common.store.stage_files import RESUME_FILE, load_resume_state, write_resume_state
from common.training.flushed_adam import FlushedAdam

log = logging.getLogger(__name__)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear decay from 1 to ``final_lr_fraction``, then flat."""
    decay_steps = cfg.original_decay_steps if cfg.schedule == "original" else int(cfg.decay_fraction * cfg.train_steps)
    if cfg.schedule not in ("paper", "original") or decay_steps is None:
        raise UserError("--schedule must be 'paper' or 'original' (the latter needs its decay step count), "
                        f"got {cfg.schedule!r}")
    if decay_steps <= 0 or step >= decay_steps:
        return cfg.final_lr_fraction
    return 1.0 - (1.0 - cfg.final_lr_fraction) * step / decay_steps


class BatchSource(Protocol):
    """Deterministic in the step, so a resumed run sees exactly the batches an uninterrupted one would."""

    def batch(self, step: int) -> tuple[Tensor, ...] | None: ...


def make_adam(params: list[nn.Parameter], cfg: TrainConfig, precision: str) -> torch.optim.Adam:
    """Fused Adam (8x the for-loop over the joint model on the CPU); the original's plain Adam for faithful-fp16;
    with ``--adam_flush_fp16_underflow`` Adam whose second moment underflows as fp16's would (``FlushedAdam``)."""
    kwargs = dict(lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)
    if cfg.adam_flush_fp16_underflow:
        if precision == "faithful-fp16":
            raise UserError("--adam_flush_fp16_underflow imitates fp16's Adam in fp32: under --precision "
                            "faithful-fp16 the second moment underflows by itself; choose one")
        return FlushedAdam(params, **kwargs)
    if precision == "faithful-fp16":
        return torch.optim.Adam(params, foreach=False, **kwargs)
    return torch.optim.Adam(params, fused=True, **kwargs)


class Trainer:
    """Runs ``loss_fn`` over ``batches`` from step 0 (or the resume step) to the planned or stop step.

    ``loss_fn(model, batch) -> (loss, logs)``; ``validate(model) -> metrics`` whose ``loss`` picks the best model,
    which saves itself (``model.save``). ``seed`` seeds the global generator (dropout) when a run starts; a resumed run
    restores it instead. Resume state is one atomic file.

    Under torchrun (``world``) every rank steps on its share of the batch and the gradients are averaged over the
    ranks before the clip, so every rank takes the one step a single process would (up to the order of the float
    sums). Not ``DistributedDataParallel``: the SAE's gradient is one tied matrix, complete only at the end of the
    backward, so DDP's buckets would have nothing to overlap, and the trainer keeps the model itself for validation
    and saving. Only rank 0 validates and writes the best model and the resume state; the others wait for it at the
    next step's all-reduce.
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        out_dir: Path,
        device: torch.device,
        precision: str,
        loss_fn: Callable[[nn.Module, tuple[Tensor, ...]], tuple[Tensor, dict[str, Tensor]]],
        batches: BatchSource,
        validate: Callable[[nn.Module], dict[str, float]],
        seed: int = 0,
        world: World = ONE,
    ) -> None:
        self.model = model.to(device=device, dtype=param_dtype(precision))
        self.cfg, self.out_dir, self.device, self.precision = cfg, Path(out_dir), device, precision
        self.loss_fn, self.batches, self.validate, self.seed = loss_fn, batches, validate, seed
        self.world = world
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = make_adam(self.params, cfg, precision)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, cfg))
        self.step = 0
        self.best_val = math.inf
        self.history: dict[str, list[dict]] = {"train": [], "val": []}

    @property
    def end_step(self) -> int:
        stop = self.cfg.stop_at_step
        return self.cfg.train_steps if stop is None else min(stop, self.cfg.train_steps)

    def save_resume(self) -> None:
        if not self.world.is_main:
            return
        state = {
            "step": self.step,
            "best_val": self.best_val,
            "history": json.dumps(self.history),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
        }
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        write_resume_state(self.out_dir, state)

    def load_resume(self) -> bool:
        state = load_resume_state(self.out_dir)
        if state is None:
            return False
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError) as err:
            reason = str(err).strip().splitlines()[-1].strip() if str(err).strip() else type(err).__name__
            raise UserError(f"{self.out_dir / RESUME_FILE} was written by a run of another configuration ({reason}): "
                            "resume with that run's settings, or start again with --overwrite") from None
        self.step, self.best_val = int(state["step"]), float(state["best_val"])
        self.history = json.loads(state["history"])
        torch.set_rng_state(state["rng_cpu"])
        if "rng_cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)
        log.info("resumed from step %d", self.step)
        return True

    def save_best(self) -> None:
        self.model.save(self.out_dir, step=self.step)

    def run_validation(self) -> None:
        if not self.world.is_main:
            return
        self.model.eval()
        with torch.no_grad(), autocast(self.precision, self.device):
            metrics = self.validate(self.model)
        self.history["val"].append({"step": self.step, **metrics})
        if metrics["loss"] < self.best_val:
            self.best_val = metrics["loss"]
            self.save_best()
        log.info("step %d validation %s", self.step, {k: round(v, 5) for k, v in metrics.items()})

    def train_step(self, batch: tuple[Tensor, ...]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """One optimizer step (forward, backward, clip, Adam, schedule): the step ``fit`` runs and benchmarks time."""
        self.model.train()
        with autocast(self.precision, self.device):
            loss, logs = self.loss_fn(self.model, batch)
        self.optimizer.zero_grad(set_to_none=True)
        with fp16_products(self.precision, self.device):  # the backward's products too (autocast leaves them be)
            loss.backward()
        self.world.average_(p.grad for p in self.params if p.grad is not None)
        grad_norm = self.clip_gradients()
        self.optimizer.step()
        self.scheduler.step()
        return loss, grad_norm, logs

    def clip_gradients(self) -> Tensor:
        """``clip_grad_norm_`` to ``grad_clip``, returning the norm before clipping.

        Where the norm is a host value (the CPU) the rescaling pass is skipped when its factor would be 1, as it
        nearly always is once training settles: at the paper's shapes that pass reads and writes 1.3 GB a step.
        The result is bit-identical; on a GPU the test would cost a synchronization, so it always rescales.
        """
        total_norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        if self.device.type != "cpu" or bool(self.cfg.grad_clip / (total_norm + 1e-6) < 1.0):
            torch.nn.utils.clip_grads_with_norm_(self.params, self.cfg.grad_clip, total_norm)
        return total_norm

    def fit(self, resume: bool = False) -> dict[str, list[dict]]:
        if not resume:
            torch.manual_seed(self.seed)
        elif not self.load_resume():
            log.info("no resume state in %s: starting from step 0", self.out_dir)
            torch.manual_seed(self.seed)
        with torch.no_grad():
            self.world.broadcast_(self.params)  # the ranks start from the same weights, whatever built them
        running: dict[str, Tensor] = {}
        running_steps = 0
        with tqdm(total=self.end_step, initial=self.step, desc="train", unit="step") as bar:
            while self.step < self.end_step:
                batch = self.batches.batch(self.step)
                if batch is None:
                    log.info("the text ended at step %d of %d", self.step, self.end_step)
                    break
                loss, grad_norm, logs = self.train_step(batch)
                self.step += 1
                bar.update(1)
                # accumulate on the device: reading a value every step would force a sync per step on a GPU
                for name, value in {"loss": loss.detach(), "grad_norm": grad_norm.detach(), **logs}.items():
                    running[name] = running.get(name, 0) + value.detach().float()
                running_steps += 1
                if self.step % self.cfg.log_every == 0 or self.step == self.end_step:
                    self.world.average_(running.values())  # each rank's loss is its share's: the batch's is their mean
                    entry = {name: float(total) / running_steps for name, total in running.items()}
                    if not all(math.isfinite(v) for v in entry.values()):
                        raise UserError(f"training diverged at step {self.step} (non-finite loss); "
                                        "try --precision fp32 or a lower --lr")
                    self.history["train"].append({"step": self.step, "lr": self.scheduler.get_last_lr()[0], **entry})
                    bar.set_postfix(loss=f"{entry['loss']:.4g}")
                    running, running_steps = {}, 0
                if self.step % self.cfg.val_every == 0 or self.step == self.end_step:
                    self.run_validation()
                if self.step % self.cfg.checkpoint_every == 0:
                    self.save_resume()
        if not self.history["val"] or self.history["val"][-1]["step"] != self.step:
            self.run_validation()
        self.save_resume()
        return self.history
