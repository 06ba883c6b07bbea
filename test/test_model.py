"""The FIND model: every task runs forward and backward, and the attention tables are enforced."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from find_core.instructions import Entity, Instruction, VisualReference
from find_core.interface.groups import Group
from find_core.interface.inputs import PromptBlock, SampleInputs, SourceQuery
from find_core.preprocess import letterbox
from find_core.prompts import ClassPrompt
from find_core.tasks import generic, grounding, interactive, interleave, interleave_grounding, interleave_retrieval, retrieval


def _features(model, images):
    tensor, boxes = letterbox(images, model.config.vision.input_size)
    return model.encode_images(tensor), boxes


def _interface_grads(model) -> bool:
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.interface.parameters())


def _check_sets(sets, model, batch, sources):
    assert len(sets) == model.config.interface.layers + 1  # deep supervision: one set before the first layer
    for s in sets:
        q, width = model.config.interface.num_object_queries, model.width
        if s.object_semantic is not None:
            assert s.object_semantic.shape == (batch, q, width)
            assert s.object_masks.shape[:2] == (batch, q)
            assert s.image_semantic.shape == (batch, width)
        assert s.source_semantic.shape == (batch, sources, width)


def test_generic_forward_backward(tiny_model, scene_image):
    classes = [ClassPrompt(text="red square"), ClassPrompt(text="floor", isthing=False),
               ClassPrompt(example=VisualReference(image=scene_image, box=(8, 8, 24, 24)))]
    embeddings = generic.class_embeddings(tiny_model, classes)
    assert embeddings.shape == (3, tiny_model.width)
    features, _ = _features(tiny_model, [scene_image, scene_image])
    sets = tiny_model.run_interface(features, [SampleInputs(), SampleInputs()], generic.TASK)
    _check_sets(sets, tiny_model, 2, 0)
    logits = generic.class_logits(tiny_model, sets[-1].object_semantic, embeddings)
    assert logits.shape == (2, tiny_model.config.interface.num_object_queries, 4)
    (logits.logsumexp(-1).mean() + sets[-1].object_masks.mean()).backward()
    assert _interface_grads(tiny_model)
    assert tiny_model.language_projection.weight.grad is not None  # text classes train the projection
    assert all(p.grad is None for p in tiny_model.vision.model.parameters())  # frozen backbone


def test_grounding_forward_backward(tiny_model, scene_image):
    features, _ = _features(tiny_model, [scene_image, scene_image])
    samples = grounding.samples(tiny_model, [["the red square", "blue disc"], ["grey floor"]])
    sets = tiny_model.run_interface(features, samples, grounding.TASK)
    _check_sets(sets, tiny_model, 2, 2)
    assert sets[-1].source_valid.tolist() == [[True, True], [True, False]]
    tiny_model.similarity(sets[-1].source_semantic, sets[-1].object_semantic).sum().backward()
    assert _interface_grads(tiny_model)


def test_interactive_forward_backward(tiny_model, scene_image):
    features, boxes = _features(tiny_model, [scene_image])
    region = np.zeros(scene_image.shape[:2], bool)
    region[10:20, 10:20] = True
    negative = np.zeros_like(region)
    negative[30:35, 50:60] = True
    objects = [[[(boxes[0].to_input(region), True), (boxes[0].to_input(negative), False)]],
               ]
    samples = interactive.samples(tiny_model, features, objects)
    assert samples[0].prompts[0].tokens.shape[0] == 2 * 3 * tiny_model.config.interface.spatial_points
    sets = tiny_model.run_interface(features, samples, interactive.TASK)
    _check_sets(sets, tiny_model, 1, 1)
    sets[-1].object_masks.sigmoid().mean().backward()
    assert tiny_model.polarity.weight.grad is not None and tiny_model.polarity.weight.grad.abs().sum() > 0


def test_retrieval_forward_backward(tiny_model, scene_image):
    captions = retrieval.caption_embeddings(tiny_model, ["a red square", "a blue disc on grey", "nothing"])
    assert captions.shape == (3, tiny_model.width)
    features, _ = _features(tiny_model, [scene_image, scene_image[::-1].copy()])
    images = tiny_model.run_interface(features, [SampleInputs(), SampleInputs()], retrieval.TASK)[-1].image_semantic
    tiny_model.similarity(captions, images).logsumexp(-1).sum().backward()
    assert _interface_grads(tiny_model)
    assert tiny_model.logit_scale.grad is not None


def test_interleave_tasks_forward_backward(tiny_model, scene_image):
    instruction = Instruction("put the red square next to <img>",
                              (Entity(4, 18, "text"), Entity(27, 32, "visual",
                                                             VisualReference(image=scene_image, box=(46, 20, 66, 40)))))
    features, _ = _features(tiny_model, [scene_image])
    sets = tiny_model.run_interface(features, interleave_grounding.samples(tiny_model, [instruction]),
                                    interleave_grounding.TASK)
    _check_sets(sets, tiny_model, 1, 2)
    entries = interleave_retrieval.entry_embeddings(tiny_model, [instruction, Instruction.from_text("a blue disc")])
    assert entries.shape == (2, tiny_model.width)
    (sets[-1].source_semantic.sum() + entries.sum()).backward()
    assert tiny_model.visual_reference.weight.grad.abs().sum() > 0  # the visual entity is in the graph


@pytest.mark.parametrize("n_visual", [0, 1, 3])
def test_interleaved_entries_fill_visual_spans(tiny_model, scene_image, n_visual):
    words = ["the square", "<a>", "<b>", "<c>"]
    text = " and ".join(words)
    entities, start = [], 0
    for index, word in enumerate(words):
        start = text.index(word, start)
        visual = 0 < index <= n_visual
        entities.append(Entity(start, start + len(word), "visual" if visual else "text",
                               VisualReference(image=scene_image, box=(8 * index, 0, 8 * index + 16, 16)) if visual else None))
        start += len(word)
    instruction = Instruction(text, tuple(entities))
    tokens = tiny_model.encode_texts([text])
    visual = interleave.visual_tokens(tiny_model, [instruction])[0]
    assert sorted(visual) == list(range(1, n_visual + 1))
    sample = interleave.entry_sample(instruction, tokens, 0, visual, Group.ENTITY)
    assert len(sample.queries) == len(words)
    prompt = sample.prompts[0].tokens
    valid_positions = torch.nonzero(tokens.valid[0]).flatten().tolist()
    for index, entity in enumerate(instruction.entities):
        span = tokens.tokens_in_span(0, entity.start, entity.end).tolist()
        decoded = tiny_model.language.tokenizer.decode(
            tiny_model.language.tokenizer(text)["input_ids"][span[0]:span[-1] + 1]).replace(" ", "")
        assert decoded == instruction.phrase(index).replace(" ", "").lower()
        rows = [valid_positions.index(p) for p in span]
        if entity.kind == "visual":
            assert torch.allclose(prompt[rows], visual[index].expand(len(rows), -1))
        else:
            assert torch.allclose(prompt[rows], tokens.features[0, span])
        assert torch.allclose(sample.queries[index].init, prompt[rows].mean(0))


def _grad_of(output: torch.Tensor, inputs: torch.Tensor) -> float:
    (grad,) = torch.autograd.grad(output.sum(), inputs, retain_graph=True, allow_unused=True)
    return 0.0 if grad is None else float(grad.abs().sum())


def test_attention_table_blocks_and_allows_gradients(tiny_model, scene_image):
    """Grounding: a phrase query sees only its own tokens; object queries see every phrase."""
    features, _ = _features(tiny_model, [scene_image])
    width = tiny_model.width
    own = torch.randn(3, width, requires_grad=True)
    other = torch.randn(4, width, requires_grad=True)
    sample = SampleInputs([SourceQuery(Group.PHRASE, 0, torch.zeros(width)), SourceQuery(Group.PHRASE, 1, torch.zeros(width))],
                          [PromptBlock(Group.PHRASE_TOKENS, 0, own), PromptBlock(Group.PHRASE_TOKENS, 1, other)])
    sets = tiny_model.run_interface(features, [sample], grounding.TASK)
    phrase0 = sets[-1].source_semantic[0, 0]
    assert _grad_of(phrase0, other) == 0.0
    assert _grad_of(phrase0, own) > 0.0
    assert _grad_of(sets[-1].object_semantic, other) > 0.0


def test_attention_table_isolates_classes_from_the_image(tiny_model, scene_image):
    """Generic: class queries never see the image (so class embeddings can be cached)."""
    tensor, _ = letterbox([scene_image], tiny_model.config.vision.input_size)
    features = tiny_model.encode_images(tensor)
    features.mask_features.requires_grad_(True)
    for level in features.levels:
        level.requires_grad_(True)
    width = tiny_model.width
    tokens = torch.randn(3, width, requires_grad=True)
    sample = SampleInputs([SourceQuery(Group.CLASS, 0, tokens.mean(0))], [PromptBlock(Group.CLASS_TOKENS, 0, tokens)])
    sets = tiny_model.run_interface(features, [sample], generic.TASK)
    class_out = sets[-1].source_semantic[0, 0]
    assert sum(_grad_of(class_out, level) for level in features.levels) == 0.0
    assert _grad_of(class_out, tokens) > 0.0
    assert _grad_of(sets[-1].object_semantic, tokens) == 0.0       # objects do not read class names
    assert sum(_grad_of(sets[-1].object_semantic, level) for level in features.levels) > 0.0


def test_unknown_task_table_is_refused(tiny_model):
    with pytest.raises(KeyError, match="no attention table"):
        tiny_model.run_interface(None, [SampleInputs()], "dance")
