"""train.mode official: every task in one decoder forward per batch, trained the way upstream trains it.

Known answers where the official code fixes them (the class-table rows, the conditional attention
change, the corrective click), the per-image draws of the official mapper on a synthetic set, a few
real training steps that lower the loss, exact resume (the kept class table included) and a real
2-process torchrun.
"""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from find_core.config import ConfigError, ModelConfig
from find_core.engine import TrainConfig, Trainer
from find_core.engine.config import DataConfig, InteractiveConfig, OfficialRecipeConfig
from find_core.engine.official_data import OfficialData
from find_core.engine.official_step import OfficialStep, corrective_clicks, term_kind
from find_core.engine.trainer import CHECKPOINTS, CLASS_TABLE, LOG_CSV, STATE_TENSORS
from find_core.interface.find_decoder import InterleavePrompt, StrokePrompt
from find_core.interface.official_table import (CONDITIONAL_ATTENTION, SEG, SPQ, SPT, Segment, draw_conditional,
                                                self_attention_allowed)
from find_core.model import FindModel
from find_core.presets import preset_path
from find_core.tasks import official

ROOT = Path(__file__).resolve().parents[1]


def official_config(data_root: Path, out: Path, **train) -> TrainConfig:
    config = TrainConfig.from_dict({
        "model": "tiny-official",
        "data": {"root": str(data_root), "split": "train"},
        "interactive": {"max_objects": 3},
        "official": {"batch_size": 2, "num_points": 256},
        "optim": {"lr": 1.0e-3, "warmup_steps": 2},
        "train": {"mode": "official", "steps": 6, "seed": 0, "checkpoint_every": 3, "log_every": 1,
                  "out_dir": str(out), **train},
    })
    return config


@pytest.fixture(scope="module")
def data_root(synthetic_data) -> Path:
    return synthetic_data(0)


@pytest.fixture()
def model() -> FindModel:
    torch.manual_seed(0)
    return FindModel(ModelConfig.from_yaml(preset_path("tiny-official")))


# ---- the decoder's training-mode behaviour ----------------------------------------------------------

def test_class_rows_of_the_batch_are_the_class_queries(model):
    """Upstream `compute_similarity` in training: each image's class row is its class query's output, with
    gradient; the table after the last set comes back detached for the next step."""
    torch.manual_seed(1)
    features = official.zero_features(model, batch=2)
    table = torch.randn(5, model.width)
    tokens = [torch.randn(3, model.width, requires_grad=True), torch.randn(4, model.width, requires_grad=True)]
    prompt = official.TextPrompt.padded(tokens)
    indexes = torch.tensor([3, 1])
    out = model.interface(features.levels, features.mask_features, "class", class_prompt=prompt,
                          class_embeddings=table, logit_scale=model.logit_scale)
    with pytest.raises(ValueError, match="class_indexes"):
        model.interface(features.levels, features.mask_features, "seg", class_embeddings=table,
                        logit_scale=model.logit_scale, class_indexes=indexes)
    decoder = model.interface
    final_query = out.final["pred_retrievals_class"][:, 0]                    # [B, C] of the last set
    replaced = decoder._class_table(table, final_query, indexes)
    assert torch.equal(replaced[3], final_query[0]) and torch.equal(replaced[1], final_query[1])
    assert torch.equal(replaced[[0, 2, 4]], table[[0, 2, 4]])
    replaced[3].sum().backward()
    assert tokens[0].grad is not None and tokens[0].grad.abs().sum() > 0      # the class text path learns


def test_conditional_attention_swaps_stroke_tokens_for_stroke_queries():
    """DYNAMICS.CONDITIONAL_ATTENTION: segment proposals read the stroke queries instead of the stroke
    tokens in about 30 % of training forwards."""
    segments = [Segment(SEG, 2), Segment(SPQ, 1), Segment(SPT, 3)]
    plain = self_attention_allowed(segments, 1)[0]
    swapped = self_attention_allowed(segments, 1, swaps=CONDITIONAL_ATTENTION)[0]
    assert plain[:2, 3:].all() and not plain[:2, 2].any()        # SEG sees SPT, not SPQ
    assert swapped[:2, 2].all() and not swapped[:2, 3:].any()    # ... and the other way round
    assert torch.equal(plain[2:], swapped[2:])                    # nobody else changes

    class Fixed:
        def __init__(self, value):
            self.value = value

        def random(self):
            return self.value
    assert draw_conditional(Fixed(0.29)) == CONDITIONAL_ATTENTION
    assert draw_conditional(Fixed(0.31)) == ()


