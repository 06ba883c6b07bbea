"""Dataset readers against a synthetic dataset they did not write, checked with independent decoding."""
from __future__ import annotations

import filecmp
import json
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from PIL import Image
from scipy.ndimage import binary_erosion
from pycocotools.coco import COCO

from find_core.data import (
    CocoCaptions, CocoPanoptic, FindBenchEntities, RefCocoG, SyntheticConfig, generate, load_refs,
    load_retrieval_gallery,
)
from find_core.data.synthetic_scenes import COLOURS, SIZES, TEXTURES, THINGS
from training import make_synthetic

CONFIG = SyntheticConfig(images=8, size=128, seed=3)
SPLITS = ("train", "val")
RELATIONS = ("to the left of", "to the right of", "above", "below")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    generate(out, CONFIG)
    return out


def png_ids(root: Path, split: str, image_id: int) -> np.ndarray:
    """Decode a panoptic PNG here, independently of the reader."""
    rgb = np.array(Image.open(root / "annotations" / f"panoptic_{split}" / f"{image_id:012d}.png"), dtype=np.int64)
    return rgb[..., 0] + rgb[..., 1] * 256 + rgb[..., 2] * 65536


def scene_attributes(root: Path, split: str) -> dict[int, dict[int, dict]]:
    """image id -> segment id -> the generator's record of that segment."""
    data = json.loads((root / "annotations" / f"synthetic_scenes_{split}.json").read_text())
    return {s["image_id"]: {o["id"]: o for o in s["segments"]} for s in data}


def test_panoptic_masks_match_png_and_annotations(root: Path) -> None:
    total, high_ids = 0, 0
    for split in SPLITS:
        ds = CocoPanoptic(root, split)
        assert len(ds.categories) == 14 and sum(c.isthing for c in ds.categories) == 10
        info = json.loads((root / "annotations" / f"panoptic_{split}.json").read_text())
        infos = {a["image_id"]: {s["id"]: s for s in a["segments_info"]} for a in info["annotations"]}
        attrs = scene_attributes(root, split)
        for sample in ds:
            total += 1
            assert sample.image.shape == (128, 128, 3) and sample.image.dtype == np.uint8
            ids = png_ids(root, split, sample.image_id)
            union = np.zeros(ids.shape, int)
            for seg in sample.segments:
                assert seg.mask.any()
                np.testing.assert_array_equal(seg.mask, ids == seg.id)
                union += seg.mask
                rle = mask_utils.encode(np.asfortranarray(seg.mask.astype(np.uint8)))
                assert infos[sample.image_id][seg.id]["area"] == seg.mask.sum() == mask_utils.area(rle)
                assert infos[sample.image_id][seg.id]["bbox"] == [int(v) for v in mask_utils.toBbox(rle)]
                high_ids += seg.id >= 65536
                rec = attrs[sample.image_id][seg.id]
                assert ds.category(seg.category_id).name == rec["category"]
                if rec["texture"] == "plain":  # the pixels under the mask really have the annotated colour
                    mean = sample.image[binary_erosion(seg.mask)].mean(0)  # JPEG blurs the rim
                    assert np.abs(mean - np.array(COLOURS[rec["colour"]])).max() < 30, (rec, mean)
            assert (union == 1).all(), "segments must tile the image without overlap"
            assert 2 <= sum(ds.category(s.category_id).isthing for s in sample.segments) <= 5
    assert total == CONFIG.images and high_ids > 0  # ids use the G and B channels too


def test_instances_rle_agree_with_panoptic(root: Path) -> None:
    coco = COCO(str(root / "refcocog" / "instances.json"))
    assert len(coco.imgs) == CONFIG.images
    for ann in coco.anns.values():
        mask = coco.annToMask(ann).astype(bool)
        assert mask.sum() == ann["area"] == mask_utils.area(ann["segmentation"]) > 0
        assert np.allclose(mask_utils.toBbox(ann["segmentation"]), ann["bbox"])
        split = coco.imgs[ann["image_id"]]["file_name"].split("/")[0]
        ids = png_ids(root, split, ann["image_id"])
        assert len(np.unique(ids[mask])) == 1 and (ids == ids[mask][0]).sum() == mask.sum()


def _matches(np_words: list[str], rec: dict) -> bool:
    """Does a noun phrase (adjectives + category) fit a segment record?"""
    if np_words[-1] != rec["category"]:
        return False
    return all(w == rec[k] for w in np_words[:-1]
               for k, vocab in (("colour", COLOURS), ("size", SIZES), ("texture", TEXTURES)) if w in vocab)


