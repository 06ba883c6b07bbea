"""RefCOCOg (umd split) reader: referring expressions over COCO instance masks.

The refs file of the ``refer`` toolkit is a Python-2 pickle. Unpickling can run arbitrary code,
so :func:`load_refs` uses an unpickler that only builds builtin containers and scalars and
rejects every other global; a JSON file with the same list-of-refs structure is also accepted
(and preferred when both exist).
"""
from __future__ import annotations

import contextlib
import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from .samples import ReferringSample, load_json, load_rgb, require_keys

__all__ = ["RefCocoG", "Ref", "load_refs", "RestrictedUnpickler"]

# The only globals a refs pickle may name (Python 2 spells the module ``__builtin__``).
_ALLOWED = {"dict", "list", "tuple", "set", "frozenset", "str", "bytes", "int", "float", "bool", "complex"}
_PY2_ALIASES = {"unicode": "str", "long": "int"}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that refuses any global except builtin containers and scalars."""

    def find_class(self, module: str, name: str) -> Any:
        name = _PY2_ALIASES.get(name, name) if module == "__builtin__" else name
        if module in ("builtins", "__builtin__") and name in _ALLOWED:
            import builtins

            return getattr(builtins, name)
        raise pickle.UnpicklingError(f"refs pickle names the global {module}.{name}, which is not allowed")


def _decode_bytes(obj: Any) -> Any:
    """Python-2 ``str`` objects arrive as bytes; turn them (and dict keys) into text."""
    if isinstance(obj, bytes):
        try:
            return obj.decode("utf-8")
        except UnicodeDecodeError:
            return obj.decode("latin-1")
    if isinstance(obj, dict):
        return {_decode_bytes(k): _decode_bytes(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_decode_bytes(v) for v in obj)
    return obj


@dataclass(frozen=True)
class Ref:
    """One referred object and its expressions."""

    ref_id: int
    ann_id: int
    image_id: int
    split: str
    category_id: int
    sentences: tuple[str, ...]


def load_refs(path: Path) -> list[Ref]:
    """Read a refs file (``.p`` pickle through :class:`RestrictedUnpickler`, or ``.json``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"refs file not found: {path}")
    if path.suffix == ".json":
        raw = load_json(path, "refs file")
    else:
        with path.open("rb") as f:
            raw = _decode_bytes(RestrictedUnpickler(f, encoding="bytes").load())
    if not isinstance(raw, list):
        raise ValueError(f"refs file {path} must hold a list of refs, got {type(raw).__name__}")
    refs = []
    for r in raw:
        require_keys(r, ("ref_id", "ann_id", "image_id", "split", "sentences", "category_id"), f"ref in {path}")
        sentences = []
        for s in r["sentences"]:
            require_keys(s, ("sent",), f"sentence of ref {r['ref_id']} in {path}")
            sentences.append(str(s["sent"]))
        refs.append(
            Ref(int(r["ref_id"]), int(r["ann_id"]), int(r["image_id"]), str(r["split"]), int(r["category_id"]),
                tuple(sentences))
        )
    return refs


class RefCocoG:
    """Referring segmentation samples, one per (ref, sentence) of ``split``.

    Directory layout (the ``refer`` toolkit's ``data/`` folder)::

        root/
          refcocog/
            instances.json        COCO instances: images (file_name), annotations (segmentation), categories
            refs(umd).json        list of refs ... or the original pickle ``refs(umd).p``
        image_dir/                images named by ``instances.json`` ``file_name`` (COCO ``train2014``)

    ``image_dir`` defaults to ``root`` (``file_name`` may hold a sub-folder); ``split`` is one of the
    refs' split names (``train`` / ``val`` / ``test`` for umd). Masks come from pycocotools
    (polygons, RLE or uncompressed RLE all work).
    """

    def __init__(
        self,
        root: Path,
        split: str,
        *,
        image_dir: Path | None = None,
        dataset: str = "refcocog",
        split_by: str = "umd",
    ) -> None:
        root = Path(root)
        folder = root / dataset
        self.split = split
        self.image_dir = Path(image_dir) if image_dir is not None else root
        candidates = [folder / f"refs({split_by}).json", folder / f"refs({split_by}).p"]
        refs_path = next((p for p in candidates if p.is_file()), None)
        if refs_path is None:
            raise FileNotFoundError(f"no refs file: expected one of {[str(p) for p in candidates]}")
        instances = folder / "instances.json"
        if not instances.is_file():
            raise FileNotFoundError(f"COCO instances file not found: {instances}")
        with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints progress
            self.coco = COCO(str(instances))

        all_refs = load_refs(refs_path)
        splits = sorted({r.split for r in all_refs})
        if split not in splits:
            raise ValueError(f"split {split!r} not in {refs_path} (has {splits})")
        self.refs = [r for r in all_refs if r.split == split]
        for r in self.refs:
            if r.ann_id not in self.coco.anns:
                raise ValueError(f"ref {r.ref_id} points at ann_id {r.ann_id}, absent from {instances}")
            if r.image_id not in self.coco.imgs:
                raise ValueError(f"ref {r.ref_id} points at image {r.image_id}, absent from {instances}")
            if self.coco.anns[r.ann_id]["image_id"] != r.image_id:
                raise ValueError(f"ref {r.ref_id}: ann {r.ann_id} belongs to another image than {r.image_id}")
        self._index = [(i, j) for i, r in enumerate(self.refs) for j in range(len(r.sentences))]

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, index: int) -> ReferringSample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} referring expressions")
        ref_index, sent_index = self._index[index]
        ref = self.refs[ref_index]
        image = load_rgb(self.image_dir / self.coco.imgs[ref.image_id]["file_name"])
        mask = self.mask(ref.ann_id)
        if mask.shape != image.shape[:2]:
            raise ValueError(f"mask of ann {ref.ann_id} is {mask.shape}, image {ref.image_id} is {image.shape[:2]}")
        return ReferringSample(ref.image_id, image, ref.sentences[sent_index], mask)

    def mask(self, ann_id: int) -> np.ndarray:
        """Bool mask of one COCO instance annotation (non-empty, else ``ValueError``)."""
        mask = self.coco.annToMask(self.coco.anns[ann_id]).astype(bool)
        if not mask.any():
            raise ValueError(f"annotation {ann_id} has an empty mask")
        return mask