def test_corrective_click_goes_where_the_error_is_largest():
    target = torch.zeros(1, 20, 20, dtype=torch.bool)
    target[0, 4:15, 4:15] = True
    strokes = StrokePrompt([torch.zeros(1, 20, 20, dtype=torch.bool)], [torch.zeros(1, 20, 20, dtype=torch.bool)],
                           torch.tensor([[0]]))
    missed = torch.full((1, 1, 20, 20), -10.0)                         # predicted nothing
    after = corrective_clicks(missed, [target], strokes)
    assert after.pos_masks[0][0, 8:11, 8:11].all() and after.pos_masks[0].sum() == 9   # centre of the object
    assert not after.neg_masks[0].any()

    overshoot = torch.full((1, 1, 20, 20), -10.0)
    overshoot[0, 0, :, :] = 10.0                                       # everything: false positives win
    after = corrective_clicks(overshoot, [target], strokes)
    assert after.neg_masks[0].sum() == 9 and not (after.neg_masks[0] & target).any()
    assert not after.pos_masks[0].any()

    good = torch.where(target, 10.0, -10.0)[None]                      # IoU 1: no further click
    after = corrective_clicks(good, [target], strokes)
    assert not after.pos_masks[0].any() and not after.neg_masks[0].any()


# ---- the per-image draws ----------------------------------------------------------------------------

def test_each_training_image_carries_every_task(data_root):
    recipe = OfficialRecipeConfig(batch_size=2, visual_prob=1.0)
    data = OfficialData(data_root, "train", 64, DataConfig(), InteractiveConfig(max_objects=3), recipe,
                        "Describe the concept of {}.")
    batch = data.batch([0, 1, 2], [11, 12, 13])
    assert batch.images.shape == (3, 3, 64, 64)
    for sample in batch.samples:
        assert len(sample.labels) == len(sample.masks) > 0
        assert 0 <= sample.class_index < len(data.class_names)
        assert sample.class_text == f"Describe the concept of {data.class_names[sample.class_index]}."
        grounding = sample.grounding
        assert grounding.mode == "text" and 1 <= len(grounding.texts) <= recipe.max_grounding - 1
        assert len(grounding.masks) == len(grounding.texts) and grounding.masks.flatten(1).any(1).all()
        assert all(text == text.lower() for text in grounding.texts)
        assert 1 <= len(sample.strokes) <= 3 and sample.strokes.shape == sample.stroke_targets.shape
        assert (sample.strokes & sample.stroke_targets).flatten(1).any(1).all()   # each stroke is on its instance
        entry = sample.entry
        assert all(entry.visual) and entry.text.count(official.PLACEHOLDER) == len(entry.visual)
        assert all(entry.text[start:end] == official.PLACEHOLDER for start, end in entry.spans)
        assert (entry.strokes & entry.masks).flatten(1).any(1).all()
        assert sample.caption
    again = data.batch([0, 1, 2], [11, 12, 13])                        # the seeds decide every draw
    assert [s.grounding.texts for s in again.samples] == [s.grounding.texts for s in batch.samples]
    assert all(torch.equal(a.strokes, b.strokes) for a, b in zip(again.samples, batch.samples))


@pytest.mark.parametrize("option, source", [("visual_source", "batch"), ("visual_source", "batch_nearest"),
                                            ("retrieval_visual_source", "batch")])
