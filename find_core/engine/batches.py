"""Dataset samples → model inputs and targets at the model's input resolution.

Every task's batch carries letterboxed images plus its targets (masks already mapped with
`Letterbox.to_input`), and one seed per sample. All randomness of a sample (which caption, where the
clicks go, which points the losses sample) comes from that seed, which depends only on the run seed,
the step, the task and the dataset index: a resumed run and a run split over N processes draw the
very same numbers as one uninterrupted process.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from scipy import ndimage

from ..data import CocoCaptions, CocoPanoptic, FindBenchEntities, RefCocoG
from ..data.samples import CaptionSample, EntitySample, PanopticSample, ReferringSample
from ..instructions import Entity, Instruction, VisualReference
from ..preprocess import Letterbox, letterbox
from ..prompts import SpatialPrompt
from .config import DataConfig, InteractiveConfig

PromptRegion = tuple[torch.Tensor, bool]   # a prompt region [S, S] bool at input resolution, positive?


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that depends on every part (numpy's SeedSequence mixing)."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFFFFFFFFFF for p in parts]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


# ---- batches --------------------------------------------------------------------------------------

@dataclass
class Batch:
    task: str
    images: torch.Tensor           # [B, 3, S, S] float in [0, 255], letterboxed
    image_ids: list[int]
    seeds: list[int]               # one per sample

    def __len__(self) -> int:
        return len(self.image_ids)


@dataclass
class SegmentationBatch(Batch):
    """generic: every non-crowd panoptic segment with its class index into `class_names`."""

    masks: list[torch.Tensor]      # per image [N, S, S] bool
    labels: list[torch.Tensor]     # per image [N] int64
    class_names: list[str]


@dataclass
class GroundingBatch(Batch):
    phrases: list[list[str]]
    masks: list[torch.Tensor]      # per image [N phrases, S, S]


@dataclass
class InteractiveBatch(Batch):
    prompts: list[list[list[PromptRegion]]]   # image → object → its prompt regions
    masks: list[torch.Tensor]                 # per image [N objects, S, S]


@dataclass
class RetrievalBatch(Batch):
    captions: list[str]            # one per image


@dataclass
class InterleaveBatch(Batch):
    """interleave_grounding (entities → masks) and interleave_retrieval (entries ↔ images)."""

    instructions: list[Instruction]
    masks: list[torch.Tensor]      # per entry [N entities, S, S]


# ---- sample conversion ----------------------------------------------------------------------------

def _stack(masks: list[np.ndarray], box: Letterbox) -> torch.Tensor:
    if not masks:
        return torch.zeros(0, box.size, box.size, dtype=torch.bool)
    return torch.stack([box.to_input(mask) for mask in masks])


def _interior(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels well inside the mask (at least 30% of its largest inner distance from the edge)."""
    distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    keep = distance >= max(1.0, 0.3 * float(distance.max()))
    if not keep.any():
        keep = mask
    return np.nonzero(keep)


