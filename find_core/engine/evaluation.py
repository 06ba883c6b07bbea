"""Evaluation of a FIND model on every dataset found under a data root.

Each task's data is looked for in its usual place (see find_core.data); what is absent is reported
under "skipped" instead of failing. Results are in percent (NoC in clicks) and come from the
metrics of find_core.metrics. Generic and interactive segmentation run the model directly so that an
image is encoded once for its three segmentation modes / all its clicks; everything else goes
through the public FindPipeline calls, so it measures what users get.
"""
from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ConfigError
from ..data import CocoCaptions, CocoPanoptic, FindBenchEntities, RefCocoG, load_retrieval_gallery
from ..data.samples import EntitySample
from ..instructions import Entity, Instruction, VisualReference
from ..interface.inputs import ImageFeatures
from ..metrics import (GroundingEvaluator, InteractiveEvaluator, MaskAPEvaluator, PanopticEvaluator, PanopticSegment,
                       SemanticEvaluator, image_text_retrieval, interleave_retrieval, mask_iou, next_click)
from ..pipeline import PRECISIONS, FindPipeline, FrameGallery
from ..preprocess import letterbox
from ..prompts import ClassPrompt, SpatialPrompt
from ..tasks import generic, interactive, official
from ..tasks.common import best_queries
from .batches import entity_instruction
from .criterion import seeded
from ..tasks.interactive import positive_stroke
from .config import EvalConfig, InteractiveConfig

OFFICIAL_VISUAL_PROB = 0.5   # INTERLEAVE.VISUAL_PROB of the official config

IGNORE = 255
CHUNK = 16


def _log_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def evaluate(pipeline: FindPipeline, root: str | Path, config: EvalConfig | None = None,
             log: Callable[[str], None] = _log_stderr) -> dict[str, Any]:
    """Every metric the data under `root` allows, as one JSON-ready dict (NaN → None)."""
    config = config or EvalConfig()
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    runner = _Runner(pipeline, root, config, log)
    results: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for task, available, run in runner.plan():
        if available is not True:
            skipped[task] = available
            continue
        log(f"evaluating {task} ...")
        with seeded(config.seed, pipeline.device):  # prompt points are drawn from torch's RNG: same figures every run
            results[task] = run()
    results["skipped"] = skipped
    results["meta"] = {"data": str(root), "device": str(pipeline.device), "precision": pipeline.precision}
    return _json_ready(results)


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def own_stroke_instruction(sample: EntitySample, rng: np.random.Generator, key: str) -> Instruction:
    """An entry as the official FIND-Bench grounding evaluation gives it (grounding_coco_entity_mapper):
    each entity visual with probability VISUAL_PROB, as a stroke drawn on its own instance in the image."""
    entities = []
    for phrase in sample.phrases:
        if rng.random() < OFFICIAL_VISUAL_PROB and phrase.mask.any():
            stroke = positive_stroke(phrase.mask, rng, InteractiveConfig())
            entities.append(Entity(phrase.start, phrase.end, "visual", VisualReference(image=sample.image, mask=stroke)))
        else:
            entities.append(Entity(phrase.start, phrase.end, "text"))
    return Instruction(text=sample.sentence, entities=tuple(entities), id=key)


def _limit(count: int, config: EvalConfig) -> range:
    return range(count if config.max_images is None else min(count, config.max_images))


def thing_named_right(logits: torch.Tensor, masks: torch.Tensor, things: list[tuple[np.ndarray, int]]) -> list[bool]:
    """Thing accuracy of one image: for each ground-truth thing (mask, class index), whether the query
    whose mask overlaps it best (IoU of mask logits > 0) names its class (argmax over the K classes,
    the no-object column left out). Measures recognition apart from the panoptic merging."""
    if not things:
        return []
    predicted = (masks > 0).flatten(1).cpu()                                     # [Q, HW]
    classes = logits[:, : logits.shape[1] - 1].argmax(dim=1).cpu()              # [Q]
    right = []
    for mask, label in things:
        truth = torch.from_numpy(mask).flatten()
        union = (predicted | truth).sum(1).clamp(min=1)
        best = int(((predicted & truth).sum(1) / union).argmax())
        right.append(int(classes[best]) == label)
    return right


