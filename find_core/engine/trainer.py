"""Multi-task training loop with exact resume, AMP, DDP, checkpoints and logs.

Two ways to mix the tasks (`train.mode`):
- `official` (FIND's recipe, official interface only): every step trains every task in one decoder
  forward over a batch of images that carry all their targets (official_data.py, official_step.py),
  with the official loss.
- `per_task`: every step trains ONE task, drawn with probability proportional to its weight from a
  generator seeded by (run seed, step). All ranks therefore draw the same task, a resumed run draws
  the same sequence, and each task keeps its own batch size and loss scale.

A checkpoint folder `OUT/checkpoints/step_NNNNNNN/` holds the model (find_core.checkpoint format:
model.safetensors + config.yaml, loadable by FindPipeline.from_checkpoint) plus the trainer state:
optimizer tensors and RNG states in trainer_state.safetensors, everything else (step, scheduler,
grad scaler, data positions) in trainer_state.json. Nothing is pickled. `OUT/checkpoints/LATEST`
names the newest folder.
"""
from __future__ import annotations

import csv
import json
import math
import os
import random
import shutil
import time
from collections import deque
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint import WEIGHTS, load_weights, save_checkpoint
from ..config import ConfigError
from ..model import FindModel
from ..tasks import registry
from . import distributed
from .batches import Batch, TaskData, derive_seed
from .config import OptimConfig, TrainConfig
from .criterion import TERMS, Criterion, LossOutput
from .feature_cache import FeatureCache
from .official_data import OfficialBatch, OfficialData
from .official_step import OfficialStep
from .train_state import load_optimizer, load_rng, optimizer_state, rng_state
from .vision_warmup import warm_up_vision

CHECKPOINTS = "checkpoints"
LATEST = "LATEST"
WARMUP = "vision_warmup"
STATE_TENSORS = "trainer_state.safetensors"
STATE_JSON = "trainer_state.json"
CLASS_TABLE = "official.class_table"
OFFICIAL = "official"          # the one "task" of train.mode official: all tasks at once
LOG_CSV = "train_log.csv"
LOG_COLUMNS = ("step", "task", "loss", *TERMS, "lr", "grad_norm", "seconds")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


# ---- pieces ---------------------------------------------------------------------------------------

def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device is '{name}' but CUDA is not available")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    return device


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters with weight decay, except norms, biases, embeddings and scalars."""
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for _, parameter in module.named_parameters(recurse=False):
            if not parameter.requires_grad or id(parameter) in seen:
                continue
            seen.add(id(parameter))
            (no_decay if isinstance(module, nn.Embedding) or parameter.ndim <= 1 else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.Optimizer:
    groups = parameter_groups(model, config.weight_decay)
    if config.name == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas))


def lr_factor(step: int, config: OptimConfig, total_steps: int) -> float:
    """Linear warm-up from warmup_factor to 1, then ×gamma at each milestone (fractions of the run)."""
    factor = 1.0
    if step < config.warmup_steps:
        alpha = step / config.warmup_steps
        factor = config.warmup_factor * (1 - alpha) + alpha
    decays = sum(step >= round(m * total_steps) for m in config.milestones)
    return factor * config.gamma ** decays


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest step folder of a run (None if it has none)."""
    folder = Path(out_dir) / CHECKPOINTS
    pointer = folder / LATEST
    if pointer.is_file():
        candidate = folder / pointer.read_text().strip()
        if (candidate / STATE_JSON).is_file():
            return candidate
    steps = sorted(p for p in folder.glob("step_*") if (p / STATE_JSON).is_file())
    return steps[-1] if steps else None


class TrainStep(nn.Module):
    """model + criterion as one module, so DistributedDataParallel sees the whole loss computation."""

    def __init__(self, model: FindModel, criterion: Criterion):
        super().__init__()
        self.model = model
        self.criterion = criterion

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        output: LossOutput = self.criterion(self.model, batch)
        return output.total, output.terms


# ---- the trainer --------------------------------------------------------------------------------

