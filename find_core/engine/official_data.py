"""Training images for the official FIND recipe: every task's targets of one image in one sample.

Upstream trains all tasks in one forward over COCO images that carry everything at once
(`coco_panoptic_interleave_dataset_mapper.py`): panoptic instances, one class drawn from the whole
vocabulary, a few referring phrases (or, without any, class names of the image), interactive strokes
on the instances, one caption and one FIND-Bench entry whose entities are, with probability
VISUAL_PROB each, given as a stroke on their own instance instead of their words (or, with
`official.visual_source`, on a same-category instance in another image of the batch; with
`official.retrieval_visual_source`, each entry also carries such strokes for the retrieval ITC alone). `OfficialData`
joins our readers (COCO panoptic, RefCOCOG, Karpathy captions, FIND-Bench entities) by image id and
draws the same things. All randomness of a sample comes from its seed (see `batches.derive_seed`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..data import CocoCaptions, CocoPanoptic, FindBenchEntities, RefCocoG
from ..data.samples import Segment
from ..preprocess import Letterbox, letterbox
from ..tasks.common import class_text
from ..tasks.official import placeholder_text
from ..tasks.interactive import positive_stroke
from .batches import _stack
from .config import DataConfig, InteractiveConfig, OfficialRecipeConfig
from .scale_jitter import ScaleJitter


@dataclass
class Grounding:
    texts: list[str]                    # one per target mask; equal texts = the same phrase
    masks: torch.Tensor                 # [G, S, S] bool
    mode: str                           # "text" (referring phrases) or "class" (class names)


@dataclass
class Entry:
    text: str                           # with "[INTERACTIVE]" in place of each visual entity's words
    spans: list[tuple[int, int]]        # each entity's characters in `text`
    visual: list[bool]
    masks: torch.Tensor                 # [E, S, S] bool: each entity's instance
    strokes: torch.Tensor               # [E, S, S] bool: a visual entity's stroke (empty for text)
    segment_ids: list[int]              # each entity's panoptic segment (-1: missing from the image)
    sources: list[int]                  # batch element whose image a stroke lies on (-1: the entry's own)
    # official.retrieval_visual_source: the strokes and sources of the retrieval ITC's entry
    retrieval_strokes: torch.Tensor | None = None
    retrieval_sources: list[int] | None = None


@dataclass
class OfficialSample:
    """One image's targets at the model's input resolution."""

    image_id: int
    labels: torch.Tensor                # [N] class index of each instance
    masks: torch.Tensor                 # [N, S, S]
    class_index: int                    # the class this image's class query encodes
    class_text: str                     # its prompt text (the model's class template)
    grounding: Grounding
    strokes: torch.Tensor               # [P, S, S] positive strokes, one per prompted instance
    stroke_targets: torch.Tensor        # [P, S, S] their instances
    caption: str
    entry: Entry


@dataclass
class OfficialBatch:
    images: torch.Tensor                # [B, 3, S, S] float in [0, 255]
    samples: list[OfficialSample]
    seeds: list[int]                    # per image: its draws here, its loss points in the step
    class_names: list[str] = field(default_factory=list)
    step_seed: int = 0                  # the step's own draws (same on every process)
    task: str = "official"

    def __len__(self) -> int:
        return len(self.samples)


class OfficialData:
    """Panoptic images joined with their phrases, captions and entries (same image ids)."""

    def __init__(self, root: Path, split: str, input_size: int, data: DataConfig, interactive: InteractiveConfig,
                 recipe: OfficialRecipeConfig, class_template: str = "{}"):
        self.panoptic = CocoPanoptic(root, split)
        self.input_size, self.interactive, self.recipe = input_size, interactive, recipe
        self.class_names = [c.name for c in self.panoptic.categories]
        self.class_texts = [class_text(name, class_template) for name in self.class_names]
        self._class_index = {c.id: i for i, c in enumerate(self.panoptic.categories)}
        captions_split = tuple((recipe.captions_split or split).split(","))
        self.captions = CocoCaptions(root, Path(data.captions_file), captions_split).captions_by_image()
        self.refs: dict[int, list] = {}
        self.referring = None
        if (root / "refcocog").is_dir():
            image_dir = Path(data.refcoco_image_dir).expanduser() if data.refcoco_image_dir else None
            self.referring = RefCocoG(root, recipe.refcoco_split or split, image_dir=image_dir)
            for ref in self.referring.refs:
                self.refs.setdefault(ref.image_id, []).append(ref)
        self.entries: dict[int, list[dict]] = {}
        entity_split = recipe.entity_split or split
        entity_json = Path(data.entity_json) if data.entity_json else Path("annotations") / f"entity_{entity_split}.json"
        if (root / entity_json).is_file():
            for entry in FindBenchEntities(root, entity_split, entity_json=entity_json).entries:
                self.entries.setdefault(int(entry["image_id"]), []).append(entry)
        # images with something to segment (upstream's training set is filtered the same way)
        self._ids = [i for i in self.panoptic.image_ids
                     if any(not seg.get("iscrowd", 0) for seg in self.panoptic.segments_info(i))]
        if not self._ids:
            raise ValueError(f"no image of {root} / {split} has a non-crowd segment")
        missing = [i for i in self._ids if i not in self.captions]
        if missing:
            raise ValueError(f"{len(missing)} training images have no caption in {data.captions_file} "
                             f"(e.g. {missing[:3]}); the official recipe trains retrieval on every image")

    def __len__(self) -> int:
        return len(self._ids)

    def batch(self, indices: list[int], seeds: list[int]) -> OfficialBatch:
        ids = [self._ids[i] for i in indices]
        samples = [self.panoptic.sample(image_id) for image_id in ids]
        jitters = [self._jitter(s.image.shape[:2], seed) for s, seed in zip(samples, seeds)]
        pixels = [j.image(s.image) if j else s.image for s, j in zip(samples, jitters)]
        images, boxes = letterbox(pixels, self.input_size)
        segments = [[replace(seg, mask=j.mask(seg.mask)) if j else seg for seg in s.segments if not seg.iscrowd]
                    for s, j in zip(samples, jitters)]
        segments = [[seg for seg in segs if seg.mask.any()] for segs in segments]   # what the window still shows
        drawn = [self._sample(s.image_id, segs, box, np.random.default_rng(seed), jitter)
                 for s, segs, box, seed, jitter in zip(samples, segments, boxes, seeds, jitters)]
        # their own draws, so "own" runs draw what they always drew
        if self.recipe.visual_source != "own":
            for b, (sample, seed) in enumerate(zip(drawn, seeds)):
                sample.entry.strokes, sample.entry.sources = self._visual_elsewhere(
                    b, sample.entry, pixels, segments, boxes, self.recipe.visual_source, np.random.default_rng([seed, 1]))
        if self.recipe.retrieval_visual_source is not None:
            for b, (sample, seed) in enumerate(zip(drawn, seeds)):
                sample.entry.retrieval_strokes, sample.entry.retrieval_sources = self._visual_elsewhere(
                    b, sample.entry, pixels, segments, boxes, self.recipe.retrieval_visual_source,
                    np.random.default_rng([seed, 2]))
        return OfficialBatch(images, drawn, list(seeds), self.class_names)

    def _jitter(self, original: tuple[int, int], seed: int) -> ScaleJitter | None:
        """This sample's draw of official.scale_jitter (its own streams: runs without it draw as before)."""
        if self.recipe.scale_jitter is None:
            return None
        if self.recipe.scale_jitter_prob < 1.0 and np.random.default_rng([seed, 4]).random() >= self.recipe.scale_jitter_prob:
            return None
        low, high = (float(v) for v in self.recipe.scale_jitter)
        return ScaleJitter.draw(original, self.input_size, low, high, np.random.default_rng([seed, 3]))

    def _visual_elsewhere(self, b: int, entry: Entry, pixels: list[np.ndarray], segments: list[list[Segment]],
                          boxes: list[Letterbox], source: str, rng: np.random.Generator) -> tuple[torch.Tensor, list[int]]:
        """Image b's entry strokes and sources with each visual entity's stroke moved onto a same-category
        instance of another image of the batch — a random one ("batch") or the one nearest in mean colour
        ("batch_nearest", what the reference of a FIND-Bench entity is: the most similar segment of its
        class elsewhere); its own stays when no other image has one ("own": all stay)."""
        strokes, sources = entry.strokes.clone(), list(entry.sources)
        if source == "own":
            return strokes, sources
        own = {seg.id: seg for seg in segments[b]}
        for e, (is_visual, segment_id) in enumerate(zip(entry.visual, entry.segment_ids)):
            segment = own.get(segment_id)
            if not is_visual or segment is None:
                continue
            others = [(k, seg) for k, image in enumerate(segments) if k != b
                      for seg in image if seg.category_id == segment.category_id and seg.mask.any()]
            if not others:
                continue
            if source == "batch_nearest":
                colour = _mean_colour(pixels[b], segment.mask)
                k, seg = min(others, key=lambda o: float(np.linalg.norm(_mean_colour(pixels[o[0]], o[1].mask) - colour)))
            else:
                k, seg = others[int(rng.integers(len(others)))]
            strokes[e] = self._stroke(seg.mask, boxes[k], rng)
            sources[e] = k
        return strokes, sources

    # ---- one image ----------------------------------------------------------------------------------
    def _sample(self, image_id: int, segments: list[Segment], box: Letterbox, rng: np.random.Generator,
                jitter: ScaleJitter | None = None) -> OfficialSample:
        masks = _stack([seg.mask for seg in segments], box)
        labels = torch.tensor([self._class_index[seg.category_id] for seg in segments], dtype=torch.long)
        strokes, stroke_targets = self._strokes(segments, box, rng)
        captions = self.captions[image_id]
        class_index = int(rng.integers(len(self.class_names)))   # from the whole vocabulary, as upstream
        return OfficialSample(
            image_id=image_id, labels=labels, masks=masks,
            class_index=class_index, class_text=self.class_texts[class_index],
            grounding=self._grounding(image_id, segments, masks, box, rng, jitter),
            strokes=strokes, stroke_targets=stroke_targets,
            caption=captions[int(rng.integers(len(captions)))],
            entry=self._entry(image_id, segments, box, rng))

    def _stroke(self, mask: np.ndarray, box: Letterbox, rng: np.random.Generator) -> torch.Tensor:
        """The positive strokes the interactive sampler draws for one instance, as one input-size mask."""
        return box.to_input(positive_stroke(mask, rng, self.interactive))  # a thin stroke keeps one pixel

    def _strokes(self, segments: list[Segment], box: Letterbox,
                 rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = rng.permutation(len(segments))[: self.interactive.max_objects].tolist()
        chosen = [k for k in chosen if segments[k].mask.any()]
        strokes = [self._stroke(segments[k].mask, box, rng) for k in chosen]
        empty = torch.zeros(0, box.size, box.size, dtype=torch.bool)
        return (torch.stack(strokes) if strokes else empty,
                _stack([segments[k].mask for k in chosen], box))

    def _grounding(self, image_id: int, segments: list[Segment], masks: torch.Tensor, box: Letterbox,
                   rng: np.random.Generator, jitter: ScaleJitter | None = None) -> Grounding:
        count = int(rng.integers(1, self.recipe.max_grounding))          # randint(1, MAX_LEN - 1)
        refs = self.refs.get(image_id, []) if self.referring is not None else []
        shown = None
        if jitter is not None:   # the phrases whose object the window still shows
            pairs = [(ref, jitter.mask(self.referring.mask(ref.ann_id))) for ref in refs]
            refs, shown = [ref for ref, mask in pairs if mask.any()], [mask for _, mask in pairs if mask.any()]
        if refs:
            order = rng.permutation(len(refs))[:count]
            texts = [refs[k].sentences[int(rng.integers(len(refs[k].sentences)))].lower() for k in order]
            chosen = [shown[k] if shown is not None else self.referring.mask(refs[k].ann_id) for k in order]
            return Grounding(texts, _stack(chosen, box), "text")
        names = [self.class_texts[int(label)] for label in
                 [self._class_index[seg.category_id] for seg in segments]]
        unique = sorted(set(names))
        keep = {unique[k] for k in rng.permutation(len(unique))[:count]}
        rows = [i for i, name in enumerate(names) if name in keep]
        return Grounding([names[i] for i in rows], masks[rows], "class")

    def _entry(self, image_id: int, segments: list[Segment], box: Letterbox, rng: np.random.Generator) -> Entry:
        entries = self.entries.get(image_id, [])
        size = box.size
        if not entries:  # the mapper's empty entry: "N/A", one entity with an empty mask
            empty = torch.zeros(1, size, size, dtype=torch.bool)
            return Entry("N/A", [(0, 3)], [False], empty, empty.clone(), [-1], [-1])
        entry = entries[int(rng.integers(len(entries)))]
        phrases = sorted(entry["phrase"], key=lambda p: p["start_idx"])[: self.recipe.max_entities]
        visual = (rng.random(len(phrases)) < self.recipe.visual_prob).tolist()
        by_id = {seg.id: seg for seg in segments}
        text, spans = placeholder_text(entry["sentence"], [(int(p["start_idx"]), int(p["end_idx"]), v)
                                                           for p, v in zip(phrases, visual)])
        masks, strokes, segment_ids = [], [], []
        for phrase, is_visual in zip(phrases, visual):
            segment = by_id.get(int(phrase["annotation_id"]))
            if segment is None or not segment.mask.any():
                masks.append(torch.zeros(size, size, dtype=torch.bool))
                strokes.append(torch.zeros(size, size, dtype=torch.bool))
                segment_ids.append(-1)
                continue
            masks.append(box.to_input(segment.mask))
            strokes.append(self._stroke(segment.mask, box, rng) if is_visual
                           else torch.zeros(size, size, dtype=torch.bool))
            segment_ids.append(int(segment.id))
        return Entry(text, spans, visual, torch.stack(masks), torch.stack(strokes), segment_ids, [-1] * len(phrases))


def _mean_colour(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return image[mask].reshape(-1, image.shape[-1]).astype(np.float64).mean(axis=0)