def test_visual_entities_from_the_batch_lie_on_a_same_category_instance_of_another_image(data_root, option, source):
    """official.visual_source batch / batch_nearest: each moved stroke lies on a same-category instance of
    the image it names (batch_nearest: the one whose mean colour is nearest the entity's own); nothing
    else of a sample changes, and "own" (upstream) keeps every stroke on its instance.
    official.retrieval_visual_source: the retrieval strokes move so, and the entry's own strokes stay."""
    def draw(**moved: str):
        recipe = OfficialRecipeConfig(visual_prob=1.0, **moved)
        clicks = InteractiveConfig(max_objects=3, point_prob=1.0, box_prob=0.0, scribble_prob=0.0, radius=1)
        data = OfficialData(data_root, "train", 64, DataConfig(), clicks, recipe)
        return data, data.batch(list(range(6)), list(range(20, 26)))
    data, own = draw()
    _, moved = draw(**{option: source})
    panoptic = [data.panoptic.sample(data._ids[i]) for i in range(6)]
    segment = {(b, seg.id): seg for b, sample in enumerate(panoptic) for seg in sample.segments}
    colour = lambda b, seg: panoptic[b].image[seg.mask].mean(0)  # noqa: E731
    count = 0
    for b, (a, m) in enumerate(zip(own.samples, moved.samples)):
        assert a.grounding.texts == m.grounding.texts and torch.equal(a.strokes, m.strokes) and a.caption == m.caption
        assert all(k == -1 for k in a.entry.sources) and torch.equal(a.entry.masks, m.entry.masks)
        assert a.entry.retrieval_strokes is None
        strokes, sources = m.entry.strokes, m.entry.sources
        if option == "retrieval_visual_source":
            assert torch.equal(strokes, a.entry.strokes) and sources == a.entry.sources
            strokes, sources = m.entry.retrieval_strokes, m.entry.retrieval_sources
        for e, (k, segment_id) in enumerate(zip(sources, m.entry.segment_ids)):
            if k < 0:
                assert torch.equal(strokes[e], a.entry.strokes[e])
                continue
            count += 1
            assert k != b
            entity = segment[(b, segment_id)]
            candidates = [(j, seg) for (j, _), seg in segment.items() if j != b and seg.category_id == entity.category_id]
            there = moved.samples[k]
            same = there.masks[there.labels == data._class_index[entity.category_id]].any(0).float()
            near = torch.nn.functional.max_pool2d(same[None, None], 3, 1, 1)[0, 0] > 0  # thin clicks spill <= 1 px
            stroke = strokes[e]
            assert (stroke & same.bool()).any() and not (stroke & ~near).any(), (b, e)
            if source == "batch_nearest":
                distance = {j: min(np.linalg.norm(colour(j, seg) - colour(b, entity)) for jj, seg in candidates if jj == j)
                            for j, _ in candidates}
                assert distance[k] == min(distance.values()), (b, e, k, distance)
    assert count >= 3, count


def test_the_retrieval_itc_alone_reads_entries_with_their_visual_entities_elsewhere(data_root, model):
    """official.retrieval_visual_source: the interleave ITC terms change (a second forward's entries,
    strokes on other images), every other term is the training forward's, unchanged."""
    clicks = InteractiveConfig(max_objects=3, point_prob=1.0, box_prob=0.0, scribble_prob=0.0, radius=1)
    terms = {}
    for source in (None, "batch"):
        recipe = OfficialRecipeConfig(visual_prob=1.0, num_points=64, retrieval_visual_source=source)
        data = OfficialData(data_root, "train", model.config.vision.input_size, DataConfig(), clicks, recipe)
        batch = data.batch(list(range(6)), list(range(20, 26)))
        assert (source is None) != any(k >= 0 for s in batch.samples for k in (s.entry.retrieval_sources or []))
        step = OfficialStep(model, recipe)
        original, seen = step.criterion.compute, {}
        step.criterion.compute = lambda *a, **k: seen.setdefault("result", original(*a, **k))
        step(batch)
        terms[source] = {name: float(value) for name, value in seen["result"].terms.items()}
    assert terms[None].keys() == terms["batch"].keys()
    itc = [name for name in terms[None] if name.startswith("loss_interleave_itc_")]
    # the final set's (the first sets precede the layer where the point tokens reach the entry query)
    assert itc and terms[None]["loss_interleave_itc_0"] != terms["batch"]["loss_interleave_itc_0"]
    for name in set(terms[None]) - set(itc):
        assert terms[None][name] == pytest.approx(terms["batch"][name], rel=1e-6, abs=1e-7), name