def _click(ys: np.ndarray, xs: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    i = int(rng.integers(len(ys)))
    return float(xs[i]), float(ys[i])


def sample_spatial_prompts(mask: np.ndarray, rng: np.random.Generator, config: InteractiveConfig) -> list[SpatialPrompt]:
    """Training prompts for one object from its ground-truth mask: a click, a box or a scribble,
    maybe more clicks, maybe a negative click outside it (as users give them)."""
    if not mask.any():
        raise ValueError("cannot draw prompts for an empty mask")
    ys, xs = _interior(mask)
    probs = np.array([config.point_prob, config.box_prob, config.scribble_prob], dtype=np.float64)
    kind = ("point", "box", "scribble")[int(rng.choice(3, p=probs / probs.sum()))]
    r = config.radius
    prompts: list[SpatialPrompt] = []
    if kind == "point":
        prompts.append(SpatialPrompt("point", points=(_click(ys, xs, rng),), radius=r))
    elif kind == "box":
        rows, cols = np.nonzero(mask)
        prompts.append(SpatialPrompt.from_box(float(cols.min()), float(rows.min()),
                                              float(cols.max() + 1), float(rows.max() + 1)))
    else:
        points = tuple(_click(ys, xs, rng) for _ in range(int(rng.integers(2, 5))))
        prompts.append(SpatialPrompt("scribble", points=points, radius=r))
    for _ in range(int(rng.integers(0, config.max_extra_clicks + 1))):
        prompts.append(SpatialPrompt("point", points=(_click(ys, xs, rng),), radius=r))
    if rng.random() < config.negative_prob and not mask.all():
        out_ys, out_xs = _interior(~mask)
        prompts.append(SpatialPrompt("point", points=(_click(out_ys, out_xs, rng),), positive=False, radius=r))
    return prompts


def entity_instruction(sample: EntitySample, key: str = "") -> Instruction:
    """A FIND-Bench entry as an interleaved instruction: visual phrases become image references."""
    entities = tuple(
        Entity(p.start, p.end, "visual", VisualReference(image=p.visual_crop, mask=p.visual_mask))
        if p.is_visual else Entity(p.start, p.end, "text")
        for p in sample.phrases)
    return Instruction(text=sample.sentence, entities=entities, id=key or f"entry-{sample.image_id}")


class Reader(Protocol):
    def __len__(self) -> int: ...
    def __getitem__(self, index: int): ...


class TaskData:
    """One task's dataset reader and how its samples become a batch."""

    def __init__(self, task: str, reader: Reader, input_size: int, interactive: InteractiveConfig | None = None):
        self.task = task
        self.reader = reader
        self.input_size = input_size
        self.interactive = interactive or InteractiveConfig()
        self.class_names: list[str] = []
        self._class_index: dict[int, int] = {}
        if isinstance(reader, CocoPanoptic):
            self.class_names = [c.name for c in reader.categories]
            self._class_index = {c.id: i for i, c in enumerate(reader.categories)}
        if len(reader) == 0:
            raise ValueError(f"task {task}: the dataset is empty")

    def __len__(self) -> int:
        return len(self.reader)

    @classmethod
    def open(cls, task: str, root: Path, split: str, input_size: int,
             interactive: InteractiveConfig | None = None, data: DataConfig | None = None,
             seed: int = 0) -> "TaskData":
        """The reader each task trains on (see find_core.data for the expected folder layouts);
        `data` supplies the file overrides (captions, RefCOCOg images, FIND-Bench entries)."""
        data = data or DataConfig()
        if task in ("generic", "interactive"):
            reader: Reader = CocoPanoptic(root, split)
        elif task == "grounding":
            image_dir = Path(data.refcoco_image_dir).expanduser() if data.refcoco_image_dir else None
            reader = RefCocoG(root, split, image_dir=image_dir)
        elif task == "retrieval":
            reader = CocoCaptions(root, Path(data.captions_file), split)
        elif task in ("interleave_grounding", "interleave_retrieval"):
            reader = FindBenchEntities(root, split, entity_json=Path(data.entity_json) if data.entity_json else None,
                                       reference_visual_prob=data.reference_visual_prob, seed=seed)
        else:
            raise ValueError(f"unknown task '{task}'")
        return cls(task, reader, input_size, interactive)

    def batch(self, indices: list[int], seeds: list[int]) -> Batch:
        samples = [self.reader[i] for i in indices]
        images, boxes = letterbox([s.image for s in samples], self.input_size)
        ids = [int(s.image_id) for s in samples]
        rngs = [np.random.default_rng(seed) for seed in seeds]
        if self.task == "generic":
            masks, labels = [], []
            for sample, box in zip(samples, boxes):
                kept = [seg for seg in _panoptic(sample).segments if not seg.iscrowd]
                masks.append(_stack([seg.mask for seg in kept], box))
                labels.append(torch.tensor([self._class_index[seg.category_id] for seg in kept], dtype=torch.long))
            return SegmentationBatch(self.task, images, ids, seeds, masks, labels, self.class_names)
        if self.task == "interactive":
            prompts, masks = [], []
            for sample, box, rng in zip(samples, boxes, rngs):
                segments = [seg for seg in _panoptic(sample).segments if not seg.iscrowd]
                chosen = rng.permutation(len(segments))[: self.interactive.max_objects]
                height, width = sample.image.shape[:2]
                objects = []
                for k in chosen.tolist():
                    drawn = sample_spatial_prompts(segments[k].mask, rng, self.interactive)
                    objects.append([(box.to_input(p.rasterize(height, width)), p.positive) for p in drawn])
                prompts.append(objects)
                masks.append(_stack([segments[k].mask for k in chosen.tolist()], box))
            return InteractiveBatch(self.task, images, ids, seeds, prompts, masks)
        if self.task == "grounding":
            refs: list[ReferringSample] = samples
            return GroundingBatch(self.task, images, ids, seeds, [[s.sentence] for s in refs],
                                  [_stack([s.mask], box) for s, box in zip(refs, boxes)])
        if self.task == "retrieval":
            captioned: list[CaptionSample] = samples
            captions = [s.captions[int(rng.integers(len(s.captions)))] for s, rng in zip(captioned, rngs)]
            return RetrievalBatch(self.task, images, ids, seeds, captions)
        entries: list[EntitySample] = samples
        instructions = [entity_instruction(s, f"entry-{i}") for s, i in zip(entries, indices)]
        masks = [_stack([p.mask for p in s.phrases], box) for s, box in zip(entries, boxes)]
        return InterleaveBatch(self.task, images, ids, seeds, instructions, masks)


def _panoptic(sample: PanopticSample) -> PanopticSample:
    if not isinstance(sample, PanopticSample):
        raise TypeError(f"expected a PanopticSample, got {type(sample).__name__}")
    return sample
