"""Interactive segmentation: clicks / boxes / scribbles / polygons / masks → one mask per object.

Each object's prompts are sampled into point features from every interface level (embedding
sampler) with a positive / negative indicator; its query starts from the positive points' mean.
Training (`SPEC` at the end) draws the prompts from ground-truth panoptic segments, as users give them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from ..interface.attention_table import VISION, See, source
from ..interface.groups import Group
from ..interface.inputs import ImageFeatures, PromptBlock, SampleInputs, SourceQuery
from ..losses import TaskLossWeights
from ..model import FindModel
from ..prompts import SpatialPrompt
from .generic import open_panoptic, panoptic
from .spec import Batch, Drawn, LossContext, TaskSpec, Terms, derive_seed, stack_masks

TASK = "interactive"
TABLE = VISION + source(Group.SPATIAL, Group.SPATIAL_TOKENS) + (See(Group.OBJECT, Group.SPATIAL_TOKENS),)

# A prompt region at input resolution and whether it marks the object (True) or not (False).
PromptRegion = tuple[torch.Tensor, bool]


def samples(model: FindModel, features: ImageFeatures, objects: list[list[list[PromptRegion]]],
            generator: torch.Generator | None = None) -> list[SampleInputs]:
    """objects[b][i]: the prompt regions of object i in image b."""
    result = []
    for b, image_objects in enumerate(objects):
        sample = SampleInputs()
        for item, prompts in enumerate(image_objects):
            if not prompts:
                raise ValueError(f"image {b}, object {item}: no prompt given")
            tokens, positives = [], []
            for region, positive in prompts:
                points = model.region_tokens(features, b, region, generator)
                tokens.append(points + model.polarity.weight[int(positive)])
                if positive:
                    positives.append(tokens[-1])
            all_tokens = torch.cat(tokens)
            init = torch.cat(positives).mean(dim=0) if positives else all_tokens.mean(dim=0)
            sample.queries.append(SourceQuery(Group.SPATIAL, item, init))
            sample.prompts.append(PromptBlock(Group.SPATIAL_TOKENS, item, all_tokens))
        result.append(sample)
    return result


# ---- training ------------------------------------------------------------------------------------

@dataclass
class InteractiveBatch(Batch):
    prompts: list[list[list[PromptRegion]]]   # image → object → its prompt regions
    masks: list[torch.Tensor]                 # per image [N objects, S, S]


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


def sample_spatial_prompts(mask: np.ndarray, rng: np.random.Generator, config: Any) -> list[SpatialPrompt]:
    """Training prompts for one object from its ground-truth mask: a click, a box or a scribble,
    maybe more clicks, maybe a negative click outside it (as users give them). `config`: the engine's
    InteractiveConfig (probabilities, extra clicks, radius)."""
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


def positive_stroke(mask: np.ndarray, rng: np.random.Generator, config: Any) -> np.ndarray:
    """The positive prompts `sample_spatial_prompts` draws for one object, as one H×W bool mask (the
    stroke a visual entity is given by in the official recipe and FIND-Bench grounding)."""
    height, width = mask.shape
    union = np.zeros_like(mask, dtype=bool)
    for prompt in sample_spatial_prompts(mask, rng, config):
        if prompt.positive:
            union |= prompt.rasterize(height, width)
    return union


def build_batch(drawn: Drawn) -> InteractiveBatch:
    """Up to `interactive.max_objects` random segments per image, each with its drawn prompts."""
    prompts, masks = [], []
    for sample, box, rng in zip(drawn.samples, drawn.boxes, drawn.rngs):
        segments = [seg for seg in panoptic(sample).segments if not seg.iscrowd]
        chosen = rng.permutation(len(segments))[: drawn.interactive.max_objects]
        height, width = sample.image.shape[:2]
        objects = []
        for k in chosen.tolist():
            drawn_prompts = sample_spatial_prompts(segments[k].mask, rng, drawn.interactive)
            objects.append([(box.to_input(p.rasterize(height, width)), p.positive) for p in drawn_prompts])
        prompts.append(objects)
        masks.append(stack_masks([segments[k].mask for k in chosen.tolist()], box))
    return InteractiveBatch(*drawn.head, prompts, masks)


def loss(criterion: LossContext, model: FindModel, batch: InteractiveBatch) -> Terms:
    features = criterion.encode(model, batch)
    image_samples: list[SampleInputs] = []
    for b, (objects, seed) in enumerate(zip(batch.prompts, batch.seeds)):
        regions = [[(region.to(model.device), positive) for region, positive in prompts] for prompts in objects]
        generator = torch.Generator().manual_seed(derive_seed(seed, 1))
        image_samples += samples(model, features.select(b), [regions], generator)
    sets = model.run_interface(features, image_samples, TASK)
    return criterion.matched_sources(model, batch, sets)


SPEC = TaskSpec(TASK, TABLE, TaskLossWeights(ce=0.4, bce=1.0, dice=1.0), open_panoptic, build_batch, loss)
