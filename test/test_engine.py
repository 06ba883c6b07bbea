"""Training engine: per-task losses, deep supervision, overfitting, exact resume, and a real
2-process torchrun (gloo) run against one process on the same global batch."""
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
from find_core.engine import TASKS, Criterion, FeatureCache, TaskData, TrainConfig, Trainer, derive_seed, sample_spatial_prompts
from find_core.engine.batches import InterleaveBatch
from find_core.engine.config import InteractiveConfig, OptimConfig
from find_core.engine.distributed import DistInfo, ShardedStream
from find_core.engine.trainer import CHECKPOINTS, LOG_CSV, build_optimizer, lr_factor, parameter_groups
from find_core.interface.inputs import SampleInputs
from find_core.losses import LossConfig, contrastive_loss
from find_core.model import FindModel
from find_core.presets import preset_path
from find_core.tasks import retrieval

ROOT = Path(__file__).resolve().parents[1]
TEST_CONFIG = ROOT / "training" / "configs" / "test_tiny.yaml"



@pytest.fixture(scope="module")
def data_root(synthetic_data) -> Path:
    return synthetic_data(0)


@pytest.fixture()
def model() -> FindModel:
    torch.manual_seed(0)
    return FindModel(ModelConfig.from_yaml(preset_path("tiny-test")))


def config_for(data_root: Path, **train) -> TrainConfig:
    config = TrainConfig.from_yaml(TEST_CONFIG)
    config.data.root = str(data_root)
    for key, value in train.items():
        setattr(config.train, key, value)
    return config


def batch_of(task: str, data_root: Path, indices=(0, 1)):
    data = TaskData.open(task, data_root, "train", 64, InteractiveConfig(max_objects=3))
    return data.batch(list(indices), [derive_seed(5, i) for i in indices])


def grad_norm(parameter: torch.nn.Parameter) -> float:
    return 0.0 if parameter.grad is None else float(parameter.grad.abs().sum())


# ---- losses -------------------------------------------------------------------------------------

@pytest.mark.parametrize("task", TASKS)
def test_every_task_loss_is_finite_and_trains_the_interface(task, model, data_root):
    criterion = Criterion(LossConfig(num_points=256))
    batch = batch_of(task, data_root)
    output = criterion(model, batch)
    assert torch.isfinite(output.total) and output.total.item() > 0
    expected = {"contrastive"} if "retrieval" in task else {"ce", "bce", "dice"}
    assert set(output.terms) == expected and all(float(v) > 0 for v in output.terms.values())
    output.total.backward()
    names = ["interface.layers.0.conditional_attention.in_proj_weight", "interface.heads.semantic.weight",
             "interface.layers.1.ffn.0.weight", "logit_scale"]
    if task != "interactive":                                   # every other task reads text
        names.append("language_projection.weight")
    for name in names:
        assert grad_norm(dict(model.named_parameters())[name]) > 0, name
    if "retrieval" not in task:
        assert grad_norm(model.interface.heads.pixel.layers[-1].weight) > 0   # mask losses reach the pixel head
    if task == "generic":
        assert grad_norm(model.no_object) > 0
    if task == "interactive":
        assert grad_norm(model.polarity.weight) > 0
    if task.startswith("interleave") and any(e.kind == "visual" for i in batch.instructions for e in i.entities):
        assert grad_norm(model.visual_reference.weight) > 0
    assert all(p.grad is None for p in model.vision.parameters())                  # frozen: no gradient


def test_class_embedding_grad_off_keeps_generic_loss_out_of_the_class_name_path(model, data_root):
    """class_embedding_grad: false makes class names targets only: the generic loss is unchanged but
    no gradient reaches the text side, while the image side still learns."""
    batch = batch_of("generic", data_root)
    losses = {}
    for flag in (True, False):
        model.zero_grad()
        output = Criterion(LossConfig(num_points=256, class_embedding_grad=flag))(model, batch)
        output.total.backward()
        losses[flag] = output.total.item()
        text_side = grad_norm(model.language_projection.weight)
        assert (text_side > 0) is flag
        assert grad_norm(model.interface.heads.semantic.weight) > 0
    assert losses[False] == pytest.approx(losses[True], rel=1e-6)
    with pytest.raises(ValueError, match="class_embedding_grad"):
        LossConfig(class_embedding_grad="no")


def test_retrieval_loss_sums_every_prediction_set(model, data_root):
    """Deep supervision, checked by recomputing the contrastive loss of every set independently."""
    batch = batch_of("retrieval", data_root, (0, 1, 2))
    output = Criterion(LossConfig())(model, batch)
    with torch.no_grad():
        images = model.run_interface(model.encode_images(batch.images), [SampleInputs()] * 3, "retrieval")
        texts = model.run_interface(None, retrieval.caption_samples(model, batch.captions), "retrieval")
        per_set = [float(contrastive_loss(i.image_semantic, t.source_semantic[:, 0], model.logit_scale))
                   for i, t in zip(images, texts)]
    assert len(per_set) == model.config.interface.layers + 1
    assert float(output.terms["contrastive"]) == pytest.approx(8.0 * sum(per_set), rel=1e-5)


