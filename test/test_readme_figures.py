"""README.md's figures against the committed JSON files that code in the repo wrote.

Each claim below is a phrase of the README rebuilt from its source file (rounded as the README rounds,
half up), so the test fails when a figure is edited by hand, when its JSON is regenerated with other
results (update the README), or when the README drops the phrase. Sources and their producers:

* ``find_core/checkpoints/find-synthetic/heldout_metrics.json``, ``embedded_heldout_reference_image.json`` and
  ``training/results/synthetic_tiny_shipped_heldout{,_reference_image}.json`` (the from-scratch checkpoint
  shipped before; + the train logs): ``python -m training.evaluate`` / ``training.train`` — the checkpoint table;
* ``training/results/synthetic_official_continued_heldout.json``, ``retrieval_visual_source_heldout*.json``,
  ``synthetic_official_batch16_heldout*.json``: the FIND recipe's phases, one run each;
* ``training/results/synthetic_official_heldout{,_own_stroke,_engine}.json``: the 1600-step FIND recipe;
* ``training/results/visual_source_*_heldout{,_own_stroke,_reference_image}.json``,
  ``synthetic_tiny_shipped_heldout_reference_crop.json``: ``python -m training.evaluate`` (``--interleave-visual``,
  ``--reference-view``) — the visual-entity protocols and the ``official.visual_source`` table;
* ``training/results/localization_embedded.json``: ``python -m training.evaluate_localization``;
* ``training/results/*demo_scenes*.json``: ``python -m training.evaluate_demo_scenes`` — the node demo's task
  over 20 scenes; ``find_recipe_jitter_heldout.json``, ``scale_jitter_{continued,half}_*`` and their train logs:
  the scale-jitter runs;
* ``bench/results.json``: ``scripts/bench.sh`` — the speed figures;
* ``bench/camera_qos.json``: ``python -m bench.ros --out bench/camera_qos.json`` — the camera QoS figures.

* ``training/results/field_abstention_heldout.json``, ``field_embedded_512.json``, ``field_move_heldout.json``
  and the from-scratch checkpoint's ``synthetic_tiny_shipped_field_{128,256}.json``:
  ``python -m training.evaluate_field`` (``--no-absent``, ``--calibrate``, ``--move``) — the 3D field.
"""
from __future__ import annotations

import csv
import json
import re
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from find_core.checkpoint import weights_digest
from find_core.engine import TrainConfig


REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
HELDOUT = REPO / "find_core" / "checkpoints" / "find-synthetic" / "heldout_metrics.json"
OFFICIAL = REPO / "training" / "results" / "synthetic_official_heldout.json"
OFFICIAL_ENGINE = REPO / "training" / "results" / "synthetic_official_heldout_engine.json"
TINY_ENGINE = REPO / "training" / "results" / "synthetic_tiny_engine_heldout_engine.json"
TINY_ENGINE_SEED1 = REPO / "training" / "results" / "synthetic_tiny_engine_seed1_heldout_engine.json"
TINY_CONTROL = REPO / "training" / "results" / "synthetic_tiny_control_heldout.json"
EMBEDDED_ENGINE = REPO / "training" / "results" / "embedded_heldout_engine.json"
SCRATCH = REPO / "training" / "results" / "synthetic_tiny_shipped_heldout.json"         # the checkpoint shipped before
SCRATCH_ENGINE = REPO / "training" / "results" / "synthetic_tiny_shipped_heldout_engine.json"
OFFICIAL_LOG = REPO / "training" / "results" / "synthetic_official_train_log.csv"
OFFICIAL_OWN_STROKE = REPO / "training" / "results" / "synthetic_official_heldout_own_stroke.json"
CONTINUED = REPO / "training" / "results" / "synthetic_official_continued_heldout.json"
CONTINUED_LOG = REPO / "training" / "results" / "synthetic_official_continued_train_log.csv"
BATCH16 = REPO / "training" / "results" / "synthetic_official_batch16_heldout.json"
BATCH16_LOG = REPO / "training" / "results" / "synthetic_official_batch16_train_log.csv"
RETRIEVAL_SOURCE = REPO / "training" / "results" / "retrieval_visual_source_heldout.json"
RETRIEVAL_SOURCE_ENGINE = REPO / "training" / "results" / "retrieval_visual_source_heldout_engine.json"
RETRIEVAL_SOURCE_LOG = REPO / "training" / "results" / "retrieval_visual_source_train_log.csv"
CONTINUED_REFERENCES = REPO / "training" / "results" / "synthetic_official_continued_heldout_reference_image.json"
EMBEDDED_REFERENCES = REPO / "training" / "results" / "embedded_heldout_reference_image.json"
SCRATCH_REFERENCES = {view: REPO / "training" / "results" / f"synthetic_tiny_shipped_heldout_reference_{view}.json"
                      for view in ("image", "crop")}
LOCALIZATION = REPO / "training" / "results" / "localization_embedded.json"
BENCH = REPO / "bench" / "results.json"
CAMERA_QOS = REPO / "bench" / "camera_qos.json"
RESULTS = REPO / "training" / "results"
FIELD_ABSENT = RESULTS / "field_abstention_heldout.json"          # at the embedded scene input size, with absent phrases
FIELD_ROWS = {"from-scratch checkpoint, 128": RESULTS / "synthetic_tiny_shipped_field_128.json",
              "from-scratch checkpoint, 256": RESULTS / "synthetic_tiny_shipped_field_256.json",
              "embedded checkpoint, 256": FIELD_ABSENT,
              "embedded checkpoint, 512": RESULTS / "field_embedded_512.json"}
FIELD_MOVE = RESULTS / "field_move_heldout.json"
WEIGHTS = REPO / "find_core" / "checkpoints" / "find-synthetic" / "model.safetensors"
# the FIND recipe's four phases run back to back (two processes each): the embedded checkpoint's training
FIND_RECIPE_LOGS = [RESULTS / f"find_recipe_phase{n}_train_log.csv" for n in (1, 2, 3, 4)]
# the node demo's task over rendered scenes (training.evaluate_demo_scenes): checkpoint → its two views
DEMO_SCENES = {who: {view: RESULTS / f"{stem}{suffix}.json" for view, suffix in (("crop", ""), ("image", "_reference_image"))}
               for who, stem in (("embedded", "demo_scenes_embedded"), ("scratch", "synthetic_tiny_shipped_demo_scenes"),
                                 ("jitter", "find_recipe_jitter_demo_scenes"))}
