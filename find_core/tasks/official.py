"""Tasks on the official FIND decoder (`interface.architecture: official`, the released checkpoints).

The decoder runs each task as the official code's `evaluate*` functions do (modeling/architectures/
find_model.py): class embeddings from one `class` pass per class name on all-zero features, generic
segmentation against those plus "background" as the no-object class, grounding with every phrase's
tokens in one sequence and the best proposal per phrase by semantic similarity, the first interactive
round with the proposal chosen on mask embeddings, caption embeddings from the `retrieval` pass, and
interleaved entries with visual entities as "[INTERACTIVE]" placeholder tokens whose point tokens come
from an entity-alone pass on the reference image (as `evaluate_retrieval_interleave` makes them).
Passes whose queries never read the image (classes, captions, the entry, a text entity) run on
all-zero features.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

from ..instructions import Instruction
from ..interface.find_decoder import (DecoderOutput, InterleavePrompt, PointTokens, StrokePrompt, TextPrompt,
                                      entity_point_tokens)
from ..encoders.language import TokenFeatures
from ..interface.inputs import ImageFeatures
from ..model import FindModel
from .common import class_text, encode_references
from .interleave import reference_image

T = TypeVar("T", Tensor, np.ndarray)

NO_OBJECT_CLASS = "background"          # the official no-object class is this text's embedding
OBJECT_MASK_THRESHOLD = 0.8             # MODEL.DECODER.TEST of the official configs
OVERLAP_THRESHOLD = 0.8
CLASS_FEATURE_SIZES = (20, 40, 80, 160)  # the all-zero maps upstream's class step runs on (3 levels + masks)
PLACEHOLDER = "[INTERACTIVE]"           # the text a visual entity becomes in the entry (FIND-Bench mapper)
BLANK_IMAGE_SIZE = 640                  # a text entity of an entry is embedded on a blank 640x640 input
ENTITY_OBJECT_WEIGHT = 0.5              # interleave ranking: entry-image cosine + 0.5 x entity-object cosine


class UnsupportedTask(NotImplementedError):
    """The official decoder here does not cover this task yet."""


def unsupported(what: str) -> UnsupportedTask:
    return UnsupportedTask(f"{what} is not available for the official FIND decoder")


def class_prompt(tokens: Tensor) -> TextPrompt:
    """One class text's projected tokens [T, C] as the `class` task's prompt (one prompt: no padding)."""
    return TextPrompt(tokens[:, None], torch.zeros(1, tokens.shape[0], dtype=torch.bool, device=tokens.device))


def grounding_prompt(phrases: list[Tensor]) -> TextPrompt:
    """All phrases' projected tokens in one sequence, each token tagged with its phrase, one query per
    phrase (`evaluate_grounding`)."""
    return TextPrompt.phrases([(phrases, range(len(phrases)))])


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


def zero_features(model: FindModel, batch: int = 1) -> ImageFeatures:
    """All-zero image features (upstream's class step sizes) for passes whose queries never read the image."""
    zeros = [torch.zeros(batch, model.width, s, s, device=model.device) for s in CLASS_FEATURE_SIZES]
    return ImageFeatures(zeros[-1], zeros[:-1])


def class_embeddings_of(model: FindModel, tokens: list[Tensor]) -> Tensor:
    """[K, C] from each class text's projected tokens [T_k, C]."""
    zeros = zero_features(model)
    return torch.cat([run(model, zeros, "class", class_prompt=class_prompt(t)).final["pred_retrievals_class"][0]
                      for t in tokens])


def caption_embeddings(model: FindModel, captions: list[str]) -> Tensor:
    """[N, C] caption embeddings (`evaluate_retrieval`'s `pred_retrievals_lang`)."""
    return caption_embeddings_of(model, projected_tokens(model, captions))


def caption_embeddings_of(model: FindModel, tokens: list[Tensor]) -> Tensor:
    """The `retrieval` pass, one caption per batch element; caption queries read only their tokens."""
    out = run(model, zero_features(model, len(tokens)), "retrieval", retrieval=TextPrompt.padded(tokens))
    return out.final["pred_retrievals_lang"][:, 0]


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


# ---- interleaved entries ------------------------------------------------------------------------------
def entry_text(instruction: Instruction) -> tuple[str, list[tuple[int, int]]]:
    """The instruction's text with every visual entity's span replaced by the placeholder, and the
    entities' spans in that text."""
    return placeholder_text(instruction.text, [(e.start, e.end, e.kind == "visual") for e in instruction.entities])


def placeholder_text(text: str, spans: list[tuple[int, int, bool]]) -> tuple[str, list[tuple[int, int]]]:
    """`text` with each visual (start, end, True) span replaced by the placeholder, as the FIND-Bench
    mapper rewrites an entry; returns the new text and every span's place in it (input order)."""
    pieces, placed, cursor, length = [], {}, 0, 0
    for index in sorted(range(len(spans)), key=lambda i: spans[i][0]):
        start, end, visual = spans[index]
        before = text[cursor:start]
        words = PLACEHOLDER if visual else text[start:end]
        pieces += [before, words]
        first = length + len(before)
        placed[index] = (first, first + len(words))
        length = first + len(words)
        cursor = end
    pieces.append(text[cursor:])
    return "".join(pieces), [placed[i] for i in range(len(spans))]


def entry_tokens(model: FindModel, instruction: Instruction) -> tuple[Tensor, Tensor, Tensor]:
    """(projected tokens [T, C], entity → token [E, T] bool, is-visual [E]) of the entry."""
    text, spans = entry_text(instruction)
    encoded = model.encode_texts([text])
    entity_to_tokens = span_tokens(encoded, 0, spans, [instruction.phrase(i) for i in range(len(spans))])
    visual = torch.tensor([e.kind == "visual" for e in instruction.entities], device=entity_to_tokens.device)
    return encoded.features[0][encoded.valid[0]], entity_to_tokens, visual


def span_tokens(encoded: TokenFeatures, row: int, spans: list[tuple[int, int]], names: list[str],
                strict: bool = True) -> Tensor:
    """[E, T_valid] bool: which of text `row`'s valid tokens each character span covers (`encoded`: the
    result of `model.encode_texts`). A span with no token (cut off by max_length) is an error naming its
    entity, or with strict=False an empty row (training keeps such an entity, as upstream does)."""
    valid = encoded.valid[row]
    position = valid.long().cumsum(0) - 1  # a token's index among the valid ones
    entity_to_tokens = torch.zeros(len(spans), int(valid.sum()), dtype=torch.bool, device=valid.device)
    for index, (start, end) in enumerate(spans):
        tokens = encoded.tokens_in_span(row, start, end)
        if tokens.numel() == 0 and strict:
            raise ValueError(f"entity {index} ('{names[index]}') maps to no token "
                             "(cut off beyond the language model's max_length?)")
        entity_to_tokens[index, position[tokens]] = True
    return entity_to_tokens


def entity_alone(model: FindModel, features: ImageFeatures, own_tokens: Tensor,
                 region: Tensor) -> tuple[list[PointTokens], dict[str, Tensor]]:
    """A visual entity alone on its reference image (`interleave`, its placeholder tokens [T, C], its
    region [H, W] at input resolution): the sampled point tokens per level and the final outputs."""
    ones = torch.ones(1, len(own_tokens), dtype=torch.bool, device=own_tokens.device)
    alone = InterleavePrompt.entry(own_tokens, ones, ones[:, 0], regions=region[None].bool())
    out = run(model, features, "interleave", interleave=alone)
    return out.entity_tokens, out.final


def visual_entity_points(model: FindModel, instruction: Instruction, tokens: Tensor, entity_to_tokens: Tensor,
                         frames: Mapping[float, np.ndarray] | None) -> list[tuple[list[PointTokens], dict[str, Tensor]] | None]:
    """Per entity: None for a text entity, `entity_alone` on its reference for a visual one."""
    result: list[tuple[list[PointTokens], dict[str, Tensor]] | None] = []
    for index, entity in enumerate(instruction.entities):
        if entity.kind != "visual":
            result.append(None)
            continue
        features, regions = encode_references(model, [reference_image(entity.reference, frames)], [entity.reference])
        result.append(entity_alone(model, features, tokens[entity_to_tokens[index]], regions[0]))
    return result


@dataclass
class Entry:
    """An instruction prepared for the official decoder: its projected tokens [T, C], entity → token
    [E, T], the ranking-pass prompt (visual entities as reference point tokens), and per entity the
    entity-alone outputs of a visual one (None for text)."""

    tokens: Tensor
    entity_to_tokens: Tensor
    prompt: InterleavePrompt
    alone: list[tuple[list[PointTokens], dict[str, Tensor]] | None]

    @classmethod
    def of(cls, tokens: Tensor, entity_to_tokens: Tensor, visual: Tensor, alone: list, width: int) -> "Entry":
        points = entity_point_tokens([None if a is None else a[0] for a in alone], width)
        return cls(tokens, entity_to_tokens, InterleavePrompt.entry(tokens, entity_to_tokens, visual, points=points), alone)


def prepare_entry(model: FindModel, instruction: Instruction, frames: Mapping[float, np.ndarray] | None) -> Entry:
    tokens, entity_to_tokens, visual = entry_tokens(model, instruction)
    alone = visual_entity_points(model, instruction, tokens, entity_to_tokens, frames)
    return Entry.of(tokens, entity_to_tokens, visual, alone, model.width)


def interleave_ground(model: FindModel, features: ImageFeatures, instruction: Instruction,
                      frames: Mapping[float, np.ndarray] | None = None) -> tuple[Tensor, Tensor]:
    """Per entity the interleave proposal that matches it best — on pixel (mask) embeddings for a visual
    entity, on semantic embeddings for a text one (`evaluate_interleave_grounding`): masks [E, h, w]
    (logits) and each choice's softmax share over the proposals."""
    return ground_entry(model, features, prepare_entry(model, instruction, frames))


def ground_entry(model: FindModel, features: ImageFeatures, entry: Entry) -> tuple[Tensor, Tensor]:
    final = run(model, features, "interleave", interleave=entry.prompt).final
    visual = torch.tensor([a is not None for a in entry.alone], device=final["pred_imasks"].device)
    by_pixel = final["pred_imaskembs"][0] @ final["pred_entity_pixel"][0].t()           # [Q, E]
    by_class = final["pred_interleave_objects"][0] @ final["pred_entity_class"][0].t()
    logits = torch.where(visual[None], by_pixel, by_class)
    best = logits.argmax(dim=0)
    return final["pred_imasks"][0, best], logits.softmax(dim=0).gather(0, best[None])[0]


def entry_embeddings(model: FindModel, instruction: Instruction, frames: Mapping[float, np.ndarray] | None = None,
                     blank: ImageFeatures | None = None) -> tuple[Tensor, Tensor]:
    """What the official interleave ranking compares with each image (`evaluate_retrieval_interleave`):
    the entry embedding [C] (`pred_interleave_image`, which never reads the image) and one embedding
    per entity [E, C] — a text entity's phrase query, a visual entity's best proposal on its reference."""
    return embed_entry(model, prepare_entry(model, instruction, frames), blank=blank)


def blank_image_features(model: FindModel, size: int = BLANK_IMAGE_SIZE) -> ImageFeatures:
    """Features of an all-zero model input (zeros after normalisation), as upstream's `inference_text`
    encodes it: a text entity's phrase query reads the grounding proposals, which read the image."""
    pyramid = model.vision(torch.zeros(1, 3, size, size, device=model.device))
    mask_features, levels = model.pixel_decoder(pyramid)
    return ImageFeatures(mask_features, levels)


def embed_entry(model: FindModel, entry: Entry, blank_size: int = BLANK_IMAGE_SIZE,
                blank: ImageFeatures | None = None) -> tuple[Tensor, Tensor]:
    """`entry_embeddings` of a prepared entry; `blank`: `blank_image_features` kept by the caller (they
    depend on the weights alone; a vision pass at 640 px otherwise runs for every entry with text)."""
    embedding = run(model, zero_features(model), "interleave", interleave=entry.prompt).final["pred_interleave_image"][0, 0]
    entities = []
    if blank is None and any(a is None for a in entry.alone):
        blank = blank_image_features(model, blank_size)
    for index, visual in enumerate(entry.alone):
        if visual is None:
            phrase = grounding_prompt([entry.tokens[entry.entity_to_tokens[index]]])
            entities.append(run(model, blank, "grounding_eval", grounding=phrase).final["pred_grounding_query"][0, 0])
            continue
        final = visual[1]
        best = (final["pred_imaskembs"][0] @ final["pred_entity_pixel"][0].t()).argmax(dim=0)[0]
        entities.append(final["pred_interleave_objects"][0, best])
    return embedding, torch.stack(entities)


def unit(x: Tensor) -> Tensor:
    """``x`` at unit length along its last axis, as upstream's ranking normalises (no epsilon)."""
    return x / x.norm(dim=-1, keepdim=True)


def interleave_score_terms(entry: Tensor, entities: Tensor, images: Tensor, objects: Tensor) -> Tensor:
    """[2, N]: the official ranking's two terms for N images — cos(entry, image), and the mean over
    entities of the best cos(entity, object query) in that image. images [N, C], objects [N, Q, C]."""
    return unit_score_terms(unit(entry), unit(entities), unit(images), unit(objects))


def unit_score_terms(entry: Tensor, entities: Tensor, images: Tensor, objects: Tensor) -> Tensor:
    """`interleave_score_terms` of inputs already at unit length: a kept gallery (many images, each
    with its object queries) is normalised once, not at every ranking."""
    entry_image = images @ entry
    entity_object = (objects @ entities.t()).max(dim=1)[0].mean(dim=-1)   # [N]
    return torch.stack([entry_image, entity_object])


def rank(terms: T) -> T:
    """Official ranking scores [N] from `interleave_score_terms` [2, N] (a tensor or an array):
    the entry-image term + 0.5 x the entity-object term."""
    return terms[0] + ENTITY_OBJECT_WEIGHT * terms[1]


def interleave_scores(entry: Tensor, entities: Tensor, images: Tensor, objects: Tensor) -> Tensor:
    """[N] official ranking scores of N images (`rank` of `interleave_score_terms`)."""
    return rank(interleave_score_terms(entry, entities, images, objects))
