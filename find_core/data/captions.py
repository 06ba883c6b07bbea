"""COCO captions in Karpathy's split (the image-text retrieval data of FIND)."""
from __future__ import annotations

from pathlib import Path

from .samples import CaptionSample, load_json, load_rgb, require_keys

__all__ = ["CocoCaptions"]


class CocoCaptions:
    """Images with all their captions, for one or several Karpathy splits.

    Directory layout::

        root/
          {filepath}/{filename}      e.g. val2014/COCO_val2014_000000391895.jpg
        karpathy_json                ``dataset_coco.json``: {images: [{filepath, filename, split,
                                     cocoid, sentences: [{raw, ...}]}]}

    ``karpathy_json`` is taken under ``root`` when relative. ``split`` is one split name
    (``train``, ``restval``, ``val``, ``test``) or a tuple of them; Karpathy's usual training set
    is ``("train", "restval")``. The sample's ``image_id`` is the COCO id (``cocoid``).
    """

    def __init__(self, root: Path, karpathy_json: Path = Path("dataset_coco.json"),
                 split: str | tuple[str, ...] = "val") -> None:
        self.root = Path(root)
        self.karpathy_json = self.root / karpathy_json
        splits = (split,) if isinstance(split, str) else tuple(split)
        data = load_json(self.karpathy_json, "Karpathy caption file")
        if not isinstance(data, dict) or "images" not in data:
            raise ValueError(f"{self.karpathy_json} lacks the top-level key 'images'")
        available = set()
        self._records: list[dict] = []
        for rec in data["images"]:
            require_keys(rec, ("filepath", "filename", "split", "cocoid", "sentences"),
                         f"image record in {self.karpathy_json}")
            available.add(rec["split"])
            if rec["split"] in splits:
                if not rec["sentences"]:
                    raise ValueError(f"image {rec['cocoid']} in {self.karpathy_json} has no captions")
                self._records.append(rec)
        missing = [s for s in splits if s not in available]
        if missing:
            raise ValueError(f"split(s) {missing} not in {self.karpathy_json} (has {sorted(available)})")
        self.image_ids: list[int] = [int(r["cocoid"]) for r in self._records]

    def __len__(self) -> int:
        return len(self._records)

    def captions_by_image(self) -> dict[int, list[str]]:
        """Every image's captions by COCO id, without reading an image."""
        return {int(rec["cocoid"]): [str(s["raw"]).strip() for s in rec["sentences"]] for rec in self._records}

    def __getitem__(self, index: int) -> CaptionSample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} captioned images")
        rec = self._records[index]
        image = load_rgb(self.root / rec["filepath"] / rec["filename"])
        captions = []
        for s in rec["sentences"]:
            require_keys(s, ("raw",), f"sentence of image {rec['cocoid']}")
            captions.append(str(s["raw"]).strip())
        return CaptionSample(int(rec["cocoid"]), image, captions)
