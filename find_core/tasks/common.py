"""Pieces every task uses: text prompts, region prompts of reference images, best-query choice."""
from __future__ import annotations

import numpy as np
import torch

from ..encoders.language import TokenFeatures
from ..instructions import VisualReference
from ..interface.groups import Group
from ..interface.inputs import ImageFeatures, PromptBlock, SourceQuery
from ..model import FindModel
from ..preprocess import Letterbox, letterbox

# COCO panoptic names carry bookkeeping suffixes ("wall-other-merged") that are not words of the concept.
_NAME_SUFFIXES = ("-other", "-merged", "-stuff")


def class_text(name: str, template: str = "{}") -> str:
    """The text prompt a class name becomes under `template` (LanguageConfig.class_template).

    The identity template "{}" keeps the name verbatim. Any other template is the official FIND
    prompt form ("Describe the concept of {}."), which also drops the COCO suffixes first, as the
    official class-embedding code does; one rule for inference, evaluation and training."""
    if template == "{}":
        return name
    for suffix in _NAME_SUFFIXES:
        name = name.replace(suffix, "")
    try:
        uses_name = template.format("x") != template.format("")
        text = template.format(name)
    except (IndexError, KeyError, ValueError) as error:
        raise ValueError(f"class_template {template!r} must hold one '{{}}' for the class name") from error
    if not uses_name:
        raise ValueError(f"class_template {template!r} has no '{{}}' for the class name")
    return text


def text_item(tokens: TokenFeatures, row: int, query: Group, prompt: Group, item: int) -> tuple[SourceQuery, PromptBlock]:
    """A source query initialised with the mean of its text's tokens, and those tokens as prompts."""
    features = tokens.features[row][tokens.valid[row]]
    if features.shape[0] == 0:
        raise ValueError("text has no tokens")
    return SourceQuery(query, item, features.mean(dim=0)), PromptBlock(prompt, item, features)


def text_items(model: FindModel, texts: list[str], query: Group, prompt: Group) -> list[tuple[SourceQuery, PromptBlock]]:
    for index, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"text {index} is empty")
    tokens = model.encode_texts(texts)
    return [text_item(tokens, row, query, prompt, item=row) for row in range(len(texts))]


def reference_region(reference: VisualReference, box: Letterbox) -> np.ndarray:
    """The referenced region as a bool mask at the reference image's size (whole image if unspecified)."""
    height, width = box.original
    if reference.mask is not None:
        if reference.mask.shape != (height, width):
            raise ValueError(f"reference mask {reference.mask.shape} does not match its image {(height, width)}")
        region = reference.mask.astype(bool)
    elif reference.box is not None:
        x0, y0, x1, y1 = reference.box
        region = np.zeros((height, width), dtype=bool)
        region[max(0, int(y0)):min(height, int(np.ceil(y1))), max(0, int(x0)):min(width, int(np.ceil(x1)))] = True
    else:
        region = np.ones((height, width), dtype=bool)
    if not region.any():
        raise ValueError("visual reference region is empty")
    return region


def encode_references(model: FindModel, images: list[np.ndarray],
                      references: list[VisualReference]) -> tuple[ImageFeatures, list[torch.Tensor]]:
    """Encode reference images once; return their features and each region at input resolution."""
    tensor, boxes = letterbox(images, model.config.vision.input_size)
    features = model.encode_images(tensor)
    regions = [box.to_input(reference_region(ref, box), model.device) for ref, box in zip(references, boxes)]
    return features, regions


def best_queries(model: FindModel, source: torch.Tensor, objects: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each source embedding [S, C], the best object query of [Q, C] and its softmax score."""
    scores = model.similarity(source, objects).softmax(dim=-1)
    best = scores.argmax(dim=-1)
    return best, scores.gather(1, best[:, None])[:, 0]