def test_a_point_sampled_on_another_batch_element_reads_that_elements_features():
    from find_core.interface.official_prompts import point_sources, sample_on_sources
    projected = torch.stack([torch.full((4, 5, 5), float(b)) for b in range(3)])   # element b's features = b
    grid = torch.rand(3, 7, 1, 2) * 2 - 1
    own = torch.arange(3)[:, None].expand(3, 7)
    plain = torch.nn.functional.grid_sample(projected, grid, align_corners=True).squeeze(3).permute(2, 0, 1)
    assert torch.equal(sample_on_sources(projected, grid, own), plain)
    ids = torch.tensor([[0, 1, 1, 0, -7, -7, -7]] * 3, dtype=torch.float)
    padding = ids < 0
    owner = point_sources([torch.tensor([2, 0]), torch.tensor([1, 1]), torch.tensor([], dtype=torch.long)], ids, padding)
    assert owner.tolist()[0] == [2, 0, 0, 2, 0, 0, 0] and owner.tolist()[1] == [1] * 7 and owner.tolist()[2] == [2] * 7
    tokens = sample_on_sources(projected, grid, owner)                 # [P, B, C]
    assert torch.allclose(tokens[:, :, 0], owner.t().float())


def test_an_entity_region_on_another_batch_image_gives_that_images_point_tokens(model):
    """The decoder samples a visual entity's region on the batch element `region_sources` names: the same
    tokens as the region on that element itself (a region of at most max_spatial_len pixels is taken
    whole, so no random draw differs)."""
    features = model.encode_images(torch.rand(2, 3, 64, 64) * 255)
    region = torch.zeros(1, 64, 64, dtype=torch.bool)
    region[0, 20:22, 30:32] = True
    nothing = torch.zeros_like(region)
    tokens = torch.randn(3, model.width)
    entry = (tokens, torch.tensor([[False, True, False]]), torch.tensor([True]))

    def entity_tokens(regions, sources=None):
        prompt = InterleavePrompt.batch([entry, entry], regions=regions, region_sources=sources)
        return model.interface(features.levels, features.mask_features, "interleave", interleave=prompt).entity_tokens
    on_other = entity_tokens([region, nothing], [torch.tensor([1]), torch.tensor([1])])
    on_itself = entity_tokens([nothing, region])
    for moved, direct in zip(on_other, on_itself):
        keep = ~moved.padding[0]
        assert keep.sum() == 4 and torch.allclose(moved.tokens[:4, 0], direct.tokens[:4, 1], atol=1e-6)


def test_the_official_grounding_protocol_gives_half_the_entities_as_strokes_on_their_own_instance(data_root):
    from find_core.data import FindBenchEntities
    from find_core.engine.evaluation import own_stroke_instruction
    entries = FindBenchEntities(data_root, "val")
    visual = total = 0
    for seed, i in [(seed, i) for seed in range(10) for i in range(len(entries))]:
        sample = entries[i]
        instruction = own_stroke_instruction(sample, np.random.default_rng([seed, i]), f"entry-{i}")
        assert instruction.text == sample.sentence
        for entity, phrase in zip(instruction.entities, sample.phrases, strict=True):
            assert (entity.start, entity.end) == (phrase.start, phrase.end)
            total += 1
            if entity.kind == "visual":
                visual += 1
                assert entity.reference.image is sample.image and (entity.reference.mask & phrase.mask).any()
    assert total >= 20 and 0.3 < visual / total < 0.7, (visual, total)