class _Runner:
    def __init__(self, pipeline: FindPipeline, root: Path, config: EvalConfig, log: Callable[[str], None]):
        self.pipe, self.model, self.root, self.config, self.log = pipeline, pipeline.model, root, config, log

    def _split(self, specific: str | None) -> str:
        return specific or self.config.split

    def plan(self) -> list[tuple[str, str | bool, Callable[[], dict[str, Any]]]]:
        """(task, True or why it is skipped, how to run it) for every task."""
        c = self.config
        panoptic = self.root / "annotations" / f"panoptic_{self._split(c.panoptic_split)}.json"
        refcoco = self.root / "refcocog" / "instances.json"
        captions = self.root / c.captions_file
        entity, gallery = self._entity_files()

        def have(*paths: Path) -> str | bool:
            missing = [str(p) for p in paths if not p.is_file()]
            return True if not missing else f"not found: {', '.join(missing)}"

        plan = [
            ("generic", have(panoptic), self.generic),
            ("interactive", have(panoptic), self.interactive),
            ("grounding", have(refcoco), self.grounding),
            ("retrieval", have(captions), self.retrieval),
            ("interleave_grounding", have(entity), self.interleave_grounding),
            ("interleave_retrieval", have(entity, gallery), self.interleave_retrieval),
        ]
        if c.tasks is None:
            return plan
        unknown = sorted(set(c.tasks) - {task for task, _, _ in plan})
        if unknown:
            raise ConfigError(f"eval.tasks: unknown {unknown}; the tasks are {[task for task, _, _ in plan]}")
        return [(task, available if task in c.tasks else "not asked (eval.tasks)", run) for task, available, run in plan]

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        autocast = contextlib.nullcontext() if self.pipe.precision == "fp32" else \
            torch.autocast(self.pipe.device.type, dtype=PRECISIONS[self.pipe.precision])
        with torch.inference_mode(), autocast:
            yield

    # ---- generic segmentation: PQ, mask AP, mIoU from one forward per image ------------------------
    def generic(self) -> dict[str, Any]:
        data = CocoPanoptic(self.root, self._split(self.config.panoptic_split))
        prompts = [ClassPrompt(text=c.name, isthing=c.isthing) for c in data.categories]
        category_ids = [c.id for c in data.categories]
        index = {c.id: i for i, c in enumerate(data.categories)}
        panoptic = PanopticEvaluator({c.id: c.isthing for c in data.categories})
        things = [c.id for c in data.categories if c.isthing]
        mask_ap = MaskAPEvaluator(things) if things else None
        semantic = SemanticEvaluator(len(prompts), IGNORE)
        count, named = 0, []
        for i in _limit(len(data), self.config):
            sample = data[i]
            logits, masks = self.pipe.segment_scores(sample.image, prompts)
            outputs = {mode: self.pipe.decode_segments(mode, logits, masks, prompts) for mode in generic.MODES}
            named += thing_named_right(logits, masks, [(s.mask, index[s.category_id]) for s in sample.segments
                                                       if s.category_id in things and not s.iscrowd])
            gt_ids = data.load_id_map(sample.image_id)
            gt_segments = [PanopticSegment(s.id, s.category_id, s.iscrowd) for s in sample.segments]
            pan = outputs["panoptic"]
            panoptic.add(pan.label_map.astype(np.int64),
                         [PanopticSegment(s.segment_id, category_ids[s.class_index]) for s in pan.segments],
                         gt_ids, gt_segments)
            if mask_ap is not None:
                gt_things = [s for s in sample.segments if s.category_id in things]
                mask_ap.add_ground_truth(sample.image_id, [s.mask for s in gt_things],
                                         [s.category_id for s in gt_things], [s.iscrowd for s in gt_things])
                predicted = [s for s in outputs["instance"].segments if category_ids[s.class_index] in things]
                mask_ap.add_predictions(sample.image_id, [s.mask.astype(bool) for s in predicted],
                                        [category_ids[s.class_index] for s in predicted], [s.score for s in predicted])
            truth = np.full(gt_ids.shape, IGNORE, dtype=np.int64)
            for segment in sample.segments:
                if not segment.iscrowd:
                    truth[segment.mask] = index[segment.category_id]
            semantic.add(outputs["semantic"].label_map.astype(np.int64) - 1, truth)
            count += 1
        result = {**panoptic.result().as_dict()}
        if mask_ap is not None:
            result.update(mask_ap.result().as_dict())
        result.update(semantic.result().as_dict())
        result["thing_accuracy"] = 100.0 * float(np.mean(named)) if named else None
        result["things"] = len(named)
        result["images"] = count
        return result

    # ---- interactive: simulated clicks (next_click), IoU@1 and NoC@85/90 ---------------------------
    def interactive(self) -> dict[str, Any]:
        data = CocoPanoptic(self.root, self._split(self.config.panoptic_split))
        evaluator = InteractiveEvaluator(self.config.max_clicks)
        for i in _limit(len(data), self.config):
            sample = data[i]
            objects = [s for s in sample.segments if not s.iscrowd][: self.config.max_interactive_objects]
            if not objects:
                continue
            with self._inference():
                tensor, boxes = letterbox([sample.image], self.model.config.vision.input_size)
                features = self.model.encode_images(tensor)
            height, width = sample.image.shape[:2]
            for segment in objects:
                prediction = np.zeros_like(segment.mask)
                regions, ious = [], []
                for _ in range(self.config.max_clicks):
                    y, x, positive = next_click(prediction, segment.mask)
                    click = SpatialPrompt.point(x, y, positive)
                    regions.append((boxes[0].to_input(click.rasterize(height, width), self.model.device), positive))
                    with self._inference():
                        mask = self._interactive_mask(features, regions)
                        prediction = (boxes[0].to_original(mask[None]) > 0)[0].cpu().numpy()
                    ious.append(mask_iou(prediction, segment.mask))
                    if ious[-1] >= 0.9:
                        break
                evaluator.add(ious)
        if not len(evaluator):
            return {"objects": 0}
        return {**evaluator.result().as_dict(), "objects": len(evaluator)}

    def _interactive_mask(self, features: ImageFeatures, regions: list) -> torch.Tensor:
        """The mask logits [h, w] for one object's clicks so far, on features encoded once."""
        if self.model.official:   # all clicks as strokes of one prompt, the official first round
            return official.interactive(self.model, features, [regions])[0][0]
        samples = interactive.samples(self.model, features, [[regions]])
        sets = self.model.run_interface(features, samples, interactive.TASK)[-1]
        best, _ = best_queries(self.model, sets.source_semantic[0, :1], sets.object_semantic[0])
        return sets.object_masks[0, best][0]

    # ---- referring segmentation (RefCOCOg): cIoU / mIoU --------------------------------------------
    def grounding(self) -> dict[str, Any]:
        image_dir = Path(self.config.refcoco_image_dir).expanduser() if self.config.refcoco_image_dir else None
        data = RefCocoG(self.root, self._split(self.config.refcoco_split), image_dir=image_dir)
        evaluator = GroundingEvaluator()
        for i in _limit(len(data), self.config):
            sample = data[i]
            result = self.pipe.ground(sample.image, [sample.sentence])
            evaluator.add(result.segments[0].mask.astype(bool), sample.mask)
        return {**evaluator.result().as_dict(), "samples": len(evaluator)}

    # ---- image-text retrieval (Karpathy captions): IR@K / TR@K -------------------------------------
    def retrieval(self) -> dict[str, Any]:
        data = CocoCaptions(self.root, Path(self.config.captions_file), self._split(self.config.captions_split))
        image_embeddings, captions, owners = [], [], []
        indices = list(_limit(len(data), self.config))
        for start in range(0, len(indices), CHUNK):
            samples = [data[i] for i in indices[start:start + CHUNK]]
            image_embeddings.append(self.pipe.embed_images([s.image for s in samples]))
            for offset, s in enumerate(samples):
                owners += [start + offset] * len(s.captions)
                captions += s.captions
        text = [self.pipe.embed_captions(captions[start:start + CHUNK]) for start in range(0, len(captions), CHUNK)]
        similarity = np.concatenate(text) @ np.concatenate(image_embeddings).T
        return {**image_text_retrieval(similarity, owners).as_dict(), "images": len(indices),
                "captions": len(captions)}

    # ---- FIND-Bench interleave grounding and retrieval ---------------------------------------------
    def _entity_files(self) -> tuple[Path, Path]:
        """The FIND-Bench entries and retrieval gallery: the config's files, else the split's defaults."""
        split = self._split(self.config.entity_split)
        entity = self.config.entity_json or f"annotations/entity_{split}.json"
        gallery = self.config.retrieval_json or f"annotations/retrieval_{split}.json"
        return self.root / entity, self.root / gallery

    def _entities(self) -> FindBenchEntities:
        # relative to the root, which FindBenchEntities prepends (an absolute path stays itself)
        entity = self._entity_files()[0]
        entity = entity.relative_to(self.root) if entity.is_relative_to(self.root) else entity
        return FindBenchEntities(self.root, self._split(self.config.entity_split), entity_json=entity,
                                 reference_view=self.config.reference_view,
                                 reference_visual_prob=self.config.reference_visual_prob)

    def interleave_grounding(self) -> dict[str, Any]:
        """cIoU over every entity, and apart for text and visual entities. Visual entities as
        `eval.interleave_visual` says: as the official FIND-Bench grounding evaluation gives them, a
        stroke on the entity's own instance, or each file reference (another image, `eval.reference_view`)."""
        data = self._entities()
        evaluators = {kind: GroundingEvaluator() for kind in ("all", "text", "visual")}
        for i in _limit(len(data), self.config):
            sample = data[i]
            if self.config.interleave_visual == "own_stroke":
                instruction = own_stroke_instruction(sample, np.random.default_rng([self.config.seed, i]),
                                                     f"entry-{i}")
            else:
                instruction = entity_instruction(sample, f"entry-{i}")
            result = self.pipe.interleave_ground(sample.image, instruction)
            for segment, phrase, entity in zip(result.segments, sample.phrases, instruction.entities, strict=True):
                for kind in ("all", entity.kind):
                    evaluators[kind].add(segment.mask.astype(bool), phrase.mask)
        total = evaluators.pop("all")
        view = {"reference_view": self.config.reference_view, **self._drawn()} \
            if self.config.interleave_visual == "reference" else {}
        return {**total.result().as_dict(), "entities": len(total), "visual_entities": self.config.interleave_visual, **view,
                **{kind: {**e.result().as_dict(), "entities": len(e)} for kind, e in evaluators.items() if len(e)}}

    def interleave_retrieval(self) -> dict[str, Any]:
        data = self._entities()
        gallery = load_retrieval_gallery(self._entity_files()[1])
        position = {image_id: k for k, image_id in enumerate(gallery)}
        kept = FrameGallery.concat([self.pipe.gallery([data.panoptic.load_image(image_id) for image_id in
                                                       gallery[start:start + CHUNK]])
                                    for start in range(0, len(gallery), CHUNK)])
        if self.model.official:   # the official ranking: entry-image and entity-object similarities
            score = lambda instruction: self.pipe.official_interleave_terms(instruction, kept)  # noqa: E731
        else:
            score = lambda instruction: (self.pipe.embed_instruction(instruction) @ kept.images.T)[None]  # noqa: E731
        rows, targets = [], []
        for i in _limit(len(data), self.config):
            sample = data[i]
            if sample.image_id not in position:
                continue
            rows.append(score(entity_instruction(sample, f"entry-{i}")))
            targets.append(position[sample.image_id])
        if not rows:
            raise ValueError(f"no entry of {self._entity_files()[0]} has its image in the retrieval gallery")
        scores = np.stack(rows, axis=1)            # [terms, entries, gallery]
        # the official ranking's terms each alone too: which of them a visual entity costs
        by_term = {name: interleave_retrieval(terms, targets) for name, terms in
                   zip(("entry_image", "entity_object"), scores)} if self.model.official else {}
        ranked = official.rank(scores) if self.model.official else scores[0]
        return {**interleave_retrieval(ranked, targets), "entries": len(rows), "gallery": len(gallery),
                "reference_view": self.config.reference_view, **self._drawn(),
                **({"by_term": by_term} if by_term else {})}

    def _drawn(self) -> dict[str, float]:
        """The share of references given as images, where it is not upstream's (0.5, EvalConfig's default)."""
        drawn = self.config.reference_visual_prob
        return {"reference_visual_prob": drawn} if drawn != EvalConfig.reference_visual_prob else {}
