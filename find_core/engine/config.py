"""Training and evaluation configuration: dataclasses read from one YAML file with strict keys.

    model: tiny-test                  # preset name, a model YAML path, or an inline model mapping
    init_checkpoint: null             # optional weights to start from (a checkpoint folder)
    data: {root: data/synthetic, split: train}
    tasks:                            # per_task mode: how often a step trains that task; 0 / absent = off
      generic: {weight: 1, batch_size: 4}
      retrieval: {weight: 1, batch_size: 8, split: train}
    interactive: {max_objects: 4}     # how training clicks / boxes / scribbles are drawn
    vision_warmup: {steps: 0}         # segment classification first, for a vision side from scratch
    loss: {num_points: 1024}          # find_core.losses.LossConfig overrides
    optim: {lr: 1.0e-4, warmup_steps: 10}
    official: {batch_size: 8}         # train.mode official: the per-image draws (OfficialRecipeConfig)
    train: {steps: 100, seed: 0, precision: bf16, checkpoint_every: 50}
    eval: {split: val, max_images: 50}

Relative paths are taken from the current directory. A typo anywhere raises `ConfigError` naming
the dotted key, so a misspelt option never silently falls back to its default.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..checkpoint import load_model_yaml
from ..config import ConfigError, ModelConfig, build_dataclass, load_yaml_mapping
from ..data.find_bench import REFERENCE_VIEWS
from ..losses import LossConfig
from ..presets import preset_path
from ..tasks import registry

# The built-in tasks in task order (find_core.tasks.registry; a task registered at run time is in
# registry.names(), which the config sections and the trainer read).
TASKS = registry.names()
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class TaskConfig:
    """One task of the multi-task mix."""

    weight: float = 0.0            # relative probability that a step trains this task (0 = off)
    batch_size: int = 2            # GLOBAL batch: split evenly over the processes of a torchrun
    root: str | None = None        # dataset root; default data.root
    split: str | None = None       # dataset split; default data.split

    def __post_init__(self) -> None:
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) or self.weight < 0:
            raise ConfigError(f"task weight must be a number >= 0, got {self.weight!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"task batch_size must be an integer >= 1, got {self.batch_size!r}")
        self.weight = float(self.weight)


@dataclass
class TasksConfig:
    """`tasks:` — one TaskConfig per registered task, read and written as `tasks.<name>`."""

    entries: dict[str, TaskConfig] = field(default_factory=dict)   # missing tasks: TaskConfig() (off)

    def __post_init__(self) -> None:
        known = registry.names()
        unknown = sorted(set(self.entries) - set(known))
        if unknown:
            raise ConfigError(f"unknown keys {unknown}; allowed: {sorted(known)}")
        for name, entry in self.entries.items():
            if not isinstance(entry, TaskConfig):
                raise ConfigError(f"{name}: expected a TaskConfig, got {entry!r}")
        self.entries = {name: self.entries.get(name) or TaskConfig() for name in known}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config.tasks") -> "TasksConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
        known = registry.names()
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"{where}: unknown keys {unknown}; allowed: {sorted(known)}")
        return cls({name: build_dataclass(TaskConfig, value, f"{where}.{name}") for name, value in data.items()})

    def to_dict(self) -> dict[str, Any]:
        return {name: dataclasses.asdict(entry) for name, entry in self.entries.items()}

    def __getattr__(self, name: str) -> TaskConfig:
        entries = self.__dict__.get("entries")
        if entries is not None and name in entries:
            return entries[name]
        raise AttributeError(f"no task '{name}' in tasks; registered: {list(registry.names())}")

    def enabled(self) -> dict[str, TaskConfig]:
        """Tasks with a positive weight, in task order (the order draws index into)."""
        return {name: entry for name, entry in self.entries.items() if entry.weight > 0}


def _check_reference_view(view: str, section: str) -> None:
    if view not in REFERENCE_VIEWS:
        raise ConfigError(f"{section}.reference_view must be one of {REFERENCE_VIEWS}, got {view!r}")


@dataclass
class DataConfig:
    """Where the training data lives (layouts: see find_core.data)."""

    root: str = "data/synthetic"
    split: str = "train"
    captions_file: str = "dataset_coco.json"   # Karpathy captions, relative to the retrieval root
    refcoco_image_dir: str | None = None       # RefCOCOg images when not under its root (COCO train2014/)
    entity_json: str | None = None             # FIND-Bench entries (e.g. python -m training.find_bench's
    #                                            find_bench/entity_train.json), relative to the root;
    #                                            default annotations/entity_{split}.json
    reference_visual_prob: float = 0.5         # a phrase with a `reference` is given as an image this often
    reference_view: str = "image"              # a visual phrase's reference: the whole image (official) or "crop"

    def __post_init__(self) -> None:
        if not 0.0 <= self.reference_visual_prob <= 1.0:
            raise ConfigError(f"data.reference_visual_prob must lie in [0, 1], got {self.reference_visual_prob}")
        _check_reference_view(self.reference_view, "data")


@dataclass
class InteractiveConfig:
    """Training prompts for interactive segmentation, drawn from ground-truth masks.

    Each object gets one positive prompt of a kind drawn with the three probabilities, up to
    `max_extra_clicks` further positive clicks, and with `negative_prob` one negative click outside it.
    """

    max_objects: int = 4           # objects prompted per image (segments drawn at random)
    point_prob: float = 0.6
    box_prob: float = 0.2
    scribble_prob: float = 0.2
    max_extra_clicks: int = 2
    negative_prob: float = 0.3
    radius: int = 3                # clicks and scribbles are drawn this thick at image resolution

    def __post_init__(self) -> None:
        probs = (self.point_prob, self.box_prob, self.scribble_prob, self.negative_prob)
        if any(not 0.0 <= p <= 1.0 for p in probs):
            raise ConfigError(f"interactive probabilities must lie in [0, 1], got {probs}")
        if self.point_prob + self.box_prob + self.scribble_prob <= 0:
            raise ConfigError("interactive: point_prob + box_prob + scribble_prob must be > 0")
        if self.max_objects < 1 or self.max_extra_clicks < 0 or self.radius < 0:
            raise ConfigError("interactive: need max_objects >= 1, max_extra_clicks >= 0, radius >= 0")


@dataclass
class OptimConfig:
    """AdamW (FIND: lr 1e-4, weight decay 0.05) with linear warm-up and step decay."""

    name: str = "adamw"            # "adamw", or "sgd" (momentum) for experiments and gradient checks
    lr: float = 1e-4
    weight_decay: float = 0.05     # not applied to norms, biases, embeddings and logit_scale
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9          # sgd only
    warmup_steps: int = 10
    warmup_factor: float = 0.001   # lr starts at warmup_factor * lr and grows linearly
    milestones: tuple[float, ...] = (0.89, 0.96)  # fractions of train.steps where lr *= gamma
    gamma: float = 0.1
    clip_grad_norm: float | None = 1.0  # max global L2 norm of the gradients; null = no clipping

    def __post_init__(self) -> None:
        if self.name not in ("adamw", "sgd"):
            raise ConfigError(f"optim.name must be 'adamw' or 'sgd', got {self.name!r}")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_steps < 0 or not 0 < self.warmup_factor <= 1:
            raise ConfigError("optim: need lr > 0, weight_decay >= 0, warmup_steps >= 0, 0 < warmup_factor <= 1")
        if any(not 0 <= m <= 1 for m in self.milestones):
            raise ConfigError(f"optim.milestones are fractions of train.steps in [0, 1], got {self.milestones}")
        if self.clip_grad_norm is not None and self.clip_grad_norm <= 0:
            raise ConfigError(f"optim.clip_grad_norm must be > 0 or null, got {self.clip_grad_norm}")


VISUAL_SOURCES = ("own", "batch", "batch_nearest")
INTERLEAVE_VISUALS = ("reference", "own_stroke")   # EvalConfig.interleave_visual


@dataclass
class OfficialRecipeConfig:
    """`train.mode: official` — the per-image draws of the official mapper and training forward
    (configs/find/focalt_llama_lang.yaml; see find_core/engine/official_data.py and official_step.py)."""

    batch_size: int = 8                 # GLOBAL images per step, split over the processes
    max_grounding: int = 5              # GROUNDING.MAX_LEN: each image gets 1 .. max_grounding-1 phrases
    visual_prob: float = 0.5            # INTERLEAVE.VISUAL_PROB: an entity is given as a stroke this often
    # where a visual entity's stroke lies: "own" (upstream) on the entity's own instance; "batch" on a
    # random same-category instance in another image of the process's batch, "batch_nearest" on the one
    # nearest in mean colour (its own when no other image has one), as FIND-Bench's references give
    # visual entities: from another image (training/configs/visual_source/ measures them)
    visual_source: str = "own"
    # where the visual entities of the interleave-retrieval ITC lie: None reads the entries of the one
    # training forward (visual_source's strokes; upstream); a source moves them as visual_source does,
    # in a second "interleave" forward whose entry embeddings the ITC reads instead, so grounding keeps
    # its strokes while retrieval learns from references elsewhere, as FIND-Bench gives them
    # (training/configs/retrieval_visual_source.yaml measures it)
    retrieval_visual_source: str | None = None
    max_entities: int = 6               # the mapper keeps an entry's first 6 entities
    # large-scale jitter [min, max] (find_core/engine/scale_jitter.py; upstream's INPUT.MIN_SCALE /
    # MAX_SCALE, 0.1 / 2.0 of a 1024 px square; None: each image letterboxed whole, as the committed
    # runs before training/configs/scale_jitter.yaml trained)
    scale_jitter: list[float] | None = None
    # the share of training images that scale_jitter draws for (the rest letterboxed whole, as the
    # held-out set and upstream's evaluation see them); upstream jitters every image (1.0)
    scale_jitter_prob: float = 1.0
    spatial_max_iter: int = 1           # SPATIAL.MAX_ITER: 0..n gradient-free rounds add a corrective click
    conditional_attention: bool = True  # DYNAMICS.CONDITIONAL_ATTENTION in training forwards
    num_points: int = 12544             # loss / matching points per mask (fewer suit small mask maps)
    # the split names of the joined readers where they differ from data.split (COCO: panoptic train2017,
    # Karpathy captions "train,restval", RefCOCOg umd "train"); images are joined by COCO id
    captions_split: str | None = None
    refcoco_split: str | None = None
    entity_split: str | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_grounding < 2 or self.max_entities < 1 or self.spatial_max_iter < 0:
            raise ConfigError("official: need batch_size >= 1, max_grounding >= 2, max_entities >= 1, "
                              "spatial_max_iter >= 0")
        if not 0.0 <= self.visual_prob <= 1.0:
            raise ConfigError(f"official.visual_prob must lie in [0, 1], got {self.visual_prob}")
        if self.visual_source not in VISUAL_SOURCES:
            raise ConfigError(f"official.visual_source must be one of {VISUAL_SOURCES}, got {self.visual_source!r}")
        if self.retrieval_visual_source not in (None, *VISUAL_SOURCES):
            raise ConfigError(f"official.retrieval_visual_source must be None or one of {VISUAL_SOURCES}, "
                              f"got {self.retrieval_visual_source!r}")
        if self.num_points < 1:
            raise ConfigError(f"official.num_points must be >= 1, got {self.num_points}")
        if self.scale_jitter is not None and not (
                isinstance(self.scale_jitter, (list, tuple)) and len(self.scale_jitter) == 2
                and all(isinstance(v, (int, float)) for v in self.scale_jitter)
                and 0 < self.scale_jitter[0] <= self.scale_jitter[1]):
            raise ConfigError(f"official.scale_jitter must be [min, max] with 0 < min <= max, got {self.scale_jitter!r}")
        if not 0.0 <= self.scale_jitter_prob <= 1.0:
            raise ConfigError(f"official.scale_jitter_prob must lie in [0, 1], got {self.scale_jitter_prob}")


@dataclass
class VisionWarmupConfig:
    """Optional first stage for a vision side trained from scratch (see find_core.engine.vision_warmup):
    `steps` of segment classification on the generic task's panoptic data before FIND training."""

    steps: int = 0                 # 0 = off (pretrained vision weights need no warm-up)
    batch_size: int = 16           # GLOBAL batch of images, split over the processes
    lr: float = 4e-4               # AdamW, constant
    weight_decay: float = 0.01
    log_every: int = 150

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.lr <= 0 or self.weight_decay < 0 or self.log_every < 1:
            raise ConfigError("vision_warmup: need steps >= 0, batch_size >= 1, lr > 0, weight_decay >= 0, "
                              "log_every >= 1")