def test_without_referring_phrases_grounding_uses_the_image_class_names(data_root, tmp_path):
    root = tmp_path / "no_refs"
    shutil.copytree(data_root, root, ignore=shutil.ignore_patterns("refcocog"))
    data = OfficialData(root, "train", 64, DataConfig(), InteractiveConfig(), OfficialRecipeConfig(visual_prob=0.0))
    sample = data.batch([0], [5]).samples[0]
    names = {data.class_texts[int(label)] for label in sample.labels}
    assert sample.grounding.mode == "class" and set(sample.grounding.texts) <= names
    for text, mask in zip(sample.grounding.texts, sample.grounding.masks):  # every instance of a chosen class
        rows = [i for i, label in enumerate(sample.labels) if data.class_texts[int(label)] == text]
        assert any(torch.equal(mask, sample.masks[i]) for i in rows)
    assert sum(t in sample.grounding.texts for t in [data.class_texts[int(l)] for l in sample.labels]) == \
        len(sample.grounding.texts)
    assert not any(sample.entry.visual) and official.PLACEHOLDER not in sample.entry.text


# ---- the trainer --------------------------------------------------------------------------------------

def log_rows(out: Path) -> list[dict[str, str]]:
    with (out / LOG_CSV).open() as handle:
        return list(csv.DictReader(handle))


def test_official_mode_needs_the_official_interface(data_root, tmp_path):
    config = official_config(data_root, tmp_path)
    config.model = "tiny-test"
    with pytest.raises(ConfigError, match="architecture: official"):
        Trainer(config, tmp_path / "run", log=lambda m: None)
    with pytest.raises(ConfigError, match="train.mode"):
        TrainConfig.from_dict({"train": {"mode": "all_at_once"}})


def test_every_loss_group_trains_and_the_loss_falls(data_root, tmp_path):
    config = official_config(data_root, tmp_path, steps=30, checkpoint_every=30, log_every=30)
    trainer = Trainer(config, tmp_path / "run", log=lambda m: None)
    seen: set[str] = set()
    original = trainer.train_module.criterion.compute

    def spy(*args, **kwargs):
        result = original(*args, **kwargs)
        seen.update(name.rsplit("_", 1)[0] for name, value in result.terms.items() if float(value) > 0)
        return result
    trainer.train_module.criterion.compute = spy
    trainer.run()
    trainer.close()
    for group in ("mask_ce", "mask_bce", "mask_dice", "spatial_ce", "spatial_bce", "spatial_dice",
                  "grounding_ce", "grounding_bce", "grounding_dice", "retrieval_decoder",
                  "interleave_itc", "interleave_ce", "interleave_bce", "interleave_dice"):
        assert f"loss_{group}" in seen, group
    assert {term_kind(f"loss_{g}_0") for g in ("mask_ce", "retrieval_decoder", "interleave_itc")} == \
        {"ce", "contrastive"}
    losses = [float(r["loss"]) for r in log_rows(tmp_path / "run")]
    assert len(losses) == 30 and all(r["task"] == "official" for r in log_rows(tmp_path / "run"))
    assert sum(losses[-8:]) / 8 < 0.9 * sum(losses[:8]) / 8, losses


def test_resume_continues_the_weights_and_the_class_table_exactly(data_root, tmp_path):
    silent = {"log": lambda message: None}
    config = official_config(data_root, tmp_path)
    straight = Trainer(config, tmp_path / "straight", **silent)
    final = straight.run()
    straight.close()
    interrupted = tmp_path / "interrupted"
    first = Trainer(config, interrupted, **silent)
    first.run(stop_at=4)
    first.close()
    shutil.rmtree(interrupted / CHECKPOINTS / "step_0000004")
    resumed = Trainer(config, interrupted, resume=True, **silent)
    assert resumed.step == 3 and resumed.train_module.class_table is not None
    resumed_final = resumed.run()
    resumed.close()
    a, b = load_file(str(final / "model.safetensors")), load_file(str(resumed_final / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    table_a = load_file(str(final / STATE_TENSORS))[CLASS_TABLE]
    assert torch.equal(table_a, load_file(str(resumed_final / STATE_TENSORS))[CLASS_TABLE])
    assert [r["loss"] for r in log_rows(tmp_path / "straight")] == [r["loss"] for r in log_rows(interrupted)]


@pytest.mark.slow
def test_torchrun_two_processes_train_the_official_recipe(data_root, tmp_path):
    """Real torch.distributed (gloo): the class table and the contrastive terms gather both processes'
    images (all_gather with the local gradient); rank 0 alone writes the checkpoint and the kept table."""
    config = official_config(data_root, tmp_path, steps=2, checkpoint_every=2, log_every=1)
    config.official.batch_size = 4                                     # 2 per process
    path = tmp_path / "ddp.yaml"
    config.to_yaml(path)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "training.train", "--config", str(path), "--out", str(tmp_path / "two")]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("checkpoint:") == 1
    rows = log_rows(tmp_path / "two")
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(float(r["loss"]))) for r in rows)
    saved = load_file(str(tmp_path / "two" / CHECKPOINTS / "step_0000002" / STATE_TENSORS))
    assert CLASS_TABLE in saved and torch.isfinite(saved[CLASS_TABLE]).all()