def _relation_holds(rel: str, a: np.ndarray, b: np.ndarray, margin: float) -> bool:
    (ay, ax), (by, bx) = np.argwhere(a).mean(0), np.argwhere(b).mean(0)
    return {"to the left of": ax < bx - margin, "to the right of": ax > bx + margin,
            "above": ay < by - margin, "below": ay > by + margin}[rel]


def test_referring_expressions_denote_exactly_their_object(root: Path) -> None:
    """Parse each expression and evaluate it on the scene: it must pick out its target alone."""
    n = 0
    for split in SPLITS:
        ds = RefCocoG(root, split)
        attrs = scene_attributes(root, split)
        seen: dict[tuple[int, str], int] = {}
        for sample in ds:
            n += 1
            ids = png_ids(root, split, sample.image_id)
            target = int(np.unique(ids[sample.mask])[0])
            np.testing.assert_array_equal(sample.mask, ids == target)
            things = {i: r for i, r in attrs[sample.image_id].items() if r["category"] in THINGS}
            assert target in things
            assert seen.setdefault((sample.image_id, sample.sentence), target) == target, sample.sentence
            words = sample.sentence.split()
            assert words[0] == "the"
            rel = next((r for r in RELATIONS if f" {r} the " in sample.sentence), None)
            head = sample.sentence.split(f" {rel} the ")[0] if rel else sample.sentence
            fits = [i for i, r in things.items() if _matches(head.split()[1:], r)]
            assert target in fits, sample.sentence
            if rel is not None:
                landmark_np = sample.sentence.split(f" {rel} the ")[1].split()
                landmarks = [i for i, r in things.items() if _matches(landmark_np, r)]
                assert len(landmarks) == 1, sample.sentence
                lm_mask = ids == landmarks[0]
                fits = [i for i in fits if i != landmarks[0] and _relation_holds(rel, ids == i, lm_mask, 0.08 * 128)]
            assert fits == [target], sample.sentence
    assert n == sum(len(r["sentences"]) for r in json.loads((root / "refcocog" / "refs(umd).json").read_text()))


def _py2_pickle(obj) -> bytes:
    """Protocol-2 opcodes as Python 2 wrote them (str as SHORT_BINSTRING), for dicts/lists/str/int."""
    def enc(o) -> bytes:
        if isinstance(o, dict):
            return b"}(" + b"".join(enc(k) + enc(v) for k, v in o.items()) + b"u"
        if isinstance(o, list):
            return b"](" + b"".join(enc(v) for v in o) + b"e"
        if isinstance(o, str):
            data = o.encode("utf-8")
            return b"U" + bytes([len(data)]) + data
        if isinstance(o, int):
            return b"J" + struct.pack("<i", o)
        raise TypeError(o)
    return b"\x80\x02" + enc(obj) + b"."