TRAIN_MODES = ("per_task", "official")


@dataclass
class RunConfig:
    mode: str = "per_task"         # "official": every task in one forward per batch (FIND's recipe, needs
    #                                the official interface); "per_task": one task per step (see trainer.py)
    steps: int = 100
    seed: int = 0
    device: str = "auto"           # "auto", "cpu", "cuda", "cuda:1" (torchrun: each rank its LOCAL_RANK GPU)
    precision: str = "fp32"        # "bf16" / "fp16" autocast on GPU; CPU always runs fp32
    checkpoint_every: int = 50
    keep_checkpoints: int = 0      # keep only the newest N step checkpoints (0 = keep all)
    log_every: int = 10
    out_dir: str = "runs/find"
    cpu_threads: int | None = None # torch intra-op threads; null = torch's default (1 is best on a busy machine)
    cache_features: bool = False   # compute each training image's frozen features once (needs model.vision.frozen)
    feature_cache_dir: str | None = None  # on-disk cache folder (shared by torchrun processes); null = in memory

    def __post_init__(self) -> None:
        if self.mode not in TRAIN_MODES:
            raise ConfigError(f"train.mode must be one of {TRAIN_MODES}, got {self.mode!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"train.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ConfigError(f"train.cpu_threads must be >= 1 or null, got {self.cpu_threads}")
        if self.steps < 1 or self.checkpoint_every < 1 or self.log_every < 1 or self.keep_checkpoints < 0:
            raise ConfigError("train: need steps, checkpoint_every, log_every >= 1 and keep_checkpoints >= 0")


@dataclass
class EvalConfig:
    """What `training.evaluate` measures; per-dataset splits default to `split`."""

    split: str = "val"
    panoptic_split: str | None = None       # COCO: val2017
    refcoco_split: str | None = None        # RefCOCOg umd: val
    captions_split: str | None = None       # Karpathy: test
    entity_split: str | None = None         # FIND-Bench: val2017
    entity_json: str | None = None          # default annotations/entity_{split}.json under the root
    retrieval_json: str | None = None       # default annotations/retrieval_{split}.json under the root
    captions_file: str = "dataset_coco.json"
    refcoco_image_dir: str | None = None    # RefCOCOg images when not under the data root
    max_images: int | None = None           # evaluate at most this many samples per dataset
    max_clicks: int = 10                    # interactive click simulation (NoC counts up to this)
    max_interactive_objects: int = 4        # objects per image in the click simulation
    # interleave grounding's visual entities: "own_stroke" = the official FIND-Bench grounding protocol
    # (grounding_coco_entity_mapper: each entity visual with probability 0.5, as a stroke on its own
    # instance); "reference" = each file reference (another image, as reference_view says)
    interleave_visual: str = "own_stroke"
    # a file reference as the whole referenced image with its segment (official interleave retrieval) or
    # its crop ("crop"); interleave retrieval and the "reference" grounding protocol read it
    reference_view: str = "image"
    # how often a phrase with a `reference` (official files, the engine's output) is given as its image,
    # as the official mapper draws it (0.5); 0 gives every entity in words, 1 every reference as an
    # image: the two ends show what visual entities cost. Phrases fixed as `visual` stay visual. Interleave
    # retrieval and the "reference" grounding protocol read it (and record it when it is not 0.5).
    reference_visual_prob: float = 0.5
    tasks: list[str] | None = None          # evaluate only these tasks (default: every one the data allows)
    seed: int = 0                           # the own_stroke draws and torch's RNG (prompt points) per task
    device: str = "auto"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.max_clicks < 1 or self.max_interactive_objects < 1:
            raise ConfigError("eval: need max_clicks >= 1 and max_interactive_objects >= 1")
        if self.max_images is not None and self.max_images < 1:
            raise ConfigError(f"eval.max_images must be >= 1 or null, got {self.max_images}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"eval.precision must be one of {PRECISIONS}, got {self.precision!r}")
        _check_reference_view(self.reference_view, "eval")
        if not 0.0 <= self.reference_visual_prob <= 1.0:
            raise ConfigError(f"eval.reference_visual_prob must lie in [0, 1], got {self.reference_visual_prob}")
        if self.interleave_visual not in INTERLEAVE_VISUALS:
            raise ConfigError(f"eval.interleave_visual must be one of {INTERLEAVE_VISUALS}, "
                              f"got {self.interleave_visual!r}")


@dataclass
class TrainConfig:
    model: str | dict = "tiny-test"
    init_checkpoint: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    tasks: TasksConfig = field(default_factory=TasksConfig)
    interactive: InteractiveConfig = field(default_factory=InteractiveConfig)
    vision_warmup: VisionWarmupConfig = field(default_factory=VisionWarmupConfig)
    official: OfficialRecipeConfig = field(default_factory=OfficialRecipeConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: RunConfig = field(default_factory=RunConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if self.train.mode == "per_task" and not self.tasks.enabled():
            raise ConfigError(f"no task has a weight > 0; set tasks.<name>.weight for one of {registry.names()}")

    def model_config(self) -> ModelConfig:
        """The model: inline mapping, a YAML file, or a preset name (config/models/<name>.yaml)."""
        if isinstance(self.model, dict):
            return ModelConfig.from_dict(self.model.get("model", self.model))
        path = Path(self.model).expanduser()
        if path.suffix in (".yaml", ".yml") or path.is_file():
            return load_model_yaml(path)   # a converted checkpoint's config.yaml names ./language
        return ModelConfig.from_yaml(preset_path(self.model))

    def task_root(self, task: str) -> Path:
        return Path(getattr(self.tasks, task).root or self.data.root).expanduser()

    def task_split(self, task: str) -> str:
        return getattr(self.tasks, task).split or self.data.split

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        return build_dataclass(cls, data, "config")

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        data = load_yaml_mapping(path, "training config")
        try:
            return cls.from_dict(data)
        except (ConfigError, ValueError, TypeError) as error:
            raise ConfigError(f"{path}: {error}") from error

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["tasks"], data["loss"] = self.tasks.to_dict(), self.loss.to_dict()   # keyed by task name
        return _plain(data)

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _plain(value: Any) -> Any:
    """Tuples → lists, so the YAML dump stays plain (safe_load can read it back)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
