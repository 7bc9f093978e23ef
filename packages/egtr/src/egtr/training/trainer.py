"""The training loop: accumulation, AMP, DDP, validation, best checkpoint, continuation, resume.

One optimizer step consumes ``train.effective_batch`` images as ``world_size x accumulation``
micro-batches of ``train.batch_size``; each micro-batch's loss is normalised within it and the
gradients are averaged over micro-batches and processes. Phases: ``main`` (``train.epochs`` at the
configured learning rates) then ``continuation`` (up to ``train.continuation_epochs`` from the best
validation checkpoint at ``continuation_lr_factor`` x the rates), each with early stopping.

Output directory: ``config.yaml`` (the resolved configuration), ``metrics.jsonl``,
``checkpoints/last.pt`` (everything needed to resume exactly), ``best/`` (the model with the lowest
validation loss, ``save_pretrained`` format, plus ``best.json``) and ``final/`` (the last weights).
Files are replaced atomically and model directories swapped in whole, so an interrupted run never
leaves half a file; a resumed run drops the metrics records written after its checkpoint.

Under ``torchrun`` the process group is joined through :mod:`vl_core.distributed` (NCCL for CUDA
devices, gloo on the CPU).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from egtr.data.base import Target
from egtr.modeling import EGTRForSceneGraphGeneration
from egtr.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from egtr.training.config import ConfigError, TrainingConfig, save_config
from egtr.training.losses import (
    CriterionOutput,
    LossWeights,
    RelationSampling,
    SceneGraphCriterion,
)
from egtr.training.matcher import HungarianMatcher
from egtr.training.metrics import MetricsLog
from egtr.training.optim import PhaseSchedule, build_optimizer
from egtr.training.sampler import GlobalBatchSampler, SeededDataset, ShardSampler
from vl_core.devices import resolve_device
from vl_core.distributed import Dist, device_for_rank, from_environment, setup_process_group
from vl_core.files import atomic_rewrite_rows, write_json

logger = logging.getLogger(__name__)

Batch = tuple[Tensor, Tensor, Sequence[Mapping[str, Any]]]
CollateFn = Callable[[Any], Batch]
PHASES = ("main", "continuation")


def build_criterion(config: TrainingConfig) -> SceneGraphCriterion:
    """The criterion of ``config``; returns a `SceneGraphCriterion` (relations only in stage
    ``"egtr"``)."""
    m, loss = config.matcher, config.loss
    matcher = HungarianMatcher(
        m.class_cost, m.bbox_cost, m.giou_cost, loss.focal_alpha, loss.focal_gamma
    )
    return SceneGraphCriterion(
        matcher,
        LossWeights(loss.ce, loss.bbox, loss.giou, loss.rel, loss.connectivity),
        RelationSampling(
            loss.rel_negatives_ratio,
            loss.rel_nonmatching_ratio,
            loss.rel_negatives_largest,
            loss.rel_nonmatching_largest,
        ),
        relations=config.stage == "egtr",
        auxiliary=loss.auxiliary,
        focal_alpha=loss.focal_alpha,
        focal_gamma=loss.focal_gamma,
        smoothing_alpha=loss.smoothing_alpha,
    )


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` on ``device``; returns ``None`` for full precision."""
    if device.type != "cuda" or mode == "fp32":
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[mode]


