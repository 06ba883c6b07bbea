"""Interleaved entries: one token sequence where visual entities' tokens carry image features.

The text (with stand-in words for visual entities) goes through the language model; the tokens
inside a visual entity's span are then replaced by that reference's pooled, projected features.
Shared by interleave grounding (one query per entity) and interleave retrieval (one per entry),
with the training pieces both use: FIND-Bench entries as batches of instructions."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import FindBenchEntities
from ..data.samples import EntitySample
from ..encoders.language import TokenFeatures
from ..instructions import Entity, Instruction, VisualReference, same_stamp
from ..interface.groups import Group
from ..interface.inputs import PromptBlock, SampleInputs, SourceQuery
from ..model import FindModel
from .common import encode_references
from .spec import Batch, Drawn, derive_seed, stack_masks


def reference_image(reference: VisualReference, frames: Mapping[float, np.ndarray] | None) -> np.ndarray:
    """The image a visual reference points at: inline, or a buffered frame found by its stamp."""
    if reference.image is not None:
        return reference.image
    if not frames:
        raise ValueError(f"visual entity refers to frame stamp {reference.frame_stamp} but no frames are buffered")
    stamp = min(frames, key=lambda s: abs(s - reference.frame_stamp))
    if not same_stamp(stamp, reference.frame_stamp):
        raise ValueError(f"no buffered frame with stamp {reference.frame_stamp:.3f} (nearest {stamp:.3f})")
    return frames[stamp]


def visual_tokens(model: FindModel, instructions: list[Instruction],
                  frames: Mapping[float, np.ndarray] | None = None,
                  generator: torch.Generator | None = None) -> list[dict[int, torch.Tensor]]:
    """For each instruction, entity index → the [C] embedding that replaces its tokens."""
    wanted = [(n, e, entity.reference) for n, inst in enumerate(instructions)
              for e, entity in enumerate(inst.entities) if entity.kind == "visual"]
    result: list[dict[int, torch.Tensor]] = [{} for _ in instructions]
    if not wanted:
        return result
    images = [reference_image(ref, frames) for _, _, ref in wanted]
    features, regions = encode_references(model, images, [ref for _, _, ref in wanted])
    for row, ((n, e, _), region) in enumerate(zip(wanted, regions)):
        result[n][e] = model.visual_entity_tokens(features, row, region, generator)
    return result


def entry_sample(instruction: Instruction, tokens: TokenFeatures, row: int, visual: dict[int, torch.Tensor],
                 query_group: Group) -> SampleInputs:
    """The entry's tokens as one prompt block, with ENTITY queries (one per entity) or one ENTRY query."""
    features = tokens.features[row].clone()
    spans = []
    for index, entity in enumerate(instruction.entities):
        span = tokens.tokens_in_span(row, entity.start, entity.end)
        if span.numel() == 0:
            raise ValueError(f"entity {index} ('{instruction.phrase(index)}') maps to no token "
                             f"(cut off beyond the language model's max_length?)")
        if index in visual:
            features[span] = visual[index].to(features.dtype)
        spans.append(span)
    valid = tokens.valid[row]
    prompt = PromptBlock(Group.ENTRY_TOKENS, 0, features[valid])
    if query_group == Group.ENTRY:
        queries = [SourceQuery(Group.ENTRY, 0, features[valid].mean(dim=0))]
    else:
        queries = [SourceQuery(Group.ENTITY, 0, features[span].mean(dim=0)) for span in spans]
    return SampleInputs(queries, [prompt])


def entry_samples(model: FindModel, instructions: list[Instruction], query_group: Group,
                  frames: Mapping[float, np.ndarray] | None = None,
                  generator: torch.Generator | None = None) -> list[SampleInputs]:
    visual = visual_tokens(model, instructions, frames, generator)
    tokens = model.encode_texts([inst.text for inst in instructions])
    return [entry_sample(inst, tokens, row, visual[row], query_group) for row, inst in enumerate(instructions)]


# ---- training ------------------------------------------------------------------------------------

@dataclass
class InterleaveBatch(Batch):
    """interleave_grounding (entities → masks) and interleave_retrieval (entries ↔ images)."""

    instructions: list[Instruction]
    masks: list[torch.Tensor]      # per entry [N entities, S, S]


def entity_instruction(sample: EntitySample, key: str = "") -> Instruction:
    """A FIND-Bench entry as an interleaved instruction: visual phrases become image references."""
    entities = tuple(
        Entity(p.start, p.end, "visual", VisualReference(image=p.visual_image, mask=p.visual_mask))
        if p.is_visual else Entity(p.start, p.end, "text")
        for p in sample.phrases)
    return Instruction(text=sample.sentence, entities=entities, id=key or f"entry-{sample.image_id}")


def open_entities(root: Path, split: str, data: Any, seed: int) -> FindBenchEntities:
    """FIND-Bench entries: `data.entity_json` (default annotations/entity_{split}.json), phrases with a
    reference given as its image (`data.reference_view`) with probability `data.reference_visual_prob`."""
    return FindBenchEntities(root, split, entity_json=Path(data.entity_json) if data.entity_json else None,
                             reference_visual_prob=data.reference_visual_prob, reference_view=data.reference_view,
                             seed=seed)


def build_batch(drawn: Drawn) -> InterleaveBatch:
    instructions = [entity_instruction(s, f"entry-{i}") for s, i in zip(drawn.samples, drawn.indices)]
    masks = [stack_masks([p.mask for p in s.phrases], box) for s, box in zip(drawn.samples, drawn.boxes)]
    return InterleaveBatch(*drawn.head, instructions, masks)


def batch_samples(model: FindModel, batch: InterleaveBatch, group: Group) -> list[SampleInputs]:
    """A batch's entries as interface samples. All visual references of the batch are encoded in
    one call; each entry samples its references' points with its own seed, so an entry's tokens do
    not depend on which other entries share the batch (or the rank)."""
    wanted = [(row, index, entity.reference) for row, instruction in enumerate(batch.instructions)
              for index, entity in enumerate(instruction.entities) if entity.kind == "visual"]
    visual: list[dict[int, torch.Tensor]] = [{} for _ in batch.instructions]
    if wanted:
        features, regions = encode_references(model, [ref.image for _, _, ref in wanted], [ref for _, _, ref in wanted])
        generators = [torch.Generator().manual_seed(derive_seed(seed, 2)) for seed in batch.seeds]
        for k, ((row, index, _), region) in enumerate(zip(wanted, regions)):
            visual[row][index] = model.visual_entity_tokens(features, k, region, generators[row])
    tokens = model.encode_texts([instruction.text for instruction in batch.instructions])
    return [entry_sample(instruction, tokens, row, visual[row], group)
            for row, instruction in enumerate(batch.instructions)]