def test_refs_pickle_is_read_safely(root: Path, tmp_path: Path) -> None:
    refs = json.loads((root / "refcocog" / "refs(umd).json").read_text())
    refs[0]["sentences"][0]["sent"] = "the café disc"
    (tmp_path / "refcocog").mkdir()
    shutil.copy(root / "refcocog" / "instances.json", tmp_path / "refcocog")
    (tmp_path / "refcocog" / "refs(umd).p").write_bytes(_py2_pickle(refs))
    for split in SPLITS:
        shutil.copytree(root / split, tmp_path / split)
    loaded = load_refs(tmp_path / "refcocog" / "refs(umd).p")
    assert loaded[0].sentences[0] == "the café disc"
    assert [r.ann_id for r in loaded] == [r["ann_id"] for r in refs]
    from_pickle = RefCocoG(tmp_path, "val")
    from_json = RefCocoG(root, "val")
    assert [from_pickle.refs[i].sentences for i in range(3)] == [from_json.refs[i].sentences for i in range(3)]
    np.testing.assert_array_equal(from_pickle[0].mask, from_json[0].mask)

    canary = tmp_path / "canary"
    canary.write_text("x")

    class Evil:
        def __reduce__(self):
            return (Path.unlink, (canary,))

    evil = tmp_path / "evil.p"
    evil.write_bytes(pickle.dumps([{"ref_id": Evil()}], protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        load_refs(evil)
    assert canary.exists()


def test_captions(root: Path) -> None:
    attrs = {**scene_attributes(root, "train"), **scene_attributes(root, "val")}
    train = CocoCaptions(root, Path("dataset_coco.json"), "train")
    both = CocoCaptions(root, Path("dataset_coco.json"), SPLITS)
    assert len(both) == CONFIG.images and len(train) == CONFIG.images - len(CocoPanoptic(root, "val"))
    for sample in both:
        assert sample.image.shape == (128, 128, 3) and len(sample.captions) >= 2
        inventory = sample.captions[0].lower()
        for rec in attrs[sample.image_id].values():
            if rec["category"] in THINGS:
                assert f"{rec['colour']} " in inventory and rec["category"] in inventory
    with pytest.raises(ValueError, match="restval"):
        CocoCaptions(root, Path("dataset_coco.json"), "restval")


def test_find_bench_entities_and_visual_references(root: Path) -> None:
    phrases = visual = 0
    for split in SPLITS:
        ds = FindBenchEntities(root, split)                      # reference_view "image", as upstream
        crops = FindBenchEntities(root, split, reference_view="crop")
        attrs = scene_attributes(root, split)
        entries = json.loads((root / "annotations" / f"entity_{split}.json").read_text())["annotations"]
        assert len(ds) == len(entries) > 0
        for sample, cropped, entry in zip(ds, crops, entries):
            ids = png_ids(root, split, sample.image_id)
            for p, c, raw in zip(sample.phrases, cropped.phrases, entry["phrase"]):
                phrases += 1
                assert sample.sentence[p.start:p.end] == p.phrase and p.mask.any()
                np.testing.assert_array_equal(p.mask, ids == raw["annotation_id"])
                own = attrs[sample.image_id][raw["annotation_id"]]
                assert p.phrase.split()[-1] == own["category"]
                if "visual" in raw:
                    visual += 1
                    ref_image, ref_seg = raw["visual"]["image_id"], raw["visual"]["annotation_id"]
                    other = attrs[ref_image][ref_seg]
                    assert ref_image != sample.image_id
                    assert (other["category"], other["colour"]) == (own["category"], own["colour"])
                    ref_mask = png_ids(root, split, ref_image) == ref_seg
                    ys, xs = np.nonzero(ref_mask)
                    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
                    ref_image_px = np.array(Image.open(root / split / f"{ref_image:012d}.jpg").convert("RGB"))
                    np.testing.assert_array_equal(p.visual_mask, ref_mask)
                    np.testing.assert_array_equal(p.visual_image, ref_image_px)
                    np.testing.assert_array_equal(c.visual_mask, ref_mask[box])
                    np.testing.assert_array_equal(c.visual_image, ref_image_px[box])
                else:
                    assert p.visual_image is None and p.visual_mask is None and c.visual_image is None
    assert 0.2 <= visual / phrases <= 0.45, (visual, phrases)


def test_retrieval_gallery(root: Path) -> None:
    gallery = load_retrieval_gallery(root / "annotations" / "retrieval_val.json")
    assert gallery == CocoPanoptic(root, "val").image_ids
    assert {e.image_id for e in FindBenchEntities(root, "val")} <= set(gallery)


def test_generation_is_deterministic(root: Path, tmp_path: Path) -> None:
    generate(tmp_path / "again", CONFIG)
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*") if p.is_file())
    _, mismatch, errors = filecmp.cmpfiles(root, tmp_path / "again", [str(f) for f in files], shallow=False)
    assert not mismatch and not errors
    generate(tmp_path / "other", SyntheticConfig(images=8, size=128, seed=4))
    assert not filecmp.cmp(root / "dataset_coco.json", tmp_path / "other" / "dataset_coco.json", shallow=False)


def test_bad_input_is_named(root: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="panoptic_test.json"):
        CocoPanoptic(root, "test")
    shutil.copytree(root / "annotations", tmp_path / "annotations")
    path = tmp_path / "annotations" / "entity_val.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["phrase"][0]["end_idx"] += 1
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="span"):
        FindBenchEntities(tmp_path, "val", image_dir=root / "val")
    # A PNG segment that segments_info does not list must not silently become void.
    pan = tmp_path / "annotations" / "panoptic_val.json"
    data = json.loads(pan.read_text())
    dropped = data["annotations"][0]["segments_info"].pop()
    pan.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=str(dropped["id"])):
        CocoPanoptic(tmp_path, "val", image_dir=root / "val")[0]


def test_cli(tmp_path: Path, capsys) -> None:
    make_synthetic.main(["--out", str(tmp_path / "cli"), "--images", "4", "--size", "64", "--seed", "1"])
    assert "train: 2, val: 2" in capsys.readouterr().out
    assert len(CocoPanoptic(tmp_path / "cli", "val")) == 2
    with pytest.raises(SystemExit):
        make_synthetic.main(["--out", str(tmp_path / "x"), "--images", "2"])
