"""FindPipeline: the one inference API that ROS nodes, the 3D field, evaluation and users call.

Images are numpy H×W×3 uint8 RGB; results are dataclasses at the original resolution.

    pipe = FindPipeline.from_preset("tiny-test")
    result = pipe.ground(image, ["the red disc"])
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import load_config_beside, load_weights
from .config import ModelConfig, input_size_problem
from .instructions import Instruction, parse_instruction
from .interface.find_decoder import class_scores
from .interface.inputs import ImageFeatures, PredictionSet
from .model import FindModel
from .preprocess import Letterbox, letterbox
from .presets import preset_path
from .prompts import ClassPrompt, SpatialPrompt
from .results import (EmbeddingMap, GroundingResult, LocalizationResult, RetrievalResult, Segment,
                      SegmentationResult)
from .tasks import generic, grounding, interactive, interleave_grounding, interleave_retrieval, official, retrieval
from .tasks.common import best_queries

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device '{device}' requested but CUDA is not available")
    return torch.device(device)


@dataclass
class EncodedImage:
    """One image encoded once (`FindPipeline.encode`): its size, letterbox and features, and once a call
    has needed them, the image-only interface outputs. Every FindPipeline call that takes an image
    accepts this in its place, so several calls on one frame run the vision encoder once."""

    shape: tuple[int, int, int]                       # the original image's (H, W, 3)
    box: Letterbox
    features: ImageFeatures                           # batch of one
    image_outputs: PredictionSet | dict[str, torch.Tensor] | None = None


@dataclass(frozen=True)
class FrameGallery:
    """What ranking images against an instruction reads of each image, which does not depend on the
    instruction (`FindPipeline.gallery`): kept per frame, a live buffer or an album is ranked without
    encoding its images again. The normalised image embeddings [N, C], and for the official decoder,
    whose ranking also matches each entity with the image's best object query, the object queries'
    semantic outputs, normalised too [N, Q, C]."""

    images: np.ndarray
    objects: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 2 or (self.objects is not None and (self.objects.ndim != 3
                                                                   or len(self.objects) != len(self.images))):
            raise ValueError(f"a gallery is images [N, C] with objects [N, Q, C] or None, got {self.images.shape} "
                             f"and {None if self.objects is None else self.objects.shape}")

    def __len__(self) -> int:
        return len(self.images)

    def select(self, rows: np.ndarray | Sequence[int]) -> "FrameGallery":
        return FrameGallery(self.images[rows], None if self.objects is None else self.objects[rows])

    @classmethod
    def concat(cls, parts: Sequence["FrameGallery"]) -> "FrameGallery":
        objects = [p.objects for p in parts]
        return cls(np.concatenate([p.images for p in parts]),
                   None if any(o is None for o in objects) else np.concatenate(objects))


class FindPipeline:
    """``input_size``: the side frames are letterboxed to (None or 0: the model's training size,
    ``vision.input_size``). A model recognises objects at about the pixel size it was trained on, so
    when a camera sees them smaller, a larger input size brings them back to that scale, at a
    quadratic cost in time (``python -m training.evaluate_field --input-size`` measures the effect).
    Reference pictures (visual entities, class examples) keep the training size: a crop is scaled up
    to fill it anyway."""

    def __init__(self, model: FindModel, device: str = "auto", precision: str = "fp32", batch_size: int = 8,
                 input_size: int | None = None):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got '{precision}'")
        problem = input_size_problem(input_size)
        if problem:
            raise ValueError(problem)
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.precision = precision
        self.batch_size = batch_size
        self.input_size = input_size or model.config.vision.input_size
        self._class_cache: tuple[tuple, torch.Tensor] | None = None
        self._blank_features: ImageFeatures | None = None

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_config(cls, path: str | Path | ModelConfig, checkpoint: str | Path | None = None,
                    device: str = "auto", precision: str = "fp32", input_size: int | None = None) -> "FindPipeline":
        config = path if isinstance(path, ModelConfig) else ModelConfig.from_yaml(path)
        model = FindModel(config)
        if checkpoint is not None:
            load_weights(model, checkpoint)
        return cls(model, device, precision, input_size=input_size)

    @classmethod
    def from_preset(cls, name: str, checkpoint: str | Path | None = None, device: str = "auto",
                    precision: str = "fp32", input_size: int | None = None) -> "FindPipeline":
        return cls.from_config(preset_path(name), checkpoint, device, precision, input_size)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, device: str = "auto", precision: str = "fp32",
                        input_size: int | None = None) -> "FindPipeline":
        """A checkpoint folder carries its own config.yaml."""
        return cls.from_config(load_config_beside(checkpoint), checkpoint, device, precision, input_size)

    # ---- shared steps --------------------------------------------------------------------------
    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.precision])

    @torch.inference_mode()
    def encode(self, image: np.ndarray) -> EncodedImage:
        """Letterbox and encode one image once, for any number of the calls below."""
        with self._autocast():
            features, boxes = self._encode([image])
        return EncodedImage(tuple(image.shape), boxes[0], features)

    def _encode(self, images: Sequence[np.ndarray | EncodedImage]) -> tuple[ImageFeatures, list[Letterbox]]:
        """Features and letterboxes of the images; an EncodedImage brings its own."""
        arrays = [image for image in images if not isinstance(image, EncodedImage)]
        encoded: list[tuple[ImageFeatures, Letterbox]] = []
        if arrays:
            tensor, boxes = letterbox(arrays, self.input_size)
            parts = [self.model.encode_images(tensor[i:i + self.batch_size])
                     for i in range(0, len(tensor), self.batch_size)]
            features = ImageFeatures.cat(parts)
            encoded = [(features.select(slice(i, i + 1)), box) for i, box in enumerate(boxes)]
            if len(arrays) == len(images):
                return features, boxes
        fresh = iter(encoded)
        pairs = [(image.features, image.box) if isinstance(image, EncodedImage) else next(fresh) for image in images]
        return ImageFeatures.cat([f for f, _ in pairs]), [box for _, box in pairs]

    def _image_only(self, images: Sequence[np.ndarray | EncodedImage], features: ImageFeatures):
        """The image-only interface outputs (official: `seg` outputs; else the last prediction set),
        kept on a single EncodedImage for the next call on it."""
        single = images[0] if len(images) == 1 and isinstance(images[0], EncodedImage) else None
        if single is not None and single.image_outputs is not None:
            return single.image_outputs
        outputs = self._official_outputs(features) if self.model.official else self._image_sets(features)
        if single is not None:
            single.image_outputs = outputs
        return outputs

    def _image_sets(self, features: ImageFeatures) -> PredictionSet:
        """Last prediction set of the image-only forward (object masks, object and image embeddings)."""
        outputs = [self.model.run_interface(features.select(slice(i, i + self.batch_size)),
                                            [generic.SampleInputs()] * len(features.select(slice(i, i + self.batch_size))),
                                            generic.TASK)[-1]
                   for i in range(0, len(features), self.batch_size)]
        return PredictionSet(torch.cat([o.object_semantic for o in outputs]),
                             torch.cat([o.object_masks for o in outputs]),
                             torch.cat([o.image_semantic for o in outputs]),
                             torch.cat([o.source_semantic for o in outputs]),
                             torch.cat([o.source_valid for o in outputs]))

    def _official_outputs(self, features: ImageFeatures) -> dict[str, torch.Tensor]:
        """The official decoder's `seg` pass (no classes) over a batch, in chunks of batch_size."""
        parts = [official.image_outputs(self.model, features.select(slice(i, i + self.batch_size)))
                 for i in range(0, len(features), self.batch_size)]
        return {key: torch.cat([part[key] for part in parts]) for key in ("pred_masks", "pred_captions", "pred_retrievals")}

    def _pick_masks(self, sets: PredictionSet, b: int, box: Letterbox, labels: list[str],
                    kinds: list[str] | None = None) -> list[Segment]:
        count = int(sets.source_valid[b].sum())
        best, scores = best_queries(self.model, sets.source_semantic[b, :count], sets.object_semantic[b])
        return _segments(sets.object_masks[b, best], scores, box, labels, kinds)

    # ---- tasks ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def segment(self, image: np.ndarray | EncodedImage, classes: Sequence[str | ClassPrompt], mode: str = "panoptic",
                object_threshold: float | None = None) -> SegmentationResult:
        """Generic segmentation; classes as names, descriptions or ClassPrompt(example=...).
        `object_threshold` None: the model's default (0.5; the official decoder's test setting 0.8,
        whose instance mode also keeps the top-k (query, class) pairs as the official code does)."""
        prompts = [c if isinstance(c, ClassPrompt) else ClassPrompt(text=c) for c in classes]
        logits, masks = self.segment_scores(image, prompts)
        return self.decode_segments(mode, logits, masks, prompts, object_threshold)

    @torch.inference_mode()
    def segment_scores(self, image: np.ndarray | EncodedImage, prompts: Sequence[ClassPrompt]) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward for `segment`: class logits [Q, K+1] and mask logits [Q, H, W] at the image's size
        (decode them for any mode with `decode_segments`)."""
        with self._autocast():
            class_embeddings = self._class_embeddings(list(prompts))
            features, boxes = self._encode([image])
            if self.model.official:  # classes + "background" (the official no-object class), scored on the
                outputs = self._image_only([image], features)   # image-only `seg` pass (kept on an EncodedImage)
                logits = class_scores(outputs["pred_captions"][:1], class_embeddings, self.model.logit_scale)[0]
                masks = outputs["pred_masks"][0]
            else:
                sets = self._image_only([image], features)
                logits = generic.class_logits(self.model, sets.object_semantic[0], class_embeddings)
                masks = sets.object_masks[0]
            return logits, boxes[0].to_original(masks)

    def decode_segments(self, mode: str, logits: torch.Tensor, masks: torch.Tensor, prompts: Sequence[ClassPrompt],
                        object_threshold: float | None = None) -> SegmentationResult:
        """`segment`'s decoding of `segment_scores` outputs, with the model's test settings."""
        if self.model.official:  # the official test settings: threshold 0.8, top-k instances
            threshold = official.OBJECT_MASK_THRESHOLD if object_threshold is None else object_threshold
            return generic.decode(mode, logits, masks, list(prompts), threshold, official.OVERLAP_THRESHOLD,
                                  instance_topk=self.model.config.interface.num_object_queries)
        return generic.decode(mode, logits, masks, list(prompts), 0.5 if object_threshold is None else object_threshold)

    def _blank(self) -> ImageFeatures:
        """The official entry's blank-image features: they depend on the weights alone, so (like the
        class embeddings) they are computed once per pipeline."""
        if self._blank_features is None:
            self._blank_features = official.blank_image_features(self.model)
        return self._blank_features

    def _class_embeddings(self, prompts: list[ClassPrompt]) -> torch.Tensor:
        """Class embeddings do not depend on the image: cache them for a repeated text class list."""
        key = tuple(p.text for p in prompts) if all(p.example is None for p in prompts) else None
        if key is not None and self._class_cache is not None and self._class_cache[0] == key:
            return self._class_cache[1]
        if self.model.official:
            if key is None:
                raise official.unsupported("a class given by an example picture")
            embeddings = official.class_embeddings(self.model, list(key) + [official.NO_OBJECT_CLASS])
        else:
            embeddings = generic.class_embeddings(self.model, prompts)
        if key is not None:
            self._class_cache = (key, embeddings)
        return embeddings

    @torch.inference_mode()
    def ground(self, image: np.ndarray | EncodedImage, phrases: Sequence[str]) -> GroundingResult:
        """Referring / grounded segmentation: one mask per phrase."""
        with self._autocast():
            features, boxes = self._encode([image])
            if self.model.official:
                masks, scores, _ = official.ground(self.model, features, list(phrases))
                return GroundingResult(_segments(masks, scores, boxes[0], list(phrases)))
            sets = self.model.run_interface(features, grounding.samples(self.model, [list(phrases)]), grounding.TASK)[-1]
            return GroundingResult(self._pick_masks(sets, 0, boxes[0], list(phrases)))

    @torch.inference_mode()
    def interactive(self, image: np.ndarray | EncodedImage, objects: Sequence[Sequence[SpatialPrompt]]) -> GroundingResult:
        """Interactive segmentation: objects[i] holds the clicks / boxes / scribbles of object i."""
        with self._autocast():
            features, boxes = self._encode([image])
            height, width = image.shape[:2]
            regions = [[(boxes[0].to_input(p.rasterize(height, width), self.model.device), p.positive) for p in prompts]
                       for prompts in objects]
            labels = [f"object {i}" for i in range(len(objects))]
            if self.model.official:
                masks, scores = official.interactive(self.model, features, regions)
                return GroundingResult(_segments(masks, scores, boxes[0], labels))
            samples = interactive.samples(self.model, features, [regions])
            sets = self.model.run_interface(features, samples, interactive.TASK)[-1]
            return GroundingResult(self._pick_masks(sets, 0, boxes[0], labels))

    @torch.inference_mode()
    def embed_pixels(self, image: np.ndarray | EncodedImage) -> EmbeddingMap:
        """Per-pixel embeddings in the semantic space text is embedded in: each pixel mixes the
        semantic embeddings of the object queries by their mask probabilities there."""
        with self._autocast():
            features, boxes = self._encode([image])
            outputs = self._image_only([image], features)
            if self.model.official:
                masks, semantic = outputs["pred_masks"][0], outputs["pred_captions"][0]
            else:
                masks, semantic = outputs.object_masks[0], outputs.object_semantic[0]
            weights = masks.float().softmax(dim=0)                       # [Q, h, w]
            semantic = F.normalize(semantic.float(), dim=-1)             # [Q, C]
            pixels = F.normalize(torch.einsum("qhw,qc->hwc", weights, semantic), dim=-1)
        box = boxes[0]
        stride = box.size // features.mask_features.shape[-1]   # 4 for every pixel decoder here
        rows, cols = box.valid_cells(stride)
        return EmbeddingMap(pixels[:rows, :cols].cpu().numpy().astype(np.float32), stride / box.scale)

    @torch.inference_mode()
    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """[N, C] normalised text embeddings, comparable with embed_pixels and embed_images."""
        with self._autocast():
            if self.model.official:
                embeddings = official.class_embeddings(self.model, list(texts))
            else:
                embeddings = generic.class_embeddings(self.model, [ClassPrompt(text=t) for t in texts])
        return F.normalize(embeddings.float(), dim=-1).cpu().numpy()

    def embed_images(self, images: Sequence[np.ndarray | EncodedImage]) -> np.ndarray:
        """[N, C] normalised image-level embeddings (the image query), for retrieval and frame buffers."""
        return self.gallery(images).images

    @torch.inference_mode()
    def gallery(self, images: Sequence[np.ndarray | EncodedImage]) -> FrameGallery:
        """What `interleave_retrieve` and `localize` read of each image, to keep per frame."""
        with self._autocast():
            features, _ = self._encode(images)
            outputs = self._image_only(images, features)
            if self.model.official:   # the ranking compares unit vectors: the objects are kept normalised
                embeddings = outputs["pred_retrievals"][:, 0]
                objects = official.unit(outputs["pred_captions"].float()).cpu().numpy()
            else:
                embeddings, objects = outputs.image_semantic, None
        return FrameGallery(F.normalize(embeddings.float(), dim=-1).cpu().numpy(), objects)

    @torch.inference_mode()
    def embed_instruction(self, instruction: Instruction | str,
                          frames: Mapping[float, np.ndarray] | None = None) -> np.ndarray:
        """[C] normalised embedding of an (interleaved) instruction, comparable with embed_images."""
        instruction = instruction if isinstance(instruction, Instruction) else parse_instruction(instruction)
        with self._autocast():
            if self.model.official:  # the entry part of the official ranking (see interleave_retrieve)
                embedding = official.entry_embeddings(self.model, instruction, frames, self._blank())[0]
            else:
                embedding = interleave_retrieval.entry_embeddings(self.model, [instruction], frames)[0]
        return F.normalize(embedding.float(), dim=-1).cpu().numpy()

    def _scores(self, queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
        scale = float(self.model.logit_scale.exp().clamp(max=100.0))
        return scale * queries @ gallery.T

    @torch.inference_mode()
    def embed_captions(self, captions: Sequence[str]) -> np.ndarray:
        """[N, C] normalised caption embeddings (the caption query), comparable with embed_images."""
        with self._autocast():
            if self.model.official:
                text = official.caption_embeddings(self.model, list(captions))
            else:
                text = retrieval.caption_embeddings(self.model, list(captions))
        return F.normalize(text.float(), dim=-1).cpu().numpy()

    @torch.inference_mode()
    def retrieve(self, images: Sequence[np.ndarray], captions: Sequence[str]) -> RetrievalResult:
        """Image–text retrieval: similarity of every caption to every image."""
        return RetrievalResult(self._scores(self.embed_captions(captions), self.embed_images(images)))

    @torch.inference_mode()
    def interleave_retrieve(self, instruction: Instruction | str, images: Sequence[np.ndarray] | None = None,
                            gallery: FrameGallery | None = None,
                            frames: Mapping[float, np.ndarray] | None = None) -> RetrievalResult:
        """Rank images (or their `gallery`, kept from an earlier call) against an interleaved instruction.

        The official decoder ranks as its evaluation does, by cos(entry, image) + 0.5 x how well each
        entity matches the image's best object query, so its gallery carries the object queries."""
        if (images is None) == (gallery is None):
            raise ValueError("give either images or their gallery")
        gallery = self.gallery(images) if images is not None else gallery
        if self.model.official:
            return RetrievalResult(self.official_interleave_scores(instruction, gallery, frames)[None])
        return RetrievalResult(self._scores(self.embed_instruction(instruction, frames)[None], gallery.images))

    @torch.inference_mode()
    def interleave_ground(self, image: np.ndarray | EncodedImage, instruction: Instruction | str,
                          frames: Mapping[float, np.ndarray] | None = None) -> GroundingResult:
        """One mask per entity of the instruction (text or visual) in `image`."""
        instruction = instruction if isinstance(instruction, Instruction) else parse_instruction(instruction)
        labels = [e.label or instruction.phrase(i) for i, e in enumerate(instruction.entities)]
        if self.model.official:
            with self._autocast():
                features, boxes = self._encode([image])
                masks, scores = official.interleave_ground(self.model, features, instruction, frames)
                kinds = [e.kind for e in instruction.entities]
                return GroundingResult(_segments(masks, scores, boxes[0], labels, kinds))
        with self._autocast():
            features, boxes = self._encode([image])
            samples = interleave_grounding.samples(self.model, [instruction], frames)
            sets = self.model.run_interface(features, samples, interleave_grounding.TASK)[-1]
            return GroundingResult(self._pick_masks(sets, 0, boxes[0], labels,
                                                    [e.kind for e in instruction.entities]))

    @torch.inference_mode()
    def localize(self, frames: Sequence[np.ndarray], instruction: Instruction | str,
                 gallery: FrameGallery | None = None,
                 stamps: Sequence[float] | None = None) -> LocalizationResult:
        """Rank `frames` against the instruction, then ground its entities in the best one.
        `gallery` (`gallery` of the same frames, kept as they arrived) ranks a live buffer without
        encoding it again, so only the best frame is encoded; `stamps` lets visual entities refer to
        buffered frames by stamp."""
        if not frames:
            raise ValueError("localize needs at least one frame")
        if gallery is not None and len(gallery) != len(frames):
            raise ValueError(f"the gallery has {len(gallery)} rows for {len(frames)} frames")
        instruction = instruction if isinstance(instruction, Instruction) else parse_instruction(instruction)
        lookup = dict(zip(stamps, frames)) if stamps is not None else None
        if gallery is None:   # encode the frames once, for the ranking and the grounding
            frames = self._encode_each(frames)
            gallery = self.gallery(frames)
        if self.model.official:
            return self._official_localize(frames, instruction, lookup, gallery)
        scores = self.interleave_retrieve(instruction, gallery=gallery, frames=lookup).similarity[0]
        best = int(np.argmax(scores))
        return LocalizationResult(scores, best, self.interleave_ground(frames[best], instruction, lookup))

    @torch.inference_mode()
    def _encode_each(self, images: Sequence[np.ndarray]) -> list[EncodedImage]:
        """`encode` of each image, in batches."""
        with self._autocast():
            features, boxes = self._encode(images)
        return [EncodedImage(tuple(image.shape), box, features.select(slice(i, i + 1)))
                for i, (image, box) in enumerate(zip(images, boxes))]

    def _official_localize(self, frames: Sequence[np.ndarray | EncodedImage], instruction: Instruction,
                           lookup: Mapping[float, np.ndarray] | None, gallery: FrameGallery) -> LocalizationResult:
        """`localize` on the official decoder with the entry (its tokens and its visual entities' passes)
        prepared once for both the ranking and the grounding."""
        labels = [e.label or instruction.phrase(i) for i, e in enumerate(instruction.entities)]
        with self._autocast():
            entry = official.prepare_entry(self.model, instruction, lookup)
            embedding, entities = official.embed_entry(self.model, entry, blank=self._blank())
            scores = official.rank(self._official_terms(embedding, entities, gallery)).cpu().numpy()
            best = int(np.argmax(scores))
            features, boxes = self._encode([frames[best]])
            masks, probabilities = official.ground_entry(self.model, features, entry)
            grounding = GroundingResult(_segments(masks, probabilities, boxes[0], labels,
                                                  [e.kind for e in instruction.entities]))
        return LocalizationResult(scores, best, grounding)

    def _official_terms(self, entry: torch.Tensor, entities: torch.Tensor, gallery: FrameGallery) -> torch.Tensor:
        """[2, N] `official.interleave_score_terms` of an entry's embeddings against a kept gallery (its
        rows are unit vectors already)."""
        if gallery.objects is None:
            raise ValueError("the official interleave ranking reads each image's object queries: give a "
                             "gallery made by FindPipeline.gallery with this model, not bare image embeddings")
        device = self.model.device
        return official.unit_score_terms(official.unit(entry.float()), official.unit(entities.float()),
                                         torch.from_numpy(gallery.images).to(device),
                                         torch.from_numpy(gallery.objects).to(device))

    def official_interleave_scores(self, instruction: Instruction | str, gallery: FrameGallery,
                                   frames: Mapping[float, np.ndarray] | None = None) -> np.ndarray:
        """[N] official ranking scores of a `gallery` against an instruction."""
        return official.rank(self.official_interleave_terms(instruction, gallery, frames))

    @torch.inference_mode()
    def official_interleave_terms(self, instruction: Instruction | str, gallery: FrameGallery,
                                  frames: Mapping[float, np.ndarray] | None = None) -> np.ndarray:
        """[2, N] the official ranking's two terms (`official.interleave_score_terms`): entry-image and
        entity-object, for a `gallery` against an instruction."""
        instruction = instruction if isinstance(instruction, Instruction) else parse_instruction(instruction)
        with self._autocast():
            entry, entities = official.entry_embeddings(self.model, instruction, frames, self._blank())
            terms = self._official_terms(entry, entities, gallery)
        return terms.cpu().numpy()


def _segments(masks: torch.Tensor, scores: torch.Tensor, box: Letterbox, labels: list[str],
              kinds: list[str] | None = None) -> list[Segment]:
    """One Segment per row of mask logits [N, h, w] (input resolution), at the original resolution."""
    binary = box.to_original(masks) > 0
    return [Segment(labels[i], float(scores[i]), binary[i].cpu().numpy(), i, i + 1, kind=kinds[i] if kinds else "text")
            for i in range(len(labels))]
