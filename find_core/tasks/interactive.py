"""Interactive segmentation: clicks / boxes / scribbles / polygons / masks → one mask per object.

Each object's prompts are sampled into point features from every interface level (embedding
sampler) with a positive / negative indicator; its query starts from the positive points' mean."""
from __future__ import annotations

import torch

from ..interface.groups import Group
from ..interface.inputs import ImageFeatures, PromptBlock, SampleInputs, SourceQuery
from ..model import FindModel

TASK = "interactive"

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