def test_interleave_batches_carry_visual_references(data_root):
    data = TaskData.open("interleave_grounding", data_root, "train", 64)
    batch = data.batch(list(range(len(data))), list(range(len(data))))
    assert isinstance(batch, InterleaveBatch)
    kinds = [e.kind for i in batch.instructions for e in i.entities]
    assert "visual" in kinds and "text" in kinds
    for instruction, masks in zip(batch.instructions, batch.masks):
        assert masks.shape == (len(instruction.entities), 64, 64) and masks.flatten(1).any(dim=1).all()


def test_a_few_steps_overfit_a_fixed_batch(model, data_root):
    criterion = Criterion(LossConfig(num_points=256))
    optimizer = build_optimizer(model, OptimConfig(lr=3e-3))
    batches = [batch_of("generic", data_root), batch_of("grounding", data_root)]
    first = last = None
    for _ in range(12):
        optimizer.zero_grad()
        losses = [criterion(model, b).total for b in batches]
        sum(losses).backward()
        optimizer.step()
        values = [v.item() for v in losses]
        first = first or values
        last = values
    assert last[0] < 0.7 * first[0] and last[1] < 0.7 * first[1], (first, last)


def test_feature_cache_reuses_frozen_features_from_disk(model, data_root, tmp_path):
    batch = batch_of("grounding", data_root)
    plain = Criterion(LossConfig(num_points=256))(model, batch).total.item()
    cache = FeatureCache(model, tmp_path / "features")
    assert Criterion(LossConfig(num_points=256), cache)(model, batch).total.item() == pytest.approx(plain, rel=1e-6)
    assert len(list((tmp_path / "features").glob("*/*.safetensors"))) == len(set(batch.image_ids))
    again = FeatureCache(model, tmp_path / "features")      # a new process reads what the first one wrote
    reread = again.encode(model, batch.images)
    assert (again.hits, again.misses) == (len(batch), 0)       # keyed by weights + image (test_feature_cache.py)
    fresh = model.encode_images(batch.images)
    assert torch.allclose(reread.mask_features, fresh.mask_features, atol=1e-6)
    trainable = ModelConfig.from_yaml(preset_path("tiny-test"))
    trainable.vision.frozen = False
    with pytest.raises(ValueError, match="frozen"):
        FeatureCache(FindModel(trainable))


# ---- data, prompts, schedule ----------------------------------------------------------------------

def test_spatial_prompts_come_from_the_mask():
    mask = np.zeros((40, 50), dtype=bool)
    mask[10:30, 5:25] = True
    config = InteractiveConfig(negative_prob=1.0)
    kinds = set()
    for seed in range(30):
        prompts = sample_spatial_prompts(mask, np.random.default_rng(seed), config)
        assert [p.kind for p in sample_spatial_prompts(mask, np.random.default_rng(seed), config)] == \
            [p.kind for p in prompts]                                              # seeded: reproducible
        kinds.add(prompts[0].kind)
        assert prompts[0].positive and not prompts[-1].positive
        for prompt in prompts:
            region = prompt.rasterize(40, 50)
            if prompt.kind == "box":
                assert region[mask].all() and region.sum() <= 21 * 21               # the tight box (PIL: +1 px)
            elif prompt.positive:
                x, y = prompt.points[0]
                assert mask[int(y), int(x)] and (region & mask).sum() > 0.5 * region.sum()
            else:
                x, y = prompt.points[0]
                assert not mask[int(y), int(x)]
    assert kinds == {"point", "box", "scribble"}


def test_sharded_streams_split_the_global_batch():
    single = ShardedStream(12, DistInfo(0, 1), seed=3)
    ranks = [ShardedStream(12, DistInfo(r, 2), seed=3) for r in range(2)]
    for _ in range(8):                          # 8 steps of global batch 4 cross two epochs
        expected = single.take(4)
        assert sorted(ranks[0].take(2) + ranks[1].take(2)) == sorted(expected)
    resumed = ShardedStream(12, DistInfo(0, 1), seed=3)
    resumed.load_state_dict(single.state_dict())
    assert resumed.take(5) == single.take(5)