# the embedded checkpoint trained on with official.scale_jitter (training/configs/scale_jitter*.yaml)
JITTER = RESULTS / "find_recipe_jitter_heldout.json"
JITTER_LOG = RESULTS / "scale_jitter_train_log.csv"
JITTER_CHECKPOINT = REPO / "training" / "checkpoints" / "find-recipe-jitter"
CONTINUED_JITTER = RESULTS / "scale_jitter_continued_heldout.json"   # 600 more steps (weights not committed)
CONTINUED_JITTER_LOG = RESULTS / "scale_jitter_continued_train_log.csv"
HALF_JITTER = RESULTS / "scale_jitter_half_heldout.json"             # 600 more on half the images (not committed)
HALF_JITTER_LOG = RESULTS / "scale_jitter_half_train_log.csv"


def load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def flat(text: str) -> str:
    """Whitespace collapsed, so a figure may wrap across README lines."""
    return re.sub(r"\s+", " ", text)


def r(value: float | str, digits: int = 0) -> str:
    """``value`` rounded half up to ``digits`` decimals (a bench cell such as '1,849' or '2.58×' too)."""
    if isinstance(value, str):
        value = re.match(r"[\d,.]+", value).group(0).replace(",", "")
    quantum = Decimal(1).scaleb(-digits)
    return str(Decimal(str(value)).quantize(quantum, rounding=ROUND_HALF_UP))


class Bench:
    """Cells of bench/results.json's tables by section key, table index, row prefix and column prefix."""

    def __init__(self, doc: dict) -> None:
        self.sections = {s["key"]: s for s in doc["sections"]}
        self.doc = doc

    def cell(self, key: str, table: int, row: str | tuple[str, ...], column: str) -> str:
        """``row``: a prefix of the first cell, or prefixes of the first cells."""
        t = self.sections[key]["tables"][table]
        col = next(i for i, c in enumerate(t["columns"]) if c.startswith(column))
        prefixes = (row,) if isinstance(row, str) else row
        return next(cells[col] for cells in t["rows"] if all(c.startswith(p) for c, p in zip(cells, prefixes)))


def readme_table(text: str, header_start: str) -> dict[str, list[str]]:
    """The markdown table whose header row starts with ``header_start``: first cell -> the other cells."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows: dict[str, list[str]] = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def checkpoint_column(m: dict, references: dict) -> dict[str, str]:
    """The README's checkpoint-table cells of one training.evaluate metrics JSON (FIND-Bench's protocols)
    and of its interleave grounding with the file's references (whole images)."""
    g, ret, ilr = m["generic"], m["retrieval"], m["interleave_retrieval"]
    assert m["interleave_grounding"]["visual_entities"] == "own_stroke" and ilr["reference_view"] == "image"
    by_reference = references["interleave_grounding"]
    assert (by_reference["visual_entities"], by_reference["reference_view"]) == ("reference", "image")
    assert m["meta"]["checkpoint_sha256"] == references["meta"]["checkpoint_sha256"], "two checkpoints in one column"
    return {
        "PQ (things / stuff)": f"{r(g['pq'], 1)} ({r(g['pq_things'], 1)} / {r(g['pq_stuff'], 1)})",
        "mask AP": r(g["ap"], 1),
        "mIoU": r(g["miou"], 1),
        "grounding cIoU": r(m["grounding"]["ciou"], 1),
        "interleave grounding cIoU (own strokes)": r(m["interleave_grounding"]["ciou"], 1),
        "interleave grounding cIoU, references": r(by_reference["ciou"], 1),
        "interactive IoU after 1 click": r(m["interactive"]["iou_at_1"], 1),
        "interleave retrieval IR@5 / IR@10": f"{r(ilr['ir5'], 1)} / {r(ilr['ir10'], 1)}",
        "image–text IR@5 / TR@5": f"{r(ret['ir5'], 1)} / {r(ret['tr5'], 1)}",
        "held-out thing accuracy": f"{r(g['thing_accuracy'], 1)} %",
    }


def test_checkpoint_table_equals_the_metrics_files():
    table = readme_table(README.read_text(encoding="utf-8"), "| metric | this checkpoint")
    embedded = checkpoint_column(load(HELDOUT), load(EMBEDDED_REFERENCES))
    scratch = checkpoint_column(load(SCRATCH), load(SCRATCH_REFERENCES["image"]))
    assert set(table) == set(embedded), "README checkpoint table rows differ from the metrics the test knows"
    for metric, cells in table.items():
        assert cells[0] == embedded[metric], (metric, "heldout_metrics.json", cells[0], embedded[metric])
        assert cells[1] == scratch[metric], (metric, SCRATCH.name, cells[1], scratch[metric])


VISUAL_SOURCES = ("own", "batch", "batch_nearest")


def visual_source_column(source: str) -> dict[str, str]:
    """The README's official.visual_source table cells of one continued run (its two metrics files)."""
    m = load(RESULTS / f"visual_source_{source}_heldout.json")
    own = load(RESULTS / f"visual_source_{source}_heldout_own_stroke.json")["interleave_grounding"]
    g, ig = m["generic"], m["interleave_grounding"]
    return {
        "PQ (things)": f"{r(g['pq'], 1)} ({r(g['pq_things'], 1)})",
        "grounding cIoU": r(m["grounding"]["ciou"], 1),
        "interactive IoU after 1 click": r(m["interactive"]["iou_at_1"], 1),
        "interleave grounding cIoU, reference crops: all / text / visual":
            f"{r(ig['ciou'], 1)} / {r(ig['text']['ciou'], 1)} / {r(ig['visual']['ciou'], 1)}",
        "interleave grounding cIoU, own strokes (official): all / visual":
            f"{r(own['ciou'], 1)} / {r(own['visual']['ciou'], 1)}",
        "interleave retrieval IR@5 (reference crops)": r(m["interleave_retrieval"]["ir5"], 1),
    }