@dataclass
class FitResult:
    """What a :meth:`Trainer.fit` call ended with."""

    global_step: int
    phase: str
    epoch: int
    finished: bool  # False when stopped by train.max_steps
    best_val_loss: float | None
    out_dir: Path
    val_history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _LoopState:
    phase: str = "main"
    epoch: int = 0  # epochs done in this phase
    epochs_total: int = 0  # epochs done over all phases (the data order's epoch key)
    step_in_epoch: int = 0
    global_step: int = 0
    best_val_loss: float | None = None
    bad_epochs: int = 0
    phase_stopped: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Trainer:
    """Trains an EGTR model (stage A or B) on any map-style data set following the batch contract.

    ``train_dataset[i]`` is ``(image [3, H, W], target)`` and ``collate_fn`` batches them into
    ``(pixel_values, pixel_mask, targets)`` (see :mod:`egtr.data`). Under ``torchrun`` every process
    builds the same ``Trainer``; the process group is joined here (NCCL for a CUDA device, gloo
    on the CPU) and each process takes the GPU of its local rank.

    Raises ``ValueError`` for an inconsistent configuration or an unavailable ``device``, and
    ``vl_core.distributed.DistributedError`` for an inconsistent ``torchrun`` environment.
    """

    def __init__(
        self,
        config: TrainingConfig,
        model: EGTRForSceneGraphGeneration,
        train_dataset: Dataset[Any],
        collate_fn: CollateFn,
        out_dir: str | os.PathLike[str],
        *,
        val_dataset: Dataset[Any] | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        config.validate()
        self.config = config
        self.out_dir = Path(out_dir)
        self.device = training_device(device, from_environment())
        self.dist: Dist = setup_process_group("nccl" if self.device.type == "cuda" else "gloo")
        t = config.train
        per_step = t.batch_size * self.dist.world_size
        if t.effective_batch % per_step:
            raise ConfigError(
                f"train.effective_batch ({t.effective_batch}) must be a multiple of "
                f"batch_size x processes ({t.batch_size} x {self.dist.world_size})"
            )
        self.accumulation = t.effective_batch // per_step
        model.to(self.device)  # type: ignore[arg-type]
        self.module = model
        self.detector_only = config.stage == "detector"
        if self.detector_only:  # the relation head takes no part in a detector-only forward
            self.module.relation_head.requires_grad_(False)
        self.criterion = build_criterion(config)
        self.collate_fn = collate_fn
        self.train_data = SeededDataset(train_dataset, t.seed)
        self.val_data = SeededDataset(val_dataset, t.seed) if val_dataset is not None else None
        self.sampler = GlobalBatchSampler(
            len(train_dataset),  # type: ignore[arg-type]
            t.batch_size,
            self.accumulation,
            self.dist.world_size,
            self.dist.rank,
            t.seed,
        )
        self.amp_dtype = resolve_amp(t.amp, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        if t.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        self.ddp: DistributedDataParallel | None = None
        if self.dist.sharded:
            self.ddp = DistributedDataParallel(
                self.module,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=t.find_unused_parameters,
            )
        self.state = _LoopState()
        self.optimizer = build_optimizer(self.module, t)
        self.schedule = PhaseSchedule(self.optimizer, 1.0)
        self.val_history: list[dict[str, Any]] = []
        self._log: MetricsLog | None = None
        self._window: dict[str, float] = {}
        self._window_steps = 0
        self._started = time.monotonic()

    # ------------------------------------------------------------------ public

    @property
    def checkpoint_path(self) -> Path:
        """``OUT/checkpoints/last.pt``: where the run's resumable state is written."""
        return self.out_dir / "checkpoints" / "last.pt"

    def fit(self, *, resume: bool = False) -> FitResult:
        """Train until both phases end (or ``train.max_steps``); returns a `FitResult`.

        ``resume`` continues from ``checkpoints/last.pt`` when it exists (and starts afresh when
        it does not); either way the metrics records written after that point are dropped.
        Raises ``ValueError`` when the checkpoint does not fit this run (another number of images
        per step) and ``FloatingPointError`` for a non-finite loss.
        """
        t = self.config.train
        if resume and self.checkpoint_path.is_file():
            self.load_state(load_checkpoint(self.checkpoint_path))
            self._info(
                f"resumed from {self.checkpoint_path} at step {self.state.global_step} "
                f"({self.state.phase}, epoch {self.state.epoch})"
            )
        else:
            _seed_everything(t.seed + self.dist.rank)
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.config, self.out_dir / "config.yaml")
            if resume:
                trim_metrics(
                    self.out_dir / "metrics.jsonl", self.state.global_step, len(self.val_history)
                )
            self._log = MetricsLog(self.out_dir / "metrics.jsonl", tensorboard=t.tensorboard)
        self._info(
            f"{self.config.stage} training: {self.dist.world_size} process(es) x batch "
            f"{t.batch_size} x accumulation {self.accumulation} = {t.effective_batch} images/step, "
            f"{self.sampler.steps_per_epoch} steps/epoch, device {self.device}"
        )
        finished = True
        try:
            while True:
                s = self.state
                limit = t.epochs if s.phase == "main" else t.continuation_epochs
                if s.epoch >= limit or s.phase_stopped:
                    if s.phase == "main" and t.continuation_epochs > 0:
                        self._begin_continuation()
                        self.save_checkpoint()
                        continue
                    break
                if not self._train_epoch():
                    finished = False
                    break
                self._end_epoch()
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None
        if finished and self.dist.is_main:
            save_model_directory(self.module, self.out_dir / "final")
        self.dist.barrier()
        return FitResult(
            self.state.global_step,
            self.state.phase,
            self.state.epoch,
            finished,
            self.state.best_val_loss,
            self.out_dir,
            list(self.val_history),
        )

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean validation loss per image (and its components), over all processes.

        The relation BCE covers every entry here (no sampling), as the reference's validation loss.
        Returns ``{"loss": ..., <component>: ...}``. Raises ``ValueError`` when the trainer has
        no validation data set.
        """
        if self.val_data is None:
            raise ValueError("no validation data set")
        t = self.config.train
        sampler = ShardSampler(
            len(self.val_data),
            t.val_batch_size or t.batch_size,
            self.dist.world_size,
            self.dist.rank,
        )
        loader = self._loader(self.val_data, sampler, -1)
        self.module.train(False)
        names: list[str] | None = None
        sums: Tensor | None = None
        count = 0
        try:
            for pixel_values, pixel_mask, targets in loader:
                result = self._forward(self.module, pixel_values, pixel_mask, targets, sample=False)
                values = _stack(result)
                names = names or ["loss", *result.components]
                sums = values * len(targets) if sums is None else sums + values * len(targets)
                count += len(targets)
        finally:
            self.module.train()
        # ranks without a batch still take part in the reduction
        if names is None:
            names = self._component_names()
        if sums is None:
            sums = torch.zeros(len(names), device=self.device)
        totals = self.dist.all_reduce_sum(torch.cat([sums, sums.new_tensor([count])]))
        images = max(float(totals[-1]), 1.0)
        return {name: float(v) / images for name, v in zip(names, totals[:-1], strict=True)}

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs; returns tensors and plain containers only."""
        return {
            "model": self.module.state_dict(),
            "model_config": self.module.config.to_json_string(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "loop": self.state.as_dict(),
            "global_batch": self.sampler.global_batch,
            "world_size": self.dist.world_size,
            "training_config": self.config.to_dict(),
            "val_history": list(self.val_history),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (the RNG states by rank, when the world size is the same).

        Raises ``ValueError`` when the checkpoint used another number of images per step.
        """
        if int(state["global_batch"]) != self.sampler.global_batch:
            raise ConfigError(
                f"the checkpoint was trained with {state['global_batch']} images per step, this "
                f"run uses {self.sampler.global_batch}: resume with the same train.effective_batch"
            )
        self.module.load_state_dict(state["model"])
        self.state = _LoopState(**state["loop"])
        self.optimizer = build_optimizer(self.module, self.config.train)
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule = PhaseSchedule(self.optimizer)
        self.schedule.load_state_dict(state["schedule"])
        if self.scaler.is_enabled() and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.val_history = list(state.get("val_history", []))
        rngs = state.get("rng")
        if rngs is not None and len(rngs) == self.dist.world_size:
            set_rng_state(rngs[self.dist.rank])
        else:
            logger.warning("checkpoint RNG states are for another world size; reseeding")
            _seed_everything(self.config.train.seed + self.dist.rank + self.state.global_step)

    def save_checkpoint(self) -> None:
        """Write ``checkpoints/last.pt`` atomically (all processes must call this)."""
        rngs = self.dist.all_gather(rng_state())
        if self.dist.is_main:
            save_checkpoint({**self.state_dict(), "rng": rngs}, self.checkpoint_path)
        self.dist.barrier()

    # ------------------------------------------------------------------ loop

    def _train_epoch(self) -> bool:
        """Train the rest of the current epoch; ``False`` if ``train.max_steps`` stopped it."""
        t, s = self.config.train, self.state
        self.sampler.set_epoch(s.epochs_total)
        self.sampler.set_start(s.step_in_epoch)
        steps = self.sampler.steps_per_epoch
        if t.max_steps is not None and s.global_step >= t.max_steps:
            return False
        batches = iter(self._loader(self.train_data, self.sampler, s.epochs_total))
        bar = _progress(
            steps,
            s.step_in_epoch,
            f"{s.phase} epoch {s.epoch}",
            enabled=t.progress and self.dist.is_main,
        )
        self.module.train()
        try:
            while s.step_in_epoch < steps:
                metrics = self._optimizer_step(batches)
                s.step_in_epoch += 1
                s.global_step += 1
                self._record_step(metrics)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{metrics['loss']:.4f}")
                if t.checkpoint_every and s.global_step % t.checkpoint_every == 0:
                    self.save_checkpoint()
                if t.max_steps is not None and s.global_step >= t.max_steps:
                    self.save_checkpoint()
                    return False
        finally:
            self._flush_metrics()
            if bar is not None:
                bar.close()
        return True

    def _optimizer_step(self, batches: Iterator[Batch]) -> dict[str, float]:
        model: nn.Module = self.ddp if self.ddp is not None else self.module
        sums: Tensor | None = None
        names: list[str] = []
        for micro in range(self.accumulation):
            pixel_values, pixel_mask, targets = next(batches)
            last = micro == self.accumulation - 1
            sync = contextlib.nullcontext() if self.ddp is None or last else self.ddp.no_sync()
            with sync:
                result = self._forward(model, pixel_values, pixel_mask, targets, sample=True)
                if not self.scaler.is_enabled() and not bool(torch.isfinite(result.loss)):
                    raise FloatingPointError(
                        f"non-finite loss at step {self.state.global_step + 1}: "
                        + ", ".join(f"{k}={float(v):.4g}" for k, v in result.components.items())
                    )
                scaled: Tensor = self.scaler.scale(result.loss / self.accumulation)
                torch.autograd.backward(scaled)
            values = _stack(result)
            names = ["loss", *result.components]
            sums = values if sums is None else sums + values
        assert sums is not None
        grad_norm = self._clip_and_step()
        totals = self.dist.all_reduce_sum(sums / self.accumulation) / self.dist.world_size
        metrics = {name: float(v) for name, v in zip(names, totals, strict=True)}
        metrics["grad_norm"] = grad_norm
        return metrics

    def _clip_and_step(self) -> float:
        params = [p for p in self.module.parameters() if p.requires_grad]
        self.scaler.unscale_(self.optimizer)
        clip = self.config.train.grad_clip
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip is not None else math.inf)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def _forward(
        self,
        model: nn.Module,
        pixel_values: Tensor,
        pixel_mask: Tensor,
        targets: Sequence[Mapping[str, Any]],
        *,
        sample: bool,
    ) -> CriterionOutput:
        non_blocking = self.device.type == "cuda"
        pixel_values = pixel_values.to(self.device, non_blocking=non_blocking)
        pixel_mask = pixel_mask.to(self.device, non_blocking=non_blocking)
        moved = [
            typing.cast(
                Target,
                {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in target.items()},
            )
            for target in targets
        ]
        autocast = (
            torch.autocast("cuda", dtype=self.amp_dtype)
            if self.amp_dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            outputs = model(
                pixel_values,
                pixel_mask,
                detector_only=self.detector_only,
                output_auxiliary=self.config.loss.auxiliary,
            )
        return self.criterion(outputs, moved, sample_relations=sample)

    def _end_epoch(self) -> None:
        t, s = self.config.train, self.state
        s.epoch += 1
        s.epochs_total += 1
        s.step_in_epoch = 0
        if self.val_data is not None and s.epoch % t.validate_every == 0:
            metrics = self.validate()
            improved = s.best_val_loss is None or metrics["loss"] < s.best_val_loss
            record = {
                "event": "val",
                "phase": s.phase,
                "epoch": s.epochs_total,
                "step": s.global_step,
                **metrics,
                "best": improved,
            }
            self.val_history.append(record)
            if self._log is not None:
                self._log.write(record)
            self._info(
                f"validation ({s.phase} epoch {s.epoch}): loss {metrics['loss']:.4f}"
                + (" (best)" if improved else "")
            )
            if improved:
                s.best_val_loss = metrics["loss"]
                s.bad_epochs = 0
                self._save_best(record)
            else:
                s.bad_epochs += 1
                if t.patience is not None and s.bad_epochs >= t.patience:
                    s.phase_stopped = True
                    self._info(
                        f"early stop of the {s.phase} phase: {s.bad_epochs} validations "
                        "without improvement"
                    )
        self.save_checkpoint()

    def _save_best(self, record: dict[str, Any]) -> None:
        if self.dist.is_main:
            save_model_directory(self.module, self.out_dir / "best", extra={"best.json": record})
        self.dist.barrier()

    def _begin_continuation(self) -> None:
        """Reload the best weights and restart the optimizer at the reduced learning rate."""
        s, t = self.state, self.config.train
        best = self.out_dir / "best" / "model.safetensors"
        if best.is_file():
            from safetensors.torch import load_file

            weights = load_file(str(best), device=str(self.device))
            missing, unexpected = self.module.load_state_dict(weights, strict=False)
            if unexpected or [k for k in missing if "num_batches_tracked" not in k]:
                raise RuntimeError(
                    f"best weights do not fit: missing {missing}, unexpected {unexpected}"
                )
            self._info(f"continuation from the best checkpoint (val loss {s.best_val_loss})")
        else:
            self._info("continuation from the current weights (no validation checkpoint)")
        self.optimizer = build_optimizer(self.module, t)
        self.schedule = PhaseSchedule(self.optimizer, t.continuation_lr_factor)
        s.phase, s.epoch, s.step_in_epoch, s.bad_epochs, s.phase_stopped = (
            "continuation",
            0,
            0,
            0,
            False,
        )

    # ------------------------------------------------------------------ helpers

    def _loader(self, data: Dataset[Any], sampler: Any, epoch_key: int) -> DataLoader[Any]:
        t = self.config.train
        workers = self.config.data.num_workers
        return DataLoader(
            data,
            batch_sampler=sampler,
            collate_fn=self.collate_fn,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            # an explicit generator keeps the global RNG untouched by loader creation
            generator=torch.Generator().manual_seed(t.seed + epoch_key + 1),
            persistent_workers=False,
        )

    def _record_step(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self._window[key] = self._window.get(key, 0.0) + value
        self._window_steps += 1
        if self._window_steps >= self.config.train.log_every:
            self._flush_metrics()

    def _flush_metrics(self) -> None:
        """Write the mean of the steps since the last training record (if any)."""
        s = self.state
        if not self._window_steps:
            return
        averaged = {k: v / self._window_steps for k, v in self._window.items()}
        self._window, self._window_steps = {}, 0
        if self._log is not None:
            self._log.write(
                {
                    "event": "train",
                    "phase": s.phase,
                    "epoch": s.epochs_total,
                    "step": s.global_step,
                    **averaged,
                    "lr": self.schedule.learning_rates(),
                    "time": round(time.monotonic() - self._started, 3),
                }
            )

    def _component_names(self) -> list[str]:
        names = ["loss", "ce", "bbox", "giou"]
        if self.config.loss.auxiliary:
            for layer in range(self.module.config.decoder_layers - 1):
                names += [f"ce_{layer}", f"bbox_{layer}", f"giou_{layer}"]
        if not self.detector_only:
            names += ["rel", "connectivity"]
        return names

    def _info(self, message: str) -> None:
        if self.dist.is_main:
            logger.info(message)


def _stack(result: CriterionOutput) -> Tensor:
    values = [result.loss.detach(), *(v.detach() for v in result.components.values())]
    return torch.stack([v.float() for v in values])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _progress(total: int, initial: int, desc: str, *, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)


def training_device(device: str | torch.device | None, info: Dist) -> torch.device:
    """The device of this process: ``device`` (``None``/``"auto"``: CUDA when available), a
    sharded CUDA run spread over the GPUs by local rank; selected as the current CUDA device.

    Returns the ``torch.device``; raises ``ValueError`` for an unknown or unavailable device.
    """
    requested = "auto" if device is None else str(device)
    chosen = resolve_device(device_for_rank(requested, info))
    if chosen.type == "cuda":
        if chosen.index is None:
            chosen = torch.device("cuda", info.local_rank % max(torch.cuda.device_count(), 1))
        torch.cuda.set_device(chosen)
    return chosen


def save_model_directory(
    model: EGTRForSceneGraphGeneration, target: Path, *, extra: Mapping[str, Any] | None = None
) -> Path:
    """``model.save_pretrained`` (plus ``extra`` JSON files) into a new directory beside
    ``target``, then swapped in for it, so ``target`` is never a half-written model.

    Returns ``target``; raises ``OSError`` when the directory cannot be written.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        model.save_pretrained(staging)
        for name, data in (extra or {}).items():
            write_json(staging / name, data)
        if target.exists():
            retired = Path(
                tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent)
            )
            os.replace(target, retired / target.name)
            os.replace(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def trim_metrics(path: Path, global_step: int, validations: int) -> None:
    """Drop what a resumed run will write again from the metrics log ``path``: training records
    after ``global_step``, validation records after the first ``validations``, a torn last line.

    Returns nothing (a missing log stays missing); raises ``OSError`` when it cannot be rewritten.
    """
    if not path.is_file():
        return
    kept: list[str] = []
    seen_val = 0
    changed = False
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            changed = True  # an interrupted write
            continue
        if not isinstance(record, dict):
            changed = True
            continue
        if record.get("event") == "val":
            seen_val += 1
            keep = seen_val <= validations
        else:
            keep = int(record.get("step", 0)) <= global_step
        if keep:
            kept.append(line)
        else:
            changed = True
    if changed:
        atomic_rewrite_rows(path, kept)