def test_schedule_and_parameter_groups(model):
    config = OptimConfig(lr=1.0, warmup_steps=10, warmup_factor=0.01, milestones=(0.5, 0.9), gamma=0.1)
    assert lr_factor(0, config, 100) == pytest.approx(0.01)
    assert lr_factor(5, config, 100) == pytest.approx(0.505)
    assert [lr_factor(s, config, 100) for s in (10, 49, 50, 89, 90)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    decay, no_decay = parameter_groups(model, 0.05)
    decayed = {id(p) for p in decay["params"]}
    names = {name for name, p in model.named_parameters() if id(p) in decayed}
    assert "interface.layers.0.ffn.0.weight" in names and "language_projection.weight" in names
    for name in ("logit_scale", "no_object", "interface.object_content.weight", "polarity.weight",
                 "interface.heads.norm.weight", "interface.layers.0.ffn.0.bias"):
        assert name not in names
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    trainable = sum(p.requires_grad for p in model.parameters())
    assert len(decay["params"]) + len(no_decay["params"]) == trainable


def test_config_errors_name_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: tiny-test\ntasks: {generic: {weight: 1, batchsize: 2}}\n")
    with pytest.raises(ConfigError, match=r"config\.tasks\.generic.*batchsize"):
        TrainConfig.from_yaml(path)
    path.write_text("model: tiny-test\ntasks: {}\n")
    with pytest.raises(ConfigError, match="no task has a weight"):
        TrainConfig.from_yaml(path)
    path.write_text("model: tiny-test\ntasks: {retrieval: {weight: 1}}\nloss: {generic: {cee: 1}}\n")
    with pytest.raises(ConfigError, match="cee"):
        TrainConfig.from_yaml(path)
    for section in ("data", "eval"):
        path.write_text(f"model: tiny-test\ntasks: {{retrieval: {{weight: 1}}}}\n{section}: {{reference_view: box}}\n")
        with pytest.raises(ConfigError, match=rf"{section}\.reference_view must be one of \('image', 'crop'\)"):
            TrainConfig.from_yaml(path)


# ---- trainer: exact resume and torchrun ----------------------------------------------------------

def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def log_rows(out: Path) -> list[dict[str, str]]:
    with (out / LOG_CSV).open() as handle:
        return list(csv.DictReader(handle))


def test_resume_after_interruption_gives_identical_weights(data_root, tmp_path):
    config = config_for(data_root, steps=6, checkpoint_every=3)
    silent = {"log": lambda message: None}
    straight = Trainer(config, tmp_path / "straight", **silent)
    final = straight.run()
    straight.close()
    assert {row["task"] for row in straight.history} >= {"generic", "retrieval"}   # several tasks mixed

    interrupted = tmp_path / "interrupted"
    first = Trainer(config, interrupted, **silent)
    first.run(stop_at=4)
    first.close()
    # the crash came after step 4, before its checkpoint: only step 3 survives
    shutil.rmtree(interrupted / CHECKPOINTS / "step_0000004")
    resumed = Trainer(config, interrupted, resume=True, **silent)
    assert resumed.step == 3
    resumed_final = resumed.run()
    resumed.close()

    a, b = weights(final), weights(resumed_final)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in log_rows(tmp_path / "straight")] == [r["loss"] for r in log_rows(interrupted)]
    assert len(log_rows(interrupted)) == 6


def test_torchrun_two_processes_match_one_process(data_root, tmp_path):
    config = config_for(data_root, steps=5, checkpoint_every=5, log_every=5)
    # SGD, unlike Adam, moves weights in proportion to the gradient: a wrongly scaled rank share shows
    config.optim = OptimConfig(name="sgd", lr=0.05, momentum=0.9, warmup_steps=0, clip_grad_norm=1.0)
    for task in TASKS:
        getattr(config.tasks, task).batch_size = 4                # 2 per process
    path = tmp_path / "ddp.yaml"
    config.to_yaml(path)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "training.train", "--config", str(path), "--out", str(tmp_path / "two")]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    single = Trainer(TrainConfig.from_yaml(path), tmp_path / "one", log=lambda message: None)
    single_final = single.run()
    single.close()
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    assert output.count("checkpoint:") == 1                       # only rank 0 reports and writes

    one, two = log_rows(tmp_path / "one"), log_rows(tmp_path / "two")
    assert [r["task"] for r in one] == [r["task"] for r in two]
    assert len({r["task"] for r in one}) >= 2
    for a, b in zip(one, two):
        assert float(b["loss"]) == pytest.approx(float(a["loss"]), rel=1e-4, abs=1e-5)
    a, b = weights(single_final), weights(tmp_path / "two" / CHECKPOINTS / "step_0000005")
    torch.manual_seed(config.train.seed)                          # the trainers' initial weights
    initial = FindModel(config.model_config()).state_dict()
    assert max(float((a[k] - initial[k]).abs().max()) for k in a) > 1e-3   # training moved the weights
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-4, atol=2e-5), key


def test_interleave_tasks_read_the_entity_file_the_data_config_names(synthetic_data, tmp_path):
    """A FIND-Bench file made elsewhere (e.g. by python -m training.find_bench) is what the interleave
    tasks train on when data.entity_json names it; without it, the split's default file."""
    import json
    import shutil
    from find_core.engine.batches import TaskData
    from find_core.engine.config import DataConfig
    root = tmp_path / "data"
    shutil.copytree(synthetic_data(0), root)
    default = json.loads((root / "annotations" / "entity_train.json").read_text())
    kept = dict(default, annotations=default["annotations"][:2])
    (root / "engine").mkdir()
    (root / "engine" / "entity_train.json").write_text(json.dumps(kept))
    assert len(TaskData.open("interleave_grounding", root, "train", 64)) == len(default["annotations"])
    named = TaskData.open("interleave_grounding", root, "train", 64, data=DataConfig(entity_json="engine/entity_train.json"))
    assert len(named) == 2