def test_visual_source_table_equals_its_evaluations():
    table = readme_table(README.read_text(encoding="utf-8"), "| official.visual_source")
    columns = {source: visual_source_column(source) for source in VISUAL_SOURCES}
    assert set(table) == set(columns["own"]), "README visual_source table rows differ from what the test knows"
    for row, cells in table.items():
        assert cells == [columns[source][row] for source in VISUAL_SOURCES], (row, cells)


def test_field_table_equals_its_evaluations():
    """The 3D-field table: one row per checkpoint and input size, from training.evaluate_field's summaries."""
    table = readme_table(README.read_text(encoding="utf-8"), "| scenes 3-22 (101 objects)")
    assert len(table) == len(FIELD_ROWS)
    for (row, cells), (start, path) in zip(table.items(), FIELD_ROWS.items()):
        m = load(path)
        checkpoint, size = start.split(", ")
        assert row.startswith(checkpoint) and f"letterboxed to {size}" in row and path.name in row, (row, path.name)
        assert f"--input-size {size}" in m["meta"]["command"], path.name
        assert cells == [str(m["within"]), str(m["wrong_object"]), str(m["not_found"]), str(m["off_centre"])], path.name
        assert m["objects"] == 101, path.name


def steps_and_minutes(log: Path) -> tuple[str, float]:
    """A training log's last step and its step time in minutes."""
    with log.open() as f:
        rows = list(csv.DictReader(f))
    return rows[-1]["step"], sum(float(row["seconds"]) for row in rows) / 60


# issue 16's held-out targets: metric → (its value in a training.evaluate JSON, the target)
ISSUE16_TARGETS = {"grounding cIoU": (("grounding", "ciou"), 65), "interleave grounding with own strokes":
                   (("interleave_grounding", "ciou"), 92), "interactive segmentation": (("interactive", "iou_at_1"), 85),
                   "PQ": (("generic", "pq"), 60), "held-out thing accuracy": (("generic", "thing_accuracy"), 80),
                   "interleave IR@5": (("interleave_retrieval", "ir5"), 75)}


def targets_sentence(heldout: dict, field: dict, recipe_minutes: float) -> str:
    """The README's account of issue 16's targets: which the embedded checkpoint meets, and by how much
    it misses the others (each sentence part checked against the files it comes from)."""
    value = {name: heldout[a][b] for name, ((a, b), _) in ISSUE16_TARGETS.items()}
    met = [name for name, (_, target) in ISSUE16_TARGETS.items() if value[name] >= target]
    missed = [name for name in ISSUE16_TARGETS if name not in met]
    assert field["within"] < 95 and recipe_minutes > 60
    unit = {"held-out thing accuracy": " %"}
    return (f"Of issue 16's targets (the README recipe on this machine) {', '.join(met[:-1])} and {met[-1]} are met; "
            + ", ".join(f"{name} ({r(value[name], 1)}{unit.get(name, '')} for {ISSUE16_TARGETS[name][1]}{unit.get(name, '')})"
                        for name in missed[:-1])
            + f" and {missed[-1]} ({r(value[missed[-1]], 1)} for {ISSUE16_TARGETS[missed[-1]][1]}) are not, nor are the 3D "
            f"field's named objects ({field['within']} of {field['objects']} within 10 cm at "
            f"{field['meta']['input_size']} px for 95, below) and the node demo's visual entity (below); the recipe "
            f"takes {r(recipe_minutes, 1)} min of step time, not 60.")