class Trainer:
    """Builds everything from a TrainConfig; `run()` trains to config.train.steps (or `stop_at`)."""

    def __init__(self, config: TrainConfig, out_dir: str | Path | None = None, resume: bool = False,
                 log: Callable[[str], None] = print):
        self.config = config
        self.out_dir = Path(out_dir or config.train.out_dir)
        run = config.train
        probe = resolve_device(run.device)
        self.dist = distributed.setup(probe.type)
        self.device = resolve_device(run.device, self.dist.local_rank)
        self._log = log if self.dist.is_main else (lambda message: None)
        self.precision = run.precision
        if self.device.type != "cuda" and run.precision != "fp32":
            self._log(f"note: train.precision {run.precision} applies on GPU only; running fp32 on {self.device}")
            self.precision = "fp32"
        if run.cpu_threads is not None:
            torch.set_num_threads(run.cpu_threads)
        _seed_everything(run.seed)

        model = FindModel(config.model_config())
        if config.init_checkpoint:
            load_weights(model, config.init_checkpoint)
        self.model = model.to(self.device)

        self.official = run.mode == "official"
        self.tasks = {OFFICIAL: None} if self.official else config.tasks.enabled()
        self.data: dict[str, TaskData | OfficialData] = {}
        self.streams: dict[str, distributed.ShardedStream] = {}
        self.local_batch: dict[str, int] = {}
        if self.official:
            self.local_batch[OFFICIAL] = self._per_process("official.batch_size", config.official.batch_size)
            self.data[OFFICIAL] = OfficialData(Path(config.data.root).expanduser(), config.data.split,
                                               model.config.vision.input_size, config.data, config.interactive,
                                               config.official, model.config.language.class_template)
            self.streams[OFFICIAL] = distributed.ShardedStream(len(self.data[OFFICIAL]), self.dist,
                                                               derive_seed(run.seed, 0x0FF1) & 0x7FFFFFFF)
        for name, task in ({} if self.official else self.tasks).items():
            self.local_batch[name] = self._per_process(f"tasks.{name}.batch_size", task.batch_size)
            self.data[name] = TaskData.open(name, config.task_root(name), config.task_split(name),
                                            model.config.vision.input_size, config.interactive, config.data,
                                            run.seed)
            self.streams[name] = distributed.ShardedStream(len(self.data[name]), self.dist,
                                                           derive_seed(run.seed, registry.index(name)) & 0x7FFFFFFF)

        checkpoint = latest_checkpoint(self.out_dir) if resume else None
        if checkpoint is None and config.vision_warmup.steps > 0:
            self._warm_up_vision(resume)

        cache = None
        if run.cache_features:
            if not model.config.vision.frozen:
                raise ConfigError("train.cache_features needs model.vision.frozen (cached features must not change)")
            if self.official and config.official.scale_jitter is not None:
                raise ConfigError("train.cache_features with official.scale_jitter: every jittered image is new, so "
                                  "the cache would only grow; turn one of them off")
            cache = FeatureCache(model, run.feature_cache_dir)
        self.criterion = None if self.official else Criterion(config.loss, cache)
        self.optimizer = build_optimizer(self.model, config.optim)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, config.optim, run.steps))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.step = 0
        self.history: list[dict[str, Any]] = []
        train_step = OfficialStep(self.model, config.official, cache) if self.official \
            else TrainStep(self.model, self.criterion)
        self.train_module = train_step
        if resume:
            if checkpoint is None:
                self._log(f"--resume: no checkpoint under {self.out_dir / CHECKPOINTS}; starting from step 0")
            else:
                self.load_state(checkpoint)
                self._log(f"resumed from {checkpoint} at step {self.step}")
        if self.dist.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.module: nn.Module = DistributedDataParallel(train_step, device_ids=device_ids,
                                                             find_unused_parameters=True)
        else:
            self.module = train_step
        self._writer = self._tensorboard() if self.dist.is_main else None

    def _per_process(self, key: str, batch_size: int) -> int:
        """Each process's share of a global batch size (config key `key`), which must split evenly."""
        if batch_size % self.dist.world_size:
            raise ConfigError(f"{key} {batch_size} is not divisible by the {self.dist.world_size} processes")
        return batch_size // self.dist.world_size

    def _warm_up_vision(self, resume: bool) -> None:
        """Run the vision warm-up (find_core.engine.vision_warmup) and keep its result in OUT/vision_warmup,
        which --resume reloads instead of warming up again."""
        folder = self.out_dir / WARMUP
        if resume and (folder / WEIGHTS).is_file():
            load_weights(self.model, folder)
            self._log(f"resumed the vision warm-up from {folder}")
            return
        warmup = self.config.vision_warmup
        local_batch = self._per_process("vision_warmup.batch_size", warmup.batch_size)
        data = self.data.get("generic") or TaskData.open(
            "generic", self.config.task_root("generic"), self.config.task_split("generic"),
            self.model.config.vision.input_size)
        warm_up_vision(self.model, data, warmup, local_batch, self.config.train.seed, self.device, self._log)
        if self.dist.is_main:
            save_checkpoint(self.model, folder)
        distributed.barrier()

    # ---- one step ---------------------------------------------------------------------------------
    def draw_task(self, step: int) -> str:
        if self.official:
            return OFFICIAL
        names = list(self.tasks)
        weights = np.array([self.tasks[n].weight for n in names], dtype=np.float64)
        rng = np.random.default_rng(derive_seed(self.config.train.seed, step, 0x7A5C))
        return names[int(rng.choice(len(names), p=weights / weights.sum()))]

    def next_batch(self, step: int, task: str) -> Batch | OfficialBatch:
        indices = self.streams[task].take(self.local_batch[task])
        seed = self.config.train.seed
        if task == OFFICIAL:
            batch = self.data[task].batch(indices, [derive_seed(seed, step, 0x0FF1, i) for i in indices])
            batch.step_seed = derive_seed(seed, step, 0x0FF2)
        else:
            batch = self.data[task].batch(indices, [derive_seed(seed, step, registry.index(task), i) for i in indices])
        batch.images = batch.images.to(self.device)
        return batch

    def train_step(self, batch: Batch | OfficialBatch) -> dict[str, Any]:
        """Forward, backward and update on one batch; returns the logged numbers."""
        self.module.train()
        autocast = torch.autocast(self.device.type, dtype=AMP_DTYPES[self.precision]) \
            if self.precision in AMP_DTYPES else nullcontext()
        self.optimizer.zero_grad(set_to_none=True)
        with autocast:
            total, terms = self.module(batch)
        if not torch.isfinite(total):
            raise FloatingPointError(f"step {self.step}: {batch.task} loss is {float(total)} "
                                     f"(terms {({k: float(v) for k, v in terms.items()})})")
        self.scaler.scale(total).backward()
        parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
        for parameter in parameters:  # same rule with and without DDP: an unused parameter gets a zero gradient
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
        self.scaler.unscale_(self.optimizer)
        clip = self.config.optim.clip_grad_norm
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, clip if clip is not None else math.inf)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        # each rank's loss is scaled so that the mean over ranks is the loss of the global batch
        values = distributed.global_mean(torch.stack([terms[t].float() if t in terms else total.new_zeros(()).float()
                                                      for t in TERMS]))
        return {"task": batch.task, "loss": float(values.sum()), **{t: float(values[i]) for i, t in enumerate(TERMS)},
                "lr": lr, "grad_norm": float(grad_norm)}

    # ---- the loop ---------------------------------------------------------------------------------
    def run(self, stop_at: int | None = None) -> Path | None:
        """Train until config.train.steps (or `stop_at` steps, as if interrupted there); returns the
        last checkpoint folder."""
        run = self.config.train
        end = run.steps if stop_at is None else min(stop_at, run.steps)
        self._prepare_log()
        durations: deque[float] = deque(maxlen=20)
        recent: dict[str, deque[float]] = {name: deque(maxlen=20) for name in self.tasks}
        last_saved = None
        while self.step < end:
            started = time.perf_counter()
            task = self.draw_task(self.step)
            row = self.train_step(self.next_batch(self.step, task))
            self.step += 1
            durations.append(time.perf_counter() - started)
            row = {"step": self.step, **row, "seconds": durations[-1]}
            self.history.append(row)
            recent[task].append(row["loss"])
            self._write_log(row)
            if self.step % run.log_every == 0 or self.step == end or self.step == 1:
                eta = (run.steps - self.step) * (sum(durations) / len(durations))
                running = " ".join(f"{n} {sum(v) / len(v):.3f}" for n, v in recent.items() if v)
                self._log(f"step {self.step}/{run.steps} | {task} {row['loss']:.4f} | running: {running} | "
                          f"lr {row['lr']:.2e} | {durations[-1]:.2f} s/step | ETA {_clock(eta)}")
            if self.step % run.checkpoint_every == 0 or self.step == end:
                last_saved = self.save()
        return last_saved or latest_checkpoint(self.out_dir)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # ---- checkpoints ------------------------------------------------------------------------------
    def save(self) -> Path:
        """Write a checkpoint of the current step (rank 0 only; the others wait)."""
        folder = self.out_dir / CHECKPOINTS / f"step_{self.step:07d}"
        if self.dist.is_main:
            temporary = folder.with_name(folder.name + ".tmp")
            shutil.rmtree(temporary, ignore_errors=True)
            save_checkpoint(self.model, temporary)
            tensors, meta = self.state()
            save_file(tensors, str(temporary / STATE_TENSORS))
            (temporary / STATE_JSON).write_text(json.dumps(meta, indent=1))
            self.config.to_yaml(temporary / "train_config.yaml")
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(temporary, folder)
            pointer = folder.parent / f".{LATEST}.tmp"
            pointer.write_text(folder.name)
            os.replace(pointer, folder.parent / LATEST)
            self._prune()
        distributed.barrier()
        return folder

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        optimizer_tensors, optimizer_meta = optimizer_state(self.optimizer)
        rng_tensors, rng_meta = rng_state()
        meta = {
            "step": self.step,
            "world_size": self.dist.world_size,
            "optimizer": optimizer_meta,
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),                # {} unless fp16 on GPU
            "streams": {name: stream.state_dict() for name, stream in self.streams.items()},
            "rng": rng_meta,
        }
        tensors = {**optimizer_tensors, **rng_tensors}
        table = getattr(self.train_module, "class_table", None)
        if table is not None:   # the official recipe's kept class table
            tensors[CLASS_TABLE] = table.detach().cpu().contiguous()
        return tensors, meta

    def load_state(self, folder: Path) -> None:
        meta = json.loads((folder / STATE_JSON).read_text())
        if meta["world_size"] != self.dist.world_size:
            raise ConfigError(f"checkpoint {folder} was written by {meta['world_size']} processes; resume it with "
                              f"the same number (now {self.dist.world_size}) so the data order continues exactly")
        missing = sorted(set(self.streams) - set(meta["streams"]))
        if missing:
            raise ConfigError(f"checkpoint {folder} has no data position for tasks {missing}: the task mix changed")
        load_weights(self.model, folder)
        tensors = load_file(str(folder / STATE_TENSORS))
        load_optimizer(self.optimizer, tensors, meta["optimizer"])   # load_state_dict casts to each parameter's device
        self.scheduler.load_state_dict(meta["scheduler"])
        if meta["scaler"]:
            self.scaler.load_state_dict(meta["scaler"])
        for name, stream in self.streams.items():
            stream.load_state_dict(meta["streams"][name])
        load_rng(tensors, meta["rng"])
        if CLASS_TABLE in tensors and isinstance(self.train_module, OfficialStep):
            self.train_module.class_table = tensors[CLASS_TABLE].to(self.device)
        self.step = int(meta["step"])

    def _prune(self) -> None:
        keep = self.config.train.keep_checkpoints
        if keep:
            steps = sorted(p for p in (self.out_dir / CHECKPOINTS).glob("step_*") if not p.name.endswith(".tmp"))
            for old in steps[:-keep]:
                shutil.rmtree(old, ignore_errors=True)

    # ---- logs -------------------------------------------------------------------------------------
    def _prepare_log(self) -> None:
        """Start the CSV, or, after a resume, drop rows past the resumed step (they will be redone)."""
        if not self.dist.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / LOG_CSV
        rows = []
        if path.is_file():
            with path.open(newline="") as handle:
                rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= self.step]
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=LOG_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)

    def _write_log(self, row: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        with (self.out_dir / LOG_CSV).open("a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=LOG_COLUMNS, extrasaction="ignore").writerow(row)
        if self._writer is not None:
            for key in ("loss", *TERMS):
                self._writer.add_scalar(f"{row['task']}/{key}", row[key], row["step"])
            self._writer.add_scalar("lr", row["lr"], row["step"])

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return None
        return SummaryWriter(str(self.out_dir / "tensorboard"))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
