"""The task registry is the one place a task is declared: config sections, loss weights, attention
tables, readers, batches and losses all come from it, and a new task needs no edit anywhere else."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from find_core.config import ConfigError
from find_core.data import CocoPanoptic
from find_core.engine import TASKS, Criterion, TaskData, TrainConfig, Trainer, derive_seed
from find_core.engine.config import TasksConfig
from find_core.engine.trainer import CHECKPOINTS
from find_core.interface.attention_table import TABLES, VISION, source
from find_core.interface.groups import Group
from find_core.interface.inputs import SampleInputs
from find_core.losses import LossConfig, TaskLossWeights
from find_core.model import FindModel
from find_core.tasks import registry
from find_core.tasks.common import text_items
from find_core.tasks.spec import Batch, Drawn, TaskSpec

BUILTIN = ("generic", "grounding", "interactive", "retrieval", "interleave_grounding", "interleave_retrieval")


# ---- a toy task, declared here and nowhere else ----------------------------------------------------
# "How many shapes": each image is paired with the caption "<n> shapes" and trained contrastively.

@dataclass
class CountBatch(Batch):
    captions: list[str]


def _open(root: Path, split: str, data: Any, seed: int) -> CocoPanoptic:
    return CocoPanoptic(root, split)


def _build(drawn: Drawn) -> CountBatch:
    return CountBatch(*drawn.head, [f"{len(s.segments)} shapes" for s in drawn.samples])


def _loss(criterion, model: FindModel, batch: CountBatch) -> dict[str, torch.Tensor]:
    texts = [SampleInputs([query], [prompt])
             for query, prompt in text_items(model, batch.captions, Group.CAPTION, Group.CAPTION_TOKENS)]
    return criterion.contrastive(model, criterion.image_only(model, batch),
                                 model.run_interface(None, texts, batch.task))


TOY = TaskSpec("count_shapes", VISION + source(Group.CAPTION, Group.CAPTION_TOKENS),
               TaskLossWeights(ce=0.0, bce=0.0, dice=0.0, contrastive=3.0), _open, _build, _loss)


@pytest.fixture(scope="module")
def data_root(synthetic_data) -> Path:
    return synthetic_data(0)


# ---- every per-task table is the registry's ---------------------------------------------------------

def test_task_order_is_fixed_and_every_per_task_key_is_a_registered_task():
    assert registry.names() == BUILTIN == TASKS          # seeds and task draws index into this order
    assert [registry.index(name) for name in BUILTIN] == list(range(len(BUILTIN)))
    assert tuple(TasksConfig().entries) == BUILTIN
    assert tuple(LossConfig().task_weights) == BUILTIN
    assert tuple(TABLES) == BUILTIN
    assert all(TABLES[spec.name] == spec.table for spec in registry.specs())
    plain = TrainConfig.from_dict({"tasks": {"generic": {"weight": 1}}}).to_dict()
    assert tuple(plain["tasks"]) == BUILTIN
    assert set(plain["loss"]) >= set(BUILTIN)


def test_yaml_sections_keep_their_shape_and_strict_keys(tmp_path):
    config = TrainConfig.from_dict({
        "tasks": {"generic": {"weight": 2, "batch_size": 4, "root": "x", "split": "val"}},
        "loss": {"generic": {"ce": 3}, "num_points": 100, "retrieval": {"contrastive": 2.0}}})
    assert (config.tasks.generic.weight, config.tasks.generic.batch_size, config.tasks.generic.root) == (2.0, 4, "x")
    assert config.task_split("generic") == "val" and config.task_split("retrieval") == config.data.split
    assert list(config.tasks.enabled()) == ["generic"]
    assert config.loss.generic == TaskLossWeights(ce=3.0, bce=5.0, dice=5.0)
    assert config.loss.retrieval.contrastive == 2.0 and config.loss.num_points == 100
    path = tmp_path / "config.yaml"
    config.to_yaml(path)
    assert TrainConfig.from_yaml(path) == config                           # written form reads back
    for bad, key in (({"tasks": {"genric": {"weight": 1}}}, "genric"),
                     ({"tasks": {"generic": {"weight": 1}}, "loss": {"grounding": {"dice": 1, "cee": 1}}}, "cee"),
                     ({"tasks": {"generic": {"weight": 1}}, "loss": {"interleave": {"ce": 1}}}, "interleave")):
        with pytest.raises(ConfigError, match=key):
            TrainConfig.from_dict(bad)


def test_registry_refuses_duplicates_and_keeps_the_builtins():
    with pytest.raises(ValueError, match="already registered"):
        registry.register(registry.get("generic"))
    with pytest.raises(ValueError, match="built-in"):
        registry.unregister("generic")
    with pytest.raises(ValueError, match="unknown task"):
        registry.get("count_shapes")
    with pytest.raises(ValueError, match="identifier"):
        TaskSpec("two words", TOY.table, TOY.loss_weights, _open, _build, _loss)


# ---- a new task is one module + one registry line -----------------------------------------------------

def test_a_registered_toy_task_trains_end_to_end(data_root, tmp_path):
    """The toy task above is declared only in this file; registering it is all the engine needs: the
    config accepts its sections, the interface knows its table, TaskData reads it, the criterion
    weights its loss, and the trainer draws it with seeds after the built-in tasks'."""
    with registry.registered(TOY):
        assert registry.names() == BUILTIN + ("count_shapes",) and registry.index("count_shapes") == len(BUILTIN)
        assert TABLES["count_shapes"] == TOY.table
        config = TrainConfig.from_dict({
            "model": "tiny-test", "data": {"root": str(data_root)},
            "tasks": {"count_shapes": {"weight": 1, "batch_size": 2}},
            "loss": {"num_points": 64, "count_shapes": {"contrastive": 2.0}},
            "optim": {"lr": 1.0e-3, "warmup_steps": 0},
            "train": {"steps": 1, "checkpoint_every": 1, "log_every": 1}})
        assert config.loss.count_shapes.contrastive == 2.0 and LossConfig().count_shapes.contrastive == 3.0

        data = TaskData.open("count_shapes", data_root, "train", 64)
        batch = data.batch([0, 1], [derive_seed(1, i) for i in (0, 1)])
        assert isinstance(batch, CountBatch) and all(c.endswith(" shapes") for c in batch.captions)
        torch.manual_seed(0)
        model = FindModel(config.model_config())
        default = Criterion(LossConfig())(model, batch).terms["contrastive"]
        overridden = Criterion(config.loss)(model, batch).terms["contrastive"]
        assert float(default) > 0 and float(overridden) == pytest.approx(float(default) * 2.0 / 3.0, rel=1e-5)

        trainer = Trainer(config, tmp_path / "run", log=lambda message: None)
        before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        final = trainer.run()
        trainer.close()
        assert [row["task"] for row in trainer.history] == ["count_shapes"]
        assert trainer.history[0]["contrastive"] > 0
        after = load_file(str(final / "model.safetensors"))
        assert not torch.equal(after["interface.heads.semantic.weight"], before["interface.heads.semantic.weight"])
        assert final.parent.name == CHECKPOINTS
        saved = TrainConfig.from_yaml(final / "train_config.yaml")        # the run's config names the toy task
        assert saved.tasks.count_shapes.weight == 1.0 and saved.loss.count_shapes.contrastive == 2.0
    assert "count_shapes" not in registry.names() and "count_shapes" not in TABLES
    with pytest.raises(ConfigError, match="count_shapes"):
        TrainConfig.from_dict({"tasks": {"count_shapes": {"weight": 1}}})