def claims() -> list[tuple[str, str]]:
    """(source, the README phrase it backs)."""
    heldout, official, loc = load(HELDOUT), load(OFFICIAL), load(LOCALIZATION)
    engine, tiny_engine, scratch_engine = load(OFFICIAL_ENGINE), load(TINY_ENGINE), load(SCRATCH_ENGINE)
    embedded_engine = load(EMBEDDED_ENGINE)
    seed1, control = load(TINY_ENGINE_SEED1), load(TINY_CONTROL)
    official_own = load(OFFICIAL_OWN_STROKE)["interleave_grounding"]
    scratch_own = load(SCRATCH)["interleave_grounding"]
    own_run = load(RESULTS / "visual_source_own_heldout.json")
    own_run_image = load(RESULTS / "visual_source_own_heldout_reference_image.json")
    scratch_views = {view: load(path) for view, path in SCRATCH_REFERENCES.items()}
    continued = load(CONTINUED)
    batch16 = load(BATCH16)
    visual_crops = {s: load(RESULTS / f"visual_source_{s}_heldout.json")["interleave_grounding"]["visual"]["ciou"]
                    for s in VISUAL_SOURCES}
    logs = {}
    moved, moved_engine = load(RETRIEVAL_SOURCE), load(RETRIEVAL_SOURCE_ENGINE)
    scratch_engine_image = load(RESULTS / "synthetic_tiny_shipped_heldout_engine_reference_image.json")
    assert scratch_engine_image["interleave_retrieval"]["reference_view"] == "image"
    batch16_engine = load(RESULTS / "synthetic_official_batch16_heldout_engine.json")["interleave_retrieval"]
    for path in (OFFICIAL_LOG, RESULTS / "visual_source_own_train_log.csv", CONTINUED_LOG, BATCH16_LOG,
                 RETRIEVAL_SOURCE_LOG, *FIND_RECIPE_LOGS, JITTER_LOG, CONTINUED_JITTER_LOG, HALF_JITTER_LOG):
        steps, minutes = steps_and_minutes(path)
        logs[path.name] = f"{steps} steps in {r(minutes, 1)} min"

    def grounding(m: dict) -> str:
        return f"{r(m['interleave_grounding']['ciou'], 1)} (visual entities {r(m['interleave_grounding']['visual']['ciou'], 1)})"
    b = Bench(load(BENCH))
    models = b.sections["models"]["data"]["runs"]
    qos_doc = load(CAMERA_QOS)
    qos = {(row["setting"], row["size"]): row for row in qos_doc["rows"]}
    qos_load = f"{qos_doc['load_average_start'][0]}–{qos_doc['load_average_end'][0]}"
    node, fusion = "node", "fusion"
    exact, narrow = ("1,000,000", "float32"), ("1,000,000", "bfloat16")
    assert "same objects from every path: True" in b.sections["field_query"]["tables"][0]["notes"][-1]
    lattice_ms, dbscan_ms = b.cell("field_query", 0, exact, "objects ms").split(" / ")
    off, paced = "find_perception, ~/embeddings off", "find_perception, ~/embeddings off, replay"
    default = "16FC128 (default)"
    node_run = next(u for u in reversed(b.doc.get("updates", [])) if "node" in u["benchmarks"])
    move, absent = load(FIELD_MOVE), load(FIELD_ABSENT)
    pct = lambda share: r(100 * share)   # noqa: E731 - a share as the README's whole percent
    demo = {who: {view: load(path) for view, path in views.items()} for who, views in DEMO_SCENES.items()}
    digests = {"embedded": weights_digest(WEIGHTS.parent), "scratch": load(SCRATCH)["meta"]["checkpoint_sha256"],
               "jitter": weights_digest(JITTER_CHECKPOINT)}
    for who, views in demo.items():   # "over 20 scenes at 256 px", each file its checkpoint and its view
        for view, m in views.items():
            assert (m["meta"]["checkpoint_sha256"], m["reference_view"]) == (digests[who], view), DEMO_SCENES[who][view]
            assert (m["scenes"], m["meta"]["input_size"], m["meta"]["seeds"]) == (20, 256, "0-19"), DEMO_SCENES[who][view]

    def entity(m: dict, kind: str) -> str:
        return f"{r(m[f'{kind}_iou_mean'], 2)} ({m[f'{kind}_iou_at_least_0.5']})"
    jitter, more, half = load(JITTER), load(CONTINUED_JITTER), load(HALF_JITTER)
    assert jitter["meta"]["checkpoint_sha256"] == digests["jitter"], f"{JITTER.name} measured other weights"
    more_demo = load(RESULTS / "scale_jitter_continued_demo_scenes_reference_image.json")
    half_demo = load(RESULTS / "scale_jitter_half_demo_scenes_reference_image.json")
    for m, d in ((more, more_demo), (half, half_demo)):
        assert d["meta"]["checkpoint_sha256"] == m["meta"]["checkpoint_sha256"] and d["reference_view"] == "image"
    # "However it is dosed, the jitter costs interactive segmentation, below the from-scratch checkpoint's 84.0"
    assert max(m["interactive"]["iou_at_1"] for m in (jitter, more, half)) < load(SCRATCH)["interactive"]["iou_at_1"] \
        < heldout["interactive"]["iou_at_1"]
    # "the best of every run here"
    runs = [load(path) for path in RESULTS.glob("*_heldout.json")] + [heldout]
    for key in (("generic", "pq"), ("generic", "ap"), ("generic", "miou"), ("grounding", "ciou"), ("interleave_retrieval", "ir5")):
        assert half[key[0]][key[1]] == max(m[key[0]][key[1]] for m in runs if key[0] in m), key
    jg, hg, eg = jitter["generic"], half["generic"], heldout["generic"]
    jitter_range = TrainConfig.from_yaml(REPO / "training" / "configs" / "scale_jitter.yaml").official.scale_jitter
    half_recipe = TrainConfig.from_yaml(REPO / "training" / "configs" / "scale_jitter_half.yaml").official
    assert (half_recipe.scale_jitter, half_recipe.scale_jitter_prob) == (jitter_range, 0.5)
    seed0 = {who: {view: m["outcomes"][0] for view, m in views.items()} for who, views in demo.items()}
    assert all(o["seed"] == 0 for views in seed0.values() for o in views.values())
    # "missed with either picture, as by every checkpoint trained the FIND way here"
    assert all(o["visual_iou"] < 0.5 for who in ("embedded", "jitter") for o in seed0[who].values())
    assert more_demo["outcomes"][0]["visual_iou"] < 0.5 and half_demo["outcomes"][0]["visual_iou"] < 0.5

    # "within 10 % for absent phrases, far short of 90 % found"; "the lowest at which at most 10 % ... on 10 scenes"
    assert absent["share_absent_answered"] <= 0.10 and absent["share_found_within"] < 0.90
    assert absent["abstention"]["fitted"]["max_absent_share"] == 0.10 and len(absent["abstention"]["fitted"]["seeds"]) == 10
    # the similarity finds more present objects than the relevancy fitted the same way, answering no more absent ones
    assert absent["found_within"] > absent["by_relevancy"]["found_within"]
    assert absent["absent_answered"] <= absent["by_relevancy"]["absent_answered"]
    # "it finds as many named objects at 256 px as the from-scratch checkpoint did, and more letterboxed to 512"
    assert absent["within"] == load(FIELD_ROWS["from-scratch checkpoint, 256"])["within"] < load(
        FIELD_ROWS["embedded checkpoint, 512"])["within"]

    def then(name: str, new: float, old: float, unit: str = "") -> str:
        return f"{name} to {r(new, 1)}{unit} ({r(old, 1)}{unit})"
    return [
        (JITTER_LOG.name, f"with `{jitter_range}` (`training/configs/scale_jitter.yaml`: the last phase again with "
                          f"that one change, two processes, {logs[JITTER_LOG.name]} of step time"),
        ("find_recipe_jitter_demo_scenes*.json",
         f"it covers the text object at {entity(demo['jitter']['crop'], 'text')} and the pictured one at "
         f"{entity(demo['jitter']['crop'], 'visual')} with the demo's crops, and at {entity(demo['jitter']['image'], 'text')} "
         f"and {entity(demo['jitter']['image'], 'visual')} with whole-frame references"),
        (JITTER.name, f"it moves PQ to {r(jg['pq'], 1)} ({r(eg['pq'], 1)} before), " + ", ".join([
            then("mask AP", jg["ap"], eg["ap"]),
            then("grounding cIoU", jitter["grounding"]["ciou"], heldout["grounding"]["ciou"]),
            then("interleave grounding with own strokes", jitter["interleave_grounding"]["ciou"],
                  heldout["interleave_grounding"]["ciou"]),
            then("interactive IoU after 1 click", jitter["interactive"]["iou_at_1"], heldout["interactive"]["iou_at_1"]),
            then("interleave IR@5", jitter["interleave_retrieval"]["ir5"], heldout["interleave_retrieval"]["ir5"])])
         + " and " + then("thing accuracy", jg["thing_accuracy"], eg["thing_accuracy"], " %")),
        (CONTINUED_JITTER.name, f"(`training/configs/scale_jitter_continued.yaml`, {logs[CONTINUED_JITTER_LOG.name]} of "
                                f"step time) bring interactive IoU after 1 click back to {r(more['interactive']['iou_at_1'], 1)}, "
                                f"with PQ {r(more['generic']['pq'], 1)}, grounding cIoU {r(more['grounding']['ciou'], 1)}, "
                                f"interleave IR@5 {r(more['interleave_retrieval']['ir5'], 1)} and thing accuracy "
                                f"{r(more['generic']['thing_accuracy'], 1)} %, and leave the demo's scenes at "
                                f"{entity(more_demo, 'text')} and {entity(more_demo, 'visual')} with whole-frame references"),
        (HALF_JITTER.name, f"(`scale_jitter_prob: 0.5`, `training/configs/scale_jitter_half.yaml`, {logs[HALF_JITTER_LOG.name]} "
                           f"of step time) reach PQ {r(hg['pq'], 1)}, mask AP {r(hg['ap'], 1)}, mIoU {r(hg['miou'], 1)}, "
                           f"grounding cIoU {r(half['grounding']['ciou'], 1)} and interleave IR@5 "
                           f"{r(half['interleave_retrieval']['ir5'], 1)}, the best of every run here, thing accuracy "
                           f"{r(hg['thing_accuracy'], 1)} %, the demo's scenes at {entity(half_demo, 'text')} and "
                           f"{entity(half_demo, 'visual')} with whole-frame references, and interactive IoU after 1 click "
                           f"{r(half['interactive']['iou_at_1'], 1)}"),
        (SCRATCH.name, f"below the from-scratch checkpoint's {r(load(SCRATCH)['interactive']['iou_at_1'], 1)}"),
        ("demo_scenes_embedded*.json",
         f"Over {demo['embedded']['image']['scenes']} scenes at {demo['embedded']['image']['meta']['input_size']} px the "
         f"embedded checkpoint picks a frame showing both objects {demo['embedded']['image']['chosen_shows_both']} times, "
         f"covers the text object at mean IoU {r(demo['embedded']['image']['text_iou_mean'], 2)} (IoU ≥ 0.5: "
         f"{demo['embedded']['image']['text_iou_at_least_0.5']} times) and the pictured one at "
         f"{entity(demo['embedded']['image'], 'visual')} when the picture is the whole frame"),
        ("demo_scenes_embedded.json", f"with tight crops of the object {entity(demo['embedded']['crop'], 'visual')} "
                                      "(`demo_scenes_embedded.json`)"),
        ("synthetic_tiny_shipped_demo_scenes*.json",
         f"covered them at {entity(demo['scratch']['crop'], 'text')} and {entity(demo['scratch']['crop'], 'visual')} "
         f"with crops, the view it was trained on, and {entity(demo['scratch']['image'], 'text')} and "
         f"{entity(demo['scratch']['image'], 'visual')} with whole frames"),
        ("demo_scenes_embedded*.json (seed 0)",
         f"is covered at IoU {r(seed0['embedded']['image']['text_iou'], 2)}; the pictured large purple pentagon "
         f"stands beside a purple hexagon and is missed (IoU {r(seed0['embedded']['image']['visual_iou'], 2)})"),
        ("synthetic_tiny_shipped_demo_scenes.json (seed 0)",
         f"the from-scratch checkpoint found it from a crop ({r(seed0['scratch']['crop']['visual_iou'], 2)})"),
        (FIELD_MOVE.name, f"on {move['scenes']} rendered scenes with the embedded model, "
                          f"{pct(move['forgetting']['new_within'])} % answer within 10 cm of the new place and "
                          f"{pct(move['forgetting']['old_answers'])} % still answer at the old one, against "
                          f"{pct(move['no_forgetting']['new_within'])} % / {pct(move['no_forgetting']['old_answers'])} % "
                          "without forgetting"),
        (FIELD_ABSENT.name, f"finds {r(100 * absent['share_found_within'], 1)} % of present objects within 10 cm "
                         f"({r(100 * absent['share_within'], 1)} % without the threshold) and answers "
                         f"{r(100 * absent['share_absent_answered'], 1)} % of phrases for absent objects with a place"),
        (FIELD_ABSENT.name, f"the same fit on the relevancy (which ranks the voxels but saturates near 1 for a "
                            f"look-alike of an absent object) finds {r(100 * absent['by_relevancy']['share_found_within'], 1)} % "
                            f"and answers {r(100 * absent['by_relevancy']['share_absent_answered'], 1)} %"),
        ("heldout_metrics.json", f"144 val images, gallery of {heldout['interleave_retrieval']['gallery']})"
         if heldout["generic"]["images"] == 144 else "<image count changed>"),
        ("heldout_metrics.json", f"held-out 2D PQ on things {r(heldout['generic']['pq_things'], 1)}"),
        ("heldout_metrics.json + field_abstention_heldout.json + find_recipe_phase*_train_log.csv", targets_sentence(
            heldout, absent, sum(steps_and_minutes(path)[1] for path in FIND_RECIPE_LOGS))),
        ("model.safetensors", f"(`find_core/checkpoints/find-synthetic`, {r(WEIGHTS.stat().st_size / 1e6)} MB)"),
        ("find_recipe_phase*_train_log.csv", "`synthetic_official.yaml`, {}, then `visual_source/own.yaml`, {}, then "
                                             "`synthetic_official_continued.yaml`, {}, then `retrieval_visual_source.yaml`, "
                                             "{} of step time".format(*(logs[path.name] for path in FIND_RECIPE_LOGS))),
        (CONTINUED.name, f"(`training/results/{CONTINUED.name}`, thing accuracy "
                         f"{r(continued['generic']['thing_accuracy'], 1)} %)"),
        (OFFICIAL.name, f"stood at PQ {r(official['generic']['pq'], 1)} and IR@5 {r(official['interleave_retrieval']['ir5'], 1)} "
                        f"with crops (`{OFFICIAL.name}`, thing accuracy {r(official['generic']['thing_accuracy'], 1)} %"),
        (OFFICIAL_OWN_STROKE.name, f"with own strokes at cIoU {r(official_own['ciou'], 1)} "
                                   f"(visual entities {r(official_own['visual']['ciou'], 1)}, `{OFFICIAL_OWN_STROKE.name}`)"),
        ("visual_source_own_heldout{,_reference_image}.json",
         f"it grounds the file's references at cIoU {grounding(own_run)} as crops and {grounding(own_run_image)} as "
         f"whole images, and retrieves at IR@5 {r(own_run['interleave_retrieval']['ir5'], 1)} and "
         f"{r(own_run_image['interleave_retrieval']['ir5'], 1)}"),
        ("synthetic_tiny_shipped_heldout{,_reference_{crop,image}}.json",
         f"grounds them at {grounding(scratch_views['crop'])} as crops and {grounding(scratch_views['image'])} as "
         f"whole images, retrieves at IR@5 {r(scratch_views['crop']['interleave_retrieval']['ir5'], 1)} and "
         f"{r(scratch_views['image']['interleave_retrieval']['ir5'], 1)} (`synthetic_tiny_shipped_heldout_reference_{{crop,image}}.json`), "
         f"and grounds with own strokes at {r(scratch_own['ciou'], 1)} (visual entities {r(scratch_own['visual']['ciou'], 1)})"),
        ("visual_source_own_heldout.json", f"The 500 more steps alone lift PQ from {r(official['generic']['pq'], 1)} to "
                                           f"{r(own_run['generic']['pq'], 1)} and interleave IR@5 from "
                                           f"{r(official['interleave_retrieval']['ir5'], 1)} to "
                                           f"{r(own_run['interleave_retrieval']['ir5'], 1)}; the 1200 after them lift PQ to "
                                           f"{r(continued['generic']['pq'], 1)} but leave interleave IR@5 at "
                                           f"{r(continued['interleave_retrieval']['ir5'], 1)} with whole-image references, "
                                           f"where the `own` run already was ({r(own_run_image['interleave_retrieval']['ir5'], 1)})"),
        (BATCH16.name, f"entry–image cosine alone gives IR@5 {r(batch16_engine['by_term']['entry_image']['ir5'], 1)}, the "
                       f"entity–object term alone {r(batch16_engine['by_term']['entity_object']['ir5'], 1)}, the two "
                       f"together {r(batch16_engine['ir5'], 1)}."),
        (RETRIEVAL_SOURCE.name, f"(`training/configs/retrieval_visual_source.yaml`, {logs[RETRIEVAL_SOURCE_LOG.name]}) "
                                f"lifts interleave IR@5 to {r(moved_engine['interleave_retrieval']['ir5'], 1)} on the engine's "
                                f"held-out entries (IR@10 {r(moved_engine['interleave_retrieval']['ir10'], 1)}; entry–image alone "
                                f"{r(moved_engine['interleave_retrieval']['by_term']['entry_image']['ir5'], 1)}, entity–object "
                                f"alone {r(moved_engine['interleave_retrieval']['by_term']['entity_object']['ir5'], 1)}; the "
                                f"from-scratch checkpoint: {r(scratch_engine_image['interleave_retrieval']['ir5'], 1)}) and to "
                                f"{r(moved['interleave_retrieval']['ir5'], 1)} on the generator's (IR@10 "
                                f"{r(moved['interleave_retrieval']['ir10'], 1)}; the from-scratch checkpoint, references as whole "
                                f"images: {r(scratch_views['image']['interleave_retrieval']['ir5'], 1)}; as tight crops, the "
                                f"earlier protocol of the 63.9 target: {r(scratch_views['crop']['interleave_retrieval']['ir5'], 1)})"),
        (RETRIEVAL_SOURCE.name, f"PQ {r(moved['generic']['pq'], 1)} ({r(batch16['generic']['pq'], 1)}), grounding cIoU "
                                f"{r(moved['grounding']['ciou'], 1)} ({r(batch16['grounding']['ciou'], 1)}), interleave "
                                f"grounding with own strokes {r(moved['interleave_grounding']['ciou'], 1)} "
                                f"({r(batch16['interleave_grounding']['ciou'], 1)}), interactive IoU after 1 click "
                                f"{r(moved['interactive']['iou_at_1'], 1)} ({r(batch16['interactive']['iou_at_1'], 1)}), held-out "
                                f"thing accuracy {r(moved['generic']['thing_accuracy'], 1)} % "
                                f"({r(batch16['generic']['thing_accuracy'], 1)} %)"),
        (BATCH16.name, f"`training/configs/synthetic_official_batch16.yaml`, {logs[BATCH16_LOG.name]}) lift PQ to "
                       f"{r(batch16['generic']['pq'], 1)}, mask AP to {r(batch16['generic']['ap'], 1)}, mIoU to "
                       f"{r(batch16['generic']['miou'], 1)} and interleave grounding with own strokes to "
                       f"{r(batch16['interleave_grounding']['ciou'], 1)}, and leave interleave IR@5 at "
                       f"{r(batch16['interleave_retrieval']['ir5'], 1)} (IR@10 {r(batch16['interleave_retrieval']['ir10'], 1)}; "
                       f"`{BATCH16.name}`)"),
        ("visual_source_*_heldout.json", "its visual entities fell, from " + " to ".join(
            [r(visual_crops["own"], 1), " and ".join(r(visual_crops[s], 1) for s in ("batch", "batch_nearest"))])),
        (OFFICIAL_ENGINE.name, f"interleave grounding cIoU {r(engine['interleave_grounding']['ciou'], 1)} and IR@5 "
                               f"{r(engine['interleave_retrieval']['ir5'], 1)}, `{OFFICIAL_ENGINE.name}`"),
        (TINY_ENGINE.name, f"interleave cIoU {r(tiny_engine['interleave_grounding']['ciou'], 1)} with IR@5 "
                           f"{r(tiny_engine['interleave_retrieval']['ir5'], 1)} (`{TINY_ENGINE.name}`)"),
        (SCRATCH_ENGINE.name, f"gets {r(scratch_engine['interleave_grounding']['ciou'], 1)} and "
                              f"{r(scratch_engine['interleave_retrieval']['ir5'], 1)} (`{SCRATCH_ENGINE.name}`)"),
        (EMBEDDED_ENGINE.name, f"grounds them at interleave cIoU {r(embedded_engine['interleave_grounding']['ciou'], 1)} "
                               f"with IR@5 {r(embedded_engine['interleave_retrieval']['ir5'], 1)} (`{EMBEDDED_ENGINE.name}`,"),
        (TINY_ENGINE.name, f"(PQ {r(tiny_engine['generic']['pq'], 1)}, thing accuracy "
                           f"{r(tiny_engine['generic']['thing_accuracy'], 1)} %)"),
        (TINY_ENGINE_SEED1.name, f"(PQ {r(seed1['generic']['pq'], 1)}, thing accuracy {r(seed1['generic']['thing_accuracy'], 1)} %; "
                                 f"interleave cIoU {r(seed1['interleave_grounding']['ciou'], 1)} and IR@5 "
                                 f"{r(seed1['interleave_retrieval']['ir5'], 1)} on the engine's held-out entries, "
                                 f"`{TINY_ENGINE_SEED1.name}`)"),
        (TINY_CONTROL.name, f"(PQ {r(control['generic']['pq'], 1)}, thing accuracy "
                            f"{r(control['generic']['thing_accuracy'], 1)} %, `{TINY_CONTROL.name}`)"),
        (LOCALIZATION.name, f"picks the right frame {loc['right_frame']} times in {loc['sequences']} (chance: "
                            f"{r(loc['chance_right'])}), and {loc['masks_iou_at_least_0.5']} of those masks have "
                            f"IoU ≥ 0.5 with the object (mean IoU {r(loc['mean_iou_when_right'], 2)} over the "
                            "right frames"),
        (BENCH.name, f"(CPU: {b.doc['device']['cpu_cores']} Xeon cores, {b.doc['device']['torch_threads']} torch "
                     "thread; no GPU was available)"),
        (BENCH.name, "640×480 frames, the embedded checkpoint): " + ", ".join(
            f"{name} {r(b.cell('models', 0, '640x480', column))} ms" for name, column in (
                ("segment", "segment"), ("ground", "ground"), ("interactive", "interactive"),
                ("interleave ground", "interleave_ground"), ("per-pixel embeddings", "embed_pixels")))
         + f"; localize over a {models[0]['buffer_size']}-frame buffer {r(b.cell('models', 0, '640x480', 'localize'))}"
           " ms"),
        (BENCH.name, f"costs {r(b.cell('models', 3, '512²', '×'), 1)}× per embedding"),
        (BENCH.name, f"The interface costs {b.cell('models', 2, 'embedded', 'interface / encode_images')} the "
                     f"vision encoder forward here and {b.cell('models', 2, 'paper', 'interface / encode_images')} "
                     "for a paper-sized model"),
        (BENCH.name, f"1024 px: {r(models[1]['components_s']['interface_generic'], 1)} s vs "
                     f"{r(models[1]['components_s']['encode_images'], 1)} s on this CPU"),
        (BENCH.name, f"the node's processing is {b.cell(node, 0, off, 'per frame: processing')} its own model "
                     f"work (one encode + the segment-mode heads; target ≤ 1.15×) and its stamp-to-result latency "
                     f"{b.cell(node, 0, paced, 'per frame: latency')} when frames arrive at half the direct rate "
                     f"(target ≤ 1.10×); at 30 Hz newest-frame-wins adds the wait for the worker "
                     f"({b.cell(node, 0, off, 'per frame: latency')}; {b.cell(node, 0, off, 'dropped')} of "
                     f"{b.cell(node, 0, off, 'frames replayed')} frames dropped, never queued)"),
        (BENCH.name, f"the direct calls took {b.cell(node, 0, 'encode + heads direct (baseline)', 'latency p50')} ms "
                     f"per frame in that run (load average {node_run['device']['load_average'][0]}"),
        (BENCH.name, f"{'×'.join(map(str, b.sections['transport']['data']['grid']))} grid of a 640×480 frame costs {r(b.cell('transport', 0, default, 'total ms'), 1)} ms "
                     f"end to end (reduce, DDS, decode), {b.cell('transport', 0, default, 'total / per-frame')} of "
                     f"the node's per-frame model work (target ≤ 10 %), and every cell keeps its best-matching "
                     f"class name ({b.cell('transport', 0, default, 'top-1')})"),
        (BENCH.name, f"16FC64 with subsample 4: {r(b.cell('transport', 1, '16FC64 /4', 'MB'), 2)} MB"),
        (BENCH.name, f"D = 64 features at {r(b.cell(fusion, 0, 'FeatureFusion, D=64', 'frames/s'), 1)} frames/s "
                     f"({b.cell(fusion, 0, 'FeatureFusion, D=64', 'time ratio')} Open3D's colour-only TSDF, in the "
                     f"same run; D = 512: {b.cell(fusion, 0, 'FeatureFusion, D=512', 'time ratio')})"),
        (BENCH.name, f"({r(b.cell(fusion, 0, 'Open3D TSDF', 'ms/frame'), 1)} ms a frame in this one)"),
        (BENCH.name, f"relevancy {r(b.cell(fusion, 1, '100,000', 'relevancy ms'))} ms for 10⁵ voxels, "
                     f"{r(float(r(b.cell(fusion, 1, '10,000,000', 'relevancy ms'))) / 1000, 1)} s for 10⁷ "
                     f"({r(float(r(b.cell(fusion, 1, '10,000,000', 'map MB'))) / 1000, 2)} GB)"),
        (BENCH.name, f"table in {r(b.cell('field_query', 0, exact, 'live path ms'), 1)} ms alone and "
                     f"{r(b.cell('field_query', 0, exact, 'query ms while fusing'))} ms while fusion runs (target "
                     f"50 ms: not met), and one query a second slows fusion by {b.cell('field_query', 0, exact, 'rate drop')} "
                     "(target ≤ 10 %)"),
        (BENCH.name, f"takes {r(lattice_ms, 1)} ms on the voxel lattice ({r(dbscan_ms, 1)} ms with"),
        (BENCH.name, f"queries to read: {r(b.cell('field_query', 0, narrow, 'live path ms'), 1)} ms alone and "
                     f"{r(b.cell('field_query', 0, narrow, 'query ms while fusing'))} ms while fusing, the largest "
                     f"relevancy difference {b.cell('field_query', 0, narrow, 'relevancy gap')} and the same objects"),
        (BENCH.name, f"{r(b.cell('album', 0, '100,000', 'ms / query'))} ms per interleaved query over 10⁵ cached "
                     f"galleries, of which the gallery part is {r(b.cell('album', 0, '100,000', 'gallery part ms'))}"
                     " ms"),
        (BENCH.name, f"give {b.cell('training', 0, '2', 'ratio')} the images/s of one"),
        (BENCH.name, f"{r(b.cell('field_nerf', 0, 'CPU defaults', 's / iteration'), 2)} s per iteration on "
                     f"{b.sections['field_nerf']['data']['cores']} cores (bench `field_nerf`, against "
                     f"{b.cell('field_nerf', 0, 'GPU-sized', 's / iteration')} s with the GPU sizes)"),
        (CAMERA_QOS.name, f"of {qos[('best_effort', '640x480')]['published']} frames of 640×480 at 30 Hz from "
                          f"`find_replay`, {qos[('best_effort', '640x480')]['received']} arrived with `best_effort`, "
                          f"{qos[('reliable', '640x480')]['received']} with `reliable` and "
                          f"{qos[('auto', '640x480')]['received']} with `auto` (at 320×240: "
                          + ", ".join(str(qos[(s, '320x240')]['received']) for s in ("best_effort", "reliable", "auto"))
                          + f"), on the 2 shared cores here at a load average of {qos_load}"),
    ]


