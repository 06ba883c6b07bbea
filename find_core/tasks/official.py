"""Tasks on the official FIND decoder (`interface.architecture: official`, the released checkpoints).

The decoder runs each task as the official code's `evaluate*` functions do (modeling/architectures/
find_model.py): class embeddings from one `class` pass per class name on all-zero features, generic
segmentation against those plus "background" as the no-object class, grounding with every phrase's
tokens in one sequence and the best proposal per phrase by semantic similarity, and the first
interactive round with the proposal chosen on mask embeddings. Retrieval and interleave tasks are
not in the decoder yet: asking for them is a clear error.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..interface.find_decoder import DecoderOutput, StrokePrompt, TextPrompt
from ..interface.inputs import ImageFeatures
from ..model import FindModel
from .common import class_text

NO_OBJECT_CLASS = "background"          # the official no-object class is this text's embedding
OBJECT_MASK_THRESHOLD = 0.8             # MODEL.DECODER.TEST of the official configs
OVERLAP_THRESHOLD = 0.8
CLASS_FEATURE_SIZES = (20, 40, 80, 160)  # the all-zero maps upstream's class step runs on (3 levels + masks)


class UnsupportedTask(NotImplementedError):
    """The official decoder here does not cover this task yet."""


def unsupported(what: str) -> UnsupportedTask:
    return UnsupportedTask(f"{what} is not available for the official FIND decoder yet (it covers generic "
                           "segmentation, grounding and interactive segmentation; text entities only)")


def class_prompt(tokens: Tensor) -> TextPrompt:
    """One class text's projected tokens [T, C] as the `class` task's prompt (one prompt: no padding)."""
    return TextPrompt(tokens[:, None], torch.zeros(1, tokens.shape[0], dtype=torch.bool, device=tokens.device))


def grounding_prompt(phrases: list[Tensor]) -> TextPrompt:
    """All phrases' projected tokens in one sequence, each token tagged with its phrase, one query per
    phrase (`evaluate_grounding`)."""
    tokens = torch.cat(phrases)
    device = tokens.device
    items = torch.cat([torch.full((len(p),), i, dtype=torch.long, device=device) for i, p in enumerate(phrases)])
    return TextPrompt(tokens[:, None], torch.zeros(1, len(tokens), dtype=torch.bool, device=device),
                      items[None], torch.arange(len(phrases), device=device)[None])


def projected_tokens(model: FindModel, texts: list[str]) -> list[Tensor]:
    """Each text's prompt tokens [T_i, C]: the language model's tokens (BOS included with keep_bos),
    through the language projection."""
    for index, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"text {index} is empty")
    encoded = model.encode_texts(texts)
    return [encoded.features[row][encoded.valid[row]] for row in range(len(texts))]


def run(model: FindModel, features: ImageFeatures, task: str, **prompts) -> DecoderOutput:
    return model.interface(features.levels, features.mask_features, task, logit_scale=model.logit_scale, **prompts)


def class_embeddings(model: FindModel, names: list[str]) -> Tensor:
    """[K, C] class embeddings (`get_class_embeddings`): one `class` pass per templated name."""
    if not names:
        raise ValueError("generic segmentation needs at least one class")
    template = model.config.language.class_template
    return class_embeddings_of(model, projected_tokens(model, [class_text(name, template) for name in names]))


def class_embeddings_of(model: FindModel, tokens: list[Tensor]) -> Tensor:
    """[K, C] from each class text's projected tokens [T_k, C]."""
    zeros = [torch.zeros(1, model.width, s, s, device=model.device) for s in CLASS_FEATURE_SIZES]
    return torch.cat([model.interface(zeros[:-1], zeros[-1], "class", class_prompt=class_prompt(t)).final["pred_retrievals_class"][0]
                      for t in tokens])


def image_outputs(model: FindModel, features: ImageFeatures, classes: Tensor | None = None) -> dict[str, Tensor]:
    """The `seg` pass: object masks [B, Q, h, w] and semantic outputs [B, Q, C], the image's
    retrieval embedding [B, 1, C], and with `classes` the class logits [B, Q, K]."""
    return run(model, features, "seg", class_embeddings=classes).final


def ground(model: FindModel, features: ImageFeatures, phrases: list[str]) -> tuple[Tensor, Tensor, Tensor]:
    """Per phrase the grounding proposal whose semantic output is most similar to the phrase query:
    masks [P, h, w] (logits), scores [P] (that proposal's softmax share over the proposals) and the
    similarity itself [P] (cosine × logit scale)."""
    return ground_tokens(model, features, projected_tokens(model, phrases))


def ground_tokens(model: FindModel, features: ImageFeatures, phrases: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """`ground` from each phrase's projected tokens [T_p, C]."""
    final = run(model, features, "grounding_eval", grounding=grounding_prompt(phrases)).final
    similarity = model.similarity(final["pred_gtexts"][0], final["pred_grounding_query"][0])  # [Q, P]
    probabilities = similarity.softmax(dim=0)
    best = similarity.argmax(dim=0)
    return final["pred_gmasks"][0, best], probabilities.gather(0, best[None])[0], similarity.gather(0, best[None])[0]


def interactive(model: FindModel, features: ImageFeatures,
                objects: list[list[tuple[Tensor, bool]]]) -> tuple[Tensor, Tensor]:
    """First interactive round for one image: per object its (region at input resolution, positive)
    prompts → masks [P, h, w] (logits) and a confidence per mask (mean probability inside it)."""
    if not objects or any(not prompts for prompts in objects):
        raise ValueError("interactive segmentation needs at least one prompt per object")
    size = next(region for prompts in objects for region, _ in prompts).shape
    positive = torch.zeros(len(objects), *size, dtype=torch.bool, device=model.device)
    negative = torch.zeros_like(positive)
    for index, prompts in enumerate(objects):
        for region, is_positive in prompts:
            target = positive if is_positive else negative
            target[index] |= region.to(model.device).bool()
    if not bool(positive.flatten(1).any(dim=1).all()):
        raise ValueError("every object needs a positive click, box or scribble inside the image")
    strokes = StrokePrompt([positive], [negative], torch.arange(len(objects), device=model.device)[None])
    masks = run(model, features, "spatial", strokes=strokes).prev_mask[0]
    probabilities = masks.float().sigmoid()
    inside = probabilities > 0.5
    confidence = (probabilities * inside).flatten(1).sum(1) / inside.flatten(1).sum(1).clamp(min=1)
    return masks, confidence