def test_evaluation_runs_every_task_on_the_official_decoder(data_root, tmp_path, monkeypatch):
    """training.evaluate on a model with the official decoder (a relative --data, as the README runs it):
    every task measured, interleave retrieval ranked the official way — the same ranking
    FindPipeline.interleave_retrieve gives."""
    import json

    from find_core.data import FindBenchEntities, load_retrieval_gallery
    from find_core.engine import latest_checkpoint
    from find_core.engine.batches import entity_instruction
    from find_core.metrics import interleave_retrieval
    from find_core.pipeline import FindPipeline
    from training import evaluate

    config = official_config(data_root, tmp_path / "run", steps=2, checkpoint_every=2)
    Trainer(config, tmp_path / "run", log=lambda m: None).run()
    path = tmp_path / "official.yaml"
    config.to_yaml(path)
    monkeypatch.chdir(data_root.parent)
    assert evaluate.main(["--config", str(path), "--checkpoint", str(tmp_path / "run"), "--data", data_root.name,
                          "--out", str(tmp_path / "metrics.json")]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["skipped"] == {}
    grounded = metrics["interleave_grounding"]          # every entity, and apart by kind
    assert grounded["visual_entities"] == "own_stroke"  # the official FIND-Bench grounding protocol by default
    assert grounded["text"]["entities"] + grounded["visual"]["entities"] == grounded["entities"]
    assert grounded["visual"]["entities"] > 0
    # the file's references as tight crops (our earlier protocol), those tasks alone
    assert evaluate.main(["--config", str(path), "--checkpoint", str(tmp_path / "run"), "--data", data_root.name,
                          "--out", str(tmp_path / "crops.json"), "--interleave-visual", "reference",
                          "--reference-view", "crop", "--tasks", "interleave_grounding", "interleave_retrieval"]) == 0
    crops = json.loads((tmp_path / "crops.json").read_text())
    assert set(crops["skipped"]) == {"generic", "interactive", "grounding", "retrieval"}
    assert crops["interleave_grounding"]["visual_entities"] == "reference"
    assert crops["interleave_grounding"]["reference_view"] == crops["interleave_retrieval"]["reference_view"] == "crop"
    assert crops["interleave_grounding"]["entities"] == grounded["entities"]
    assert evaluate.main(["--config", str(path), "--checkpoint", str(tmp_path / "run"), "--data", data_root.name,
                          "--out", str(tmp_path / "again.json"), "--tasks", "interleave_grounding"]) == 0
    assert json.loads((tmp_path / "again.json").read_text())["interleave_grounding"] == grounded  # seeded: same figures
    for task, key in (("generic", "pq"), ("interactive", "iou_at_1"), ("grounding", "ciou"), ("retrieval", "ir5"),
                      ("interleave_grounding", "ciou"), ("interleave_retrieval", "ir5")):
        assert metrics[task][key] is None or 0.0 <= metrics[task][key] <= 100.0, (task, metrics[task])

    pipe = FindPipeline.from_checkpoint(latest_checkpoint(tmp_path / "run"), device="cpu")
    gallery = load_retrieval_gallery(data_root / "annotations" / "retrieval_val.json")
    for view, result in (("image", metrics), ("crop", crops)):     # references as whole images (official), crops
        entries = FindBenchEntities(data_root, "val", reference_view=view)
        images = [entries.panoptic.load_image(i) for i in gallery]
        rows = [pipe.interleave_retrieve(entity_instruction(entries[i], f"entry-{i}"), images).similarity[0]
                for i in range(len(entries))]
        targets = [gallery.index(entries[i].image_id) for i in range(len(entries))]
        expected = interleave_retrieval(torch.tensor(rows).numpy(), targets)
        assert {k: result["interleave_retrieval"][k] for k in expected} == pytest.approx(expected), view
        assert result["interleave_retrieval"]["entries"] == len(entries)
        # each term of the official ranking alone, and the ranking made of them
        official_gallery = pipe.gallery(images)
        terms = np.stack([pipe.official_interleave_terms(entity_instruction(entries[i], f"entry-{i}"), official_gallery)
                          for i in range(len(entries))], axis=1)
        np.testing.assert_allclose(official.rank(terms), np.array(rows), atol=1e-3)   # large references: points drawn anew
        for name, alone in zip(("entry_image", "entity_object"), terms):
            assert result["interleave_retrieval"]["by_term"][name] == pytest.approx(interleave_retrieval(alone, targets))


def test_the_finetune_recipe_trains_a_converted_released_model(converted_small_model, data_root, tmp_path):
    """training/configs/official_finetune.yaml on a converted official checkpoint (the reduced official
    weights of the fixtures): its config.yaml's ./language resolves beside it, the official optimizer
    settings load, and one official step changes the trainable interface while the frozen vision side
    keeps the released weights."""
    config = TrainConfig.from_yaml(ROOT / "training" / "configs" / "official_finetune.yaml")
    assert (config.optim.lr, config.optim.clip_grad_norm, config.optim.warmup_factor) == (1e-4, 0.01, 1.0)
    config.model = str(converted_small_model / "config.yaml")
    config.init_checkpoint = str(converted_small_model)
    assert Path(config.model_config().language.name_or_path).is_dir()
    moved = tmp_path / "moved.yaml"                  # a converted folder's "./language" is read beside its YAML
    moved.write_text((converted_small_model / "config.yaml").read_text().replace(
        config.model_config().language.name_or_path, "./language"))
    assert TrainConfig.from_dict({"model": str(moved), "train": {"mode": "official"}}).model_config() \
        .language.name_or_path == str((tmp_path / "language").resolve())
    config.data = DataConfig(root=str(data_root), split="train")
    config.official = OfficialRecipeConfig(batch_size=1, num_points=256)
    config.train.steps, config.train.checkpoint_every, config.train.precision = 1, 1, "fp32"
    trainer = Trainer(config, tmp_path / "finetune", log=lambda m: None)
    final = trainer.run()
    trainer.close()
    before, after = load_file(str(converted_small_model / "model.safetensors")), load_file(str(final / "model.safetensors"))
    changed = {k for k in after if k in before and not torch.equal(before[k], after[k])}
    assert any(k.startswith("interface.") for k in changed)
    assert not any(k.startswith("vision.") for k in changed)


def test_compare_recipes_trains_each_config_the_same_way(data_root, tmp_path):
    """training.compare_recipes: the same seed and data for every config, so only the recipe differs —
    two identical configs give identical figures, a different learning rate different ones."""
    import json

    from training import compare_recipes
    base = official_config(data_root, tmp_path / "unused").to_dict()
    paths = []
    for name, lr in (("a", 1e-3), ("b", 1e-3), ("c", 1e-5)):
        config = TrainConfig.from_dict({**base, "optim": {**base["optim"], "lr": lr}})
        paths.append(tmp_path / f"{name}.yaml")
        config.to_yaml(paths[-1])
    out = tmp_path / "compare.json"
    assert compare_recipes.main([arg for p in paths for arg in ("--config", str(p))] + ["--steps", "4", "--out", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert [r["optim"]["lr"] for r in runs] == [1e-3, 1e-3, 1e-5] and all(r["steps"] == 4 for r in runs)
    assert runs[0]["loss_last_tenth"] == runs[1]["loss_last_tenth"]
    assert runs[0]["loss_first_tenth"] == runs[2]["loss_first_tenth"]     # step 1 precedes any update
    assert runs[0]["loss_last_tenth"] != runs[2]["loss_last_tenth"]