def test_readme_states_each_figure_as_its_source_has_it():
    text = flat(README.read_text(encoding="utf-8"))
    wrong = [f"{source}: {phrase!r}" for source, phrase in claims() if flat(phrase) not in text]
    assert not wrong, "README differs from these sources (the phrase as the source has it):\n" + "\n".join(wrong)


def test_camera_qos_table_of_the_ros_doc_equals_its_source():
    """docs/ros_interface.md's reliability table (received / processed, missed) is bench/camera_qos.json's."""
    doc = load(CAMERA_QOS)
    qos = {(row["setting"], row["size"]): row for row in doc["rows"]}
    text = (REPO / "docs" / "ros_interface.md").read_text(encoding="utf-8")
    assert f"load average {doc['load_average_start'][0]}–{doc['load_average_end'][0]}" in flat(text)
    table = readme_table(text, "| setting | 320×240")

    def cell(row: dict) -> str:
        missed = f" ({row['missed']} missed)" if row["missed"] else ""
        return f"{row['received']} / {row['processed']}{missed}"
    for setting, cells in table.items():
        key = setting.strip("`").split("`")[0]
        assert cells == [cell(qos[(key, "320x240")]), cell(qos[(key, "640x480")])], setting


def test_visual_entity_retrieval_table_equals_its_sources():
    """The README's IR@5 by reference_visual_prob: each cell is its evaluation's, on the engine's
    held-out entries with whole-image references, at the probability its column names."""
    table = readme_table(README.read_text(encoding="utf-8"), "| interleave retrieval IR@5 | entities in words")
    sources = {"FIND recipe, 3900 steps (batch 16)": ("synthetic_official_batch16_heldout_engine", ""),
               "embedded checkpoint": ("embedded_heldout_engine", ""),
               "from-scratch checkpoint": ("synthetic_tiny_shipped_heldout_engine", "_reference_image")}
    assert set(table) == set(sources)
    for row, (stem, upstream) in sources.items():
        files = [f"{stem}_visual_prob_0.json", f"{stem}{upstream}.json", f"{stem}_visual_prob_1.json"]
        for cell, name, prob in zip(table[row], files, (0.0, 0.5, 1.0)):
            m = load(RESULTS / name)
            retrieval = m["interleave_retrieval"]
            assert retrieval["reference_view"] == "image" and retrieval.get("reference_visual_prob", 0.5) == prob, name
            assert "--entity-json find_bench/entity_val.json" in m["meta"]["command"], name
            assert cell == r(retrieval["ir5"], 1), (row, name, cell)


