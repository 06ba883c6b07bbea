"""training.train / training.evaluate command lines: a short run writes a checkpoint FindPipeline
loads; evaluation prints one JSON object whose numbers agree with the pipeline's own answers."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from find_core.checkpoint import state_digest
from find_core.data import CocoCaptions, CocoPanoptic, RefCocoG
from find_core.engine import EvalConfig, TrainConfig, latest_checkpoint
from find_core.engine.evaluation import evaluate as run_evaluation
from find_core.metrics import GroundingEvaluator, PanopticEvaluator, PanopticSegment, image_text_retrieval
from find_core.pipeline import FindPipeline
from find_core.prompts import ClassPrompt
from training import evaluate, train

ROOT = Path(__file__).resolve().parents[1]
TEST_CONFIG = ROOT / "training" / "configs" / "test_tiny.yaml"
EXPECTED = {
    "generic": {"pq", "sq", "rq", "pq_things", "pq_stuff", "ap", "ap50", "miou", "pixel_acc"},
    "grounding": {"ciou", "miou"},
    "interactive": {"iou_at_1", "noc85", "noc90"},
    "retrieval": {"ir1", "ir5", "ir10", "tr1", "tr5", "tr10"},
    "interleave_grounding": {"ciou", "miou"},
    "interleave_retrieval": {"ir5", "ir10"},
}



@pytest.fixture(scope="module")
def data_root(synthetic_data) -> Path:
    return synthetic_data(1)


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("run")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = train.main(["--config", str(TEST_CONFIG), "--data", str(data_root), "--out", str(out), "--steps", "3",
                           "--seed", "5"])
    assert code == 0, printed.getvalue()
    return out, printed.getvalue()


@pytest.fixture(scope="module")
def run_dir(trained) -> Path:
    return trained[0]


def test_train_cli_writes_a_checkpoint_the_pipeline_loads(trained, data_root):
    run_dir, printed = trained
    assert "step 3/3" in printed and "ETA" in printed and "running:" in printed
    assert f"checkpoint: {run_dir / 'checkpoints' / 'step_0000003'}" in printed
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    checkpoint = latest_checkpoint(run_dir)
    assert checkpoint is not None and checkpoint.name == "step_0000003"
    with (run_dir / "train_log.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [1, 2, 3] and all(np.isfinite(float(r["loss"])) for r in rows)
    saved_config = TrainConfig.from_yaml(checkpoint / "train_config.yaml")
    assert saved_config.data.root == str(data_root) and saved_config.train.seed == 5   # --data, --seed

    pipe = FindPipeline.from_checkpoint(checkpoint, device="cpu")
    saved, state = load_file(str(checkpoint / "model.safetensors")), pipe.model.state_dict()
    assert all(torch.equal(saved[k], state[k]) for k in saved)
    sample = CocoPanoptic(data_root, "val")[0]
    result = pipe.ground(sample.image, ["the red disc"])
    assert len(result.segments) == 1 and result.segments[0].mask.shape == sample.image.shape[:2]


def test_evaluate_cli_prints_one_json_object(run_dir, data_root, tmp_path, capsys):
    capsys.readouterr()
    out = tmp_path / "metrics.json"
    assert evaluate.main(["--config", str(TEST_CONFIG), "--checkpoint", str(run_dir), "--data", str(data_root),
                          "--out", str(out)]) == 0
    metrics = json.loads(capsys.readouterr().out)                 # stdout is the JSON alone
    assert metrics == json.loads(out.read_text())
    assert metrics["skipped"] == {} and metrics["meta"]["checkpoint"].endswith("step_0000003")
    weights = load_file(str(Path(metrics["meta"]["checkpoint"]) / "model.safetensors"))
    assert metrics["meta"]["checkpoint_sha256"] == state_digest(weights)     # names the tensors it measured
    assert metrics["meta"]["command"].startswith("python -m training.evaluate --config ")
    for task, keys in EXPECTED.items():
        assert keys <= set(metrics[task]), task
        for key in keys:
            value = metrics[task][key]
            assert value is None or (0.0 <= value <= 100.0), (task, key, value)
    assert 1.0 <= metrics["interactive"]["noc90"] <= 2.0           # test_tiny.yaml: at most 2 clicks
    assert metrics["generic"]["images"] == 2 and metrics["retrieval"]["captions"] == 6


def test_evaluation_agrees_with_the_pipeline_calls(run_dir, data_root):
    """The evaluator's numbers recomputed independently through FindPipeline's public calls."""
    pipe = FindPipeline.from_checkpoint(latest_checkpoint(run_dir), device="cpu")
    metrics = run_evaluation(pipe, data_root, EvalConfig(split="val", max_images=2, max_clicks=1), log=lambda m: None)

    captions = CocoCaptions(data_root, split="val")
    images = [captions[i].image for i in range(len(captions))]
    texts = [c for i in range(len(captions)) for c in captions[i].captions]
    owners = [i for i in range(len(captions)) for _ in captions[i].captions]
    expected = image_text_retrieval(pipe.retrieve(images, texts).similarity, owners).as_dict()
    assert {k: metrics["retrieval"][k] for k in expected} == pytest.approx(expected)

    refs, grounding = RefCocoG(data_root, "val"), GroundingEvaluator()
    for i in range(2):
        grounding.add(pipe.ground(refs[i].image, [refs[i].sentence]).segments[0].mask, refs[i].mask)
    assert metrics["grounding"]["ciou"] == pytest.approx(grounding.result().ciou)

    panoptic_data = CocoPanoptic(data_root, "val")
    categories = panoptic_data.categories
    panoptic = PanopticEvaluator({c.id: c.isthing for c in categories})
    prompts = [ClassPrompt(text=c.name, isthing=c.isthing) for c in categories]
    for i in range(2):
        sample = panoptic_data[i]
        result = pipe.segment(sample.image, prompts, "panoptic")
        predicted = [PanopticSegment(s.segment_id, categories[s.class_index].id) for s in result.segments]
        truth = [PanopticSegment(s.id, s.category_id, s.iscrowd) for s in sample.segments]
        panoptic.add(result.label_map.astype(np.int64), predicted, panoptic_data.load_id_map(sample.image_id), truth)
    assert metrics["generic"]["pq"] == pytest.approx(panoptic.result().pq)


def test_reference_visual_prob_decides_which_references_retrieval_gives_as_images(run_dir, data_root, tmp_path):
    """eval.reference_visual_prob reaches the entries: with every `visual` phrase rewritten as an official
    `reference`, 0 gives every entity in words, 1 every reference as its image, each ranked as
    FindPipeline.interleave_retrieve ranks it."""
    from find_core.data import FindBenchEntities, load_retrieval_gallery
    from find_core.metrics import interleave_retrieval
    from find_core.tasks.interleave import entity_instruction

    doc = json.loads((data_root / "annotations" / "entity_val.json").read_text())
    references = 0
    for entry in doc["annotations"]:
        for phrase in entry["phrase"]:
            if "visual" in phrase:
                phrase["reference"] = phrase.pop("visual")
                references += 1
    assert references > 0
    entity_json = tmp_path / "entity_reference_val.json"
    entity_json.write_text(json.dumps(doc))
    pipe = FindPipeline.from_checkpoint(latest_checkpoint(run_dir), device="cpu")
    gallery = load_retrieval_gallery(data_root / "annotations" / "retrieval_val.json")
    images = [CocoPanoptic(data_root, "val").load_image(i) for i in gallery]
    for prob, visual in ((0.0, 0), (1.0, references)):
        config = EvalConfig(split="val", entity_json=str(entity_json), reference_visual_prob=prob,
                            tasks=["interleave_retrieval"])
        measured = run_evaluation(pipe, data_root, config, log=lambda m: None)["interleave_retrieval"]
        entries = FindBenchEntities(data_root, "val", entity_json=entity_json, reference_visual_prob=prob)
        samples = [entries[i] for i in range(len(entries))]
        assert sum(p.is_visual for s in samples for p in s.phrases) == visual
        rows = [pipe.interleave_retrieve(entity_instruction(s, f"entry-{i}"), images).similarity[0]
                for i, s in enumerate(samples)]
        expected = interleave_retrieval(np.stack(rows), [gallery.index(s.image_id) for s in samples])
        assert {k: measured[k] for k in expected} == pytest.approx(expected), prob
        assert measured["reference_visual_prob"] == prob
    with pytest.raises(Exception, match="reference_visual_prob must lie in"):
        EvalConfig(reference_visual_prob=1.5)


def test_evaluation_skips_what_the_data_lacks(run_dir, data_root, tmp_path):
    partial = tmp_path / "captions_only"
    partial.mkdir()
    shutil.copy(data_root / "dataset_coco.json", partial / "dataset_coco.json")
    shutil.copytree(data_root / "val", partial / "val")
    pipe = FindPipeline.from_checkpoint(latest_checkpoint(run_dir), device="cpu")
    metrics = run_evaluation(pipe, partial, EvalConfig(split="val"), log=lambda m: None)
    assert set(metrics) == {"retrieval", "skipped", "meta"}
    assert set(metrics["skipped"]) == set(EXPECTED) - {"retrieval"}
    assert "panoptic_val.json" in metrics["skipped"]["generic"]


def test_cli_errors_are_clear(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: tiny-test\ntasks: {generic: {weight: 1}}\ntrain: {stepz: 3}\n")
    assert train.main(["--config", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "stepz" in capsys.readouterr().err
    assert evaluate.main(["--config", str(TEST_CONFIG), "--checkpoint", str(tmp_path), "--data", str(tmp_path)]) == 2
    assert "no checkpoint" in capsys.readouterr().err