def test_each_source_names_how_it_was_made():
    """The metrics a README figure rests on name their command (and the weights where a model was measured)."""
    visual_source = [RESULTS / f"visual_source_{s}_heldout{kind}.json" for s in VISUAL_SOURCES for kind in ("", "_own_stroke")]
    for path in (OFFICIAL, LOCALIZATION, OFFICIAL_OWN_STROKE, CONTINUED, BATCH16, HELDOUT, EMBEDDED_REFERENCES, SCRATCH,
                 *SCRATCH_REFERENCES.values(), EMBEDDED_ENGINE, CONTINUED_REFERENCES, JITTER, CONTINUED_JITTER, HALF_JITTER,
                 *(path for views in DEMO_SCENES.values() for path in views.values()),
                 RESULTS / "visual_source_own_heldout_reference_image.json", *visual_source):
        meta = load(path)["meta"]
        assert meta["command"].startswith("python -m training.") and len(meta["checkpoint_sha256"]) == 64, path
    assert load(CAMERA_QOS)["command"].startswith("python -m bench.ros")


def test_each_interleave_figure_names_its_protocol():
    """Every committed evaluation says how it gave visual entities, and its command gives the same
    (a flag left out means today's default: own strokes in grounding, whole images as references, a
    file reference given as its image half the time)."""
    for path in sorted([*RESULTS.glob("*.json"), HELDOUT]):
        m = load(path)
        if "meta" not in m or "command" not in m["meta"]:
            continue
        command = m["meta"]["command"]
        grounding, retrieval = m.get("interleave_grounding"), m.get("interleave_retrieval")
        if grounding is not None:
            visual = grounding["visual_entities"]
            assert (f"--interleave-visual {visual}" in command) or (visual == "own_stroke" and "--interleave-visual" not in command), path.name
            assert (visual == "reference") == ("reference_view" in grounding), path.name
        views = [x["reference_view"] for x in (grounding, retrieval) if x is not None and "reference_view" in x]
        if retrieval is not None:
            assert "reference_view" in retrieval, path.name
        for view in views:
            assert (f"--reference-view {view}" in command) or (view == "image" and "--reference-view" not in command), path.name
        flag = command.split("--reference-visual-prob ")[1].split()[0] if "--reference-visual-prob" in command else 0.5
        for result in (retrieval, grounding):
            if result is not None and "reference_view" in result:    # the results that read references
                assert result.get("reference_visual_prob", 0.5) == float(flag), path.name   # absent: upstream's 0.5
