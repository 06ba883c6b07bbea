"""Official FIND checkpoints → find_ros: every released key lands, parity with the official code's
outputs (fixtures made by running it, test/fixtures/find_reference/README.md), clear refusals."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from find_core.checkpoint import load_checkpoint
from find_core.config import ModelConfig
from find_core.convert.__main__ import main as convert_main
from find_core.convert.checkpoint import convert_official, expected_shapes
from find_core.convert.official import (FIXED_BUFFERS, LANGUAGE_TOWER, OfficialCheckpointError, empty_weight,
                                        map_state)
from find_core.presets import preset_path

from conftest import REFERENCE

SMALL = REFERENCE / "small"
FOCAL_L = REFERENCE / "focal_l_backbone"


def manifest(name: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """key → (shape, group) from a released checkpoint's manifest."""
    rows = {}
    for line in (REFERENCE / f"manifest_{name}.tsv").read_text().splitlines()[1:]:
        key, shape, group, _ = line.split("\t")
        rows[key] = (tuple(int(n) for n in shape.split(",")) if shape else (), group)
    return rows


def fake_official(rows: dict[str, tuple[tuple[int, ...], str]]) -> dict[str, torch.Tensor]:
    """The released state dict at its real shapes, without data (meta tensors), except the fixed
    buffers the converter checks by value."""
    state = {key: torch.empty(shape, device="meta") for key, (shape, _) in rows.items()}
    state["criterion.empty_weight"] = empty_weight(rows["criterion.empty_weight"][0][0] - 1)
    state["dilation_kernel"] = torch.ones(1, 1, 3, 3)
    return state


@pytest.mark.parametrize("released, preset", [("focalt_llama", "find-focalt-llama"), ("focall_llama", "find-focall-llama")])
def test_every_released_key_lands_in_a_parameter_of_its_shape(released, preset):
    rows = manifest(released)
    official = fake_official(rows)
    expected = expected_shapes(ModelConfig.from_yaml(preset_path(preset)), rows["sem_seg_head.predictor.lang_encoder.lang_proj"][0][0])
    ours, notes = map_state(official, expected)
    assert set(ours) == set(expected)  # nothing missing, nothing left over
    assert all(tuple(ours[key].shape) == shape for key, shape in expected.items())
    assert len(ours) + len(FIXED_BUFFERS) == len(rows)
    released_values = sum(math.prod(shape) for shape, _ in rows.values())
    fixed_values = sum(math.prod(rows[key][0]) for key in FIXED_BUFFERS)
    assert sum(t.numel() for t in ours.values()) == released_values - fixed_values
    assert len(notes) == len(FIXED_BUFFERS)


def test_language_tower_manifests_sit_under_the_tower_prefix():
    """The converter takes the tower apart from the rest by this prefix (it becomes its own folder)."""
    for name in ("llama7b_language_tower", "unicl_language"):
        keys = [key for key in manifest(name) if not key.endswith(("lang_proj", "logit_scale"))]
        assert keys and all(key.startswith(LANGUAGE_TOWER) for key in keys)


def _parity(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "find_core.convert", "--parity", str(folder)],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("folder, stages", [(SMALL, ("backbone.", "pixel_decoder.", "generic.", "grounding.", "spatial.")),
                                            (FOCAL_L, ("backbone.",))])
def test_parity_cli_reproduces_the_official_outputs(folder, stages):
    result = _parity(folder)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    compared = dict(line.split("\t") for line in lines[:-1])
    assert all(float(difference) <= 1e-4 for difference in compared.values())
    for stage in stages:  # every stage of the folder was compared
        assert any(name.startswith(stage) for name in compared), stage
    for name in ("backbone", "pixel_decoder", "generic", "grounding", "spatial"):
        path = folder / f"{name}.safetensors"
        if path.is_file():  # every official output tensor of every fixture file
            outputs = [key for key in load_file(str(path)) if not key.startswith("in.")]
            assert all(any(compared_name.endswith(key) and compared_name.startswith(name) for compared_name in compared)
                       for key in outputs if key not in ("image", "image_raw")), name
    assert lines[-1].startswith(f"compared {len(compared)} tensors") and lines[-1].endswith("ok")


def test_parity_cli_fails_on_a_changed_weight_and_on_a_missing_tensor(tmp_path):
    from safetensors.torch import save_file
    folder = tmp_path / "fixture"
    folder.mkdir()
    for name in ("config.json", "backbone.safetensors"):
        (folder / name).write_bytes((SMALL / name).read_bytes())
    weights = load_file(str(SMALL / "weights.safetensors"))
    weights["backbone.norm3.bias"] = weights["backbone.norm3.bias"] + 1e-2
    save_file(weights, str(folder / "weights.safetensors"))
    result = _parity(folder)
    assert result.returncode == 1 and "FAILED" in result.stdout.splitlines()[-1]
    assert float(dict(line.split("\t") for line in result.stdout.splitlines()[:-1])["backbone.res5"]) > 1e-3

    backbone = load_file(str(SMALL / "backbone.safetensors"))
    del backbone["res4"]
    save_file(backbone, str(folder / "backbone.safetensors"))
    save_file(load_file(str(SMALL / "weights.safetensors")), str(folder / "weights.safetensors"))
    result = _parity(folder)
    assert result.returncode == 1 and "lacks tensor res4" in result.stderr


def test_converted_checkpoint_loads_strictly_and_computes_the_official_backbone(tmp_path, official_small_pt, tiny_language):
    out = tmp_path / "converted"
    code = convert_main([str(official_small_pt), "--out", str(out), "--language", str(tiny_language),
                         "--model-config", str(REFERENCE / "small_model.yaml")])
    assert code == 0
    model = load_checkpoint(out).eval()  # strict: every key present, none left over, digest checked
    fixture = load_file(str(SMALL / "backbone.safetensors"))
    with torch.no_grad():
        maps = model.vision(model.vision.normalize(fixture["image_raw"]))
        mask_features, levels = model.pixel_decoder(maps)
    for index, name in enumerate(("res2", "res3", "res4", "res5")):
        assert torch.allclose(maps[index], fixture[name], atol=1e-4), name
    decoded = load_file(str(SMALL / "pixel_decoder.safetensors"))
    assert torch.allclose(mask_features, decoded["mask_features"], atol=1e-4)
    official = load_file(str(SMALL / "weights.safetensors"))
    assert torch.equal(model.language_projection.weight, official["sem_seg_head.predictor.lang_encoder.lang_proj"].t())
    assert model.language_projection.bias is None
    assert torch.equal(model.interface.query_feat.weight, official["sem_seg_head.predictor.query_feat.weight"])


def test_converted_folder_can_move(tmp_path, official_small_pt, tiny_language):
    """A language folder inside the checkpoint folder is recorded relative to it."""
    import shutil
    out = tmp_path / "converted"
    shutil.copytree(tiny_language, out / "language")
    config = ModelConfig.from_yaml(REFERENCE / "small_model.yaml")  # name_or_path: ./language
    convert_official(official_small_pt, out, model_config=config)
    moved = tmp_path / "elsewhere"
    out.rename(moved)
    model = load_checkpoint(moved)
    assert Path(model.config.language.name_or_path) == (moved / "language").resolve()


def _refusal(tmp_path: Path, state_or_bytes, tiny_language: Path) -> str:
    path = tmp_path / "official.pt"
    if isinstance(state_or_bytes, bytes):
        path.write_bytes(state_or_bytes)
    else:
        torch.save(state_or_bytes, path)
    with pytest.raises(OfficialCheckpointError) as caught:
        convert_official(path, tmp_path / "out", tiny_language, ModelConfig.from_yaml(REFERENCE / "small_model.yaml"))
    assert not (tmp_path / "out").exists()  # nothing written on refusal
    return str(caught.value)


def test_converter_refuses_damaged_foreign_and_mismatched_files(tmp_path, official_small_pt, tiny_language):
    good = load_file(str(SMALL / "weights.safetensors"))
    whole = official_small_pt.read_bytes()
    assert "cannot read" in _refusal(tmp_path, whole[: len(whole) // 2], tiny_language)
    assert "not an official FIND checkpoint" in _refusal(tmp_path, {"encoder.weight": torch.zeros(3)}, tiny_language)

    class Code:  # a pickle that would run code when unpickled
        def __reduce__(self):
            return (print, ("unpickled",))
    assert "weights_only" in _refusal(tmp_path, {"backbone.x": torch.zeros(1), "trap": Code()}, tiny_language)

    missing = dict(good)
    del missing["sem_seg_head.predictor.level_embed.weight"]
    assert "missing in the file (1): interface.level_embed.weight" in _refusal(tmp_path, missing, tiny_language)

    extra = dict(good, **{"sem_seg_head.predictor.extra_head.weight": torch.zeros(2)})
    assert "unexpected in the file (1): sem_seg_head.predictor.extra_head.weight" in _refusal(tmp_path, extra, tiny_language)

    shaped = dict(good, **{"backbone.norm0.weight": torch.zeros(5)})
    message = _refusal(tmp_path, shaped, tiny_language)
    assert "shape mismatch (1): backbone.norm0.weight: file (5,) vs model (32,)" in message
    assert "missing" not in message  # a mis-shaped key is reported once, as mis-shaped

    buffer = dict(good, **{"criterion.empty_weight": torch.ones(134)})
    assert "wrong fixed buffer (1): criterion.empty_weight" in _refusal(tmp_path, buffer, tiny_language)


def test_converter_cli_reports_errors_without_a_traceback(tmp_path, capsys):
    assert convert_main([str(tmp_path / "absent.pt"), "--out", str(tmp_path / "out")]) == 1
    assert "official checkpoint not found" in capsys.readouterr().err


def test_a_file_holding_the_llama_tower_converts_into_a_self_contained_folder(tmp_path, tiny_language):
    """The official save may hold the LLaMA tower (LOAD_TENSOR False): it becomes ./language inside
    the checkpoint, and the model reads the same hidden states as the original tower."""
    from transformers import LlamaForCausalLM, LlamaModel
    from find_core.convert.language import rope_inv_freq
    causal = LlamaForCausalLM.from_pretrained(tiny_language)  # the stand-in's weights, with an lm_head
    official = dict(load_file(str(SMALL / "weights.safetensors")))
    for key, value in causal.state_dict().items():
        official[LANGUAGE_TOWER + key] = value
    head_dim = causal.config.hidden_size // causal.config.num_attention_heads
    for layer in range(causal.config.num_hidden_layers):  # a buffer upstream's copy of the file persists
        official[f"{LANGUAGE_TOWER}model.layers.{layer}.self_attn.rotary_emb.inv_freq"] = rope_inv_freq(head_dim)
    path = tmp_path / "with_tower.pt"
    torch.save(official, path)
    config = ModelConfig.from_yaml(REFERENCE / "small_model.yaml")

    with pytest.raises(OfficialCheckpointError, match="no tokenizer"):
        convert_official(path, tmp_path / "refused", None, config)
    out = tmp_path / "converted"
    report = convert_official(path, out, tiny_language, config)  # --language: where the tokenizer is
    assert any("LLaMA tower" in note for note in report.notes)
    assert (out / "language" / "config.json").is_file()
    model = load_checkpoint(out)
    assert Path(model.config.language.name_or_path) == (out / "language").resolve()
    ids = torch.tensor([[2, 7, 11, 5]])
    with torch.no_grad():
        ours = model.language.model(input_ids=ids, output_hidden_states=True).hidden_states
        original = LlamaModel.from_pretrained(tiny_language)(input_ids=ids, output_hidden_states=True).hidden_states
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ours, original))


def test_the_pipeline_task_steps_on_the_converted_model_compute_the_official_outputs(converted_small_model):
    """Image → converted backbone, pixel decoder and decoder through the steps FindPipeline takes for an
    official model (tasks/official.py) → the official outputs. The fixtures bypass the language model,
    so the text side starts from their token features, projected by the converted projection."""
    from find_core.tasks import official
    model = load_checkpoint(converted_small_model).eval()
    image = load_file(str(SMALL / "backbone.safetensors"))["image_raw"].to(torch.uint8)
    generic, grounding, spatial = (load_file(str(SMALL / f"{name}.safetensors")) for name in ("generic", "grounding", "spatial"))

    def projected(hidden: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        return [model.language_projection(h[m.bool()]) for h, m in zip(hidden, mask)]

    with torch.no_grad():
        features = model.encode_images(image)
        classes = official.class_embeddings_of(model, projected(generic["in.class_token_hidden_states"],
                                                                 generic["in.class_attention_mask"]))
        assert torch.allclose(classes, generic["default_text_embeddings"], atol=1e-4)
        outputs = official.image_outputs(model, features, classes)
        for name in ("pred_logits", "pred_masks", "pred_captions", "pred_retrievals"):
            assert torch.allclose(outputs[name], generic[f"seg.{name}"], atol=1e-4), name

        masks, _, _ = official.ground_tokens(model, features, projected(grounding["in.phrase_token_hidden_states"],
                                                                        grounding["in.phrase_attention_mask"]))
        assert torch.allclose(masks, grounding["grounding.pred_gmasks"][0, grounding["post.matched_id"]], atol=1e-4)

        positive = spatial["in.spatial_query_pos_mask"][0]
        objects = [[(region, True)] for region in positive]
        masks, confidence = official.interactive(model, features, objects)
        assert torch.allclose(masks, spatial["spatial.prev_mask"][0], atol=1e-4)
        assert confidence.shape == (2,) and bool(((confidence >= 0) & (confidence <= 1)).all())


@pytest.mark.parametrize("section, value, message", [
    ("vision", {"focalnet": {"variant": "focal_xl"}}, "focalnet.variant must be one of"),
    ("vision", {"focalnet": {"depths": [2, 2, 6]}}, "one entry per stage"),
    ("pixel_decoder", {"architecture": "deformable"}, "pixel_decoder.architecture must be one of"),
    ("interface", {"architecture": "seem"}, "interface.architecture must be one of"),
])
def test_official_config_sections_refuse_unknown_choices(section, value, message):
    from find_core.config import ConfigError
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_dict({section: value})


def test_a_file_holding_a_unicl_tower_gets_a_clip_text_model_and_the_clip_tokenizer(tmp_path):
    """The *_unicl_lang variants keep a UniCL text transformer: it becomes a CLIPTextModel folder with
    the CLIP BPE tokenizer built offline, read at its last (ln_final) layer."""
    from transformers import CLIPTextModel
    from test_language_official import random_unicl
    tower = random_unicl(vocab=49408, context=77, width=40, layers=1, heads=8)  # width = the fixtures' lang_proj rows
    official = dict(load_file(str(SMALL / "weights.safetensors")))
    official.update({LANGUAGE_TOWER + key: value for key, value in tower.state_dict().items()})
    path = tmp_path / "unicl.pt"
    torch.save(official, path)
    report = convert_official(path, tmp_path / "converted", None, ModelConfig.from_yaml(REFERENCE / "small_model.yaml"))
    assert any("UniCL" in note for note in report.notes)
    model = load_checkpoint(tmp_path / "converted")
    assert isinstance(model.language.model, CLIPTextModel) and model.config.language.layer == -1
    assert model.language.tokenizer("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_pipeline_on_a_converted_model_decodes_as_the_official_code(converted_small_model):
    """Official test settings through FindPipeline: classes + "background", top-k instance pairs."""
    import numpy as np
    from find_core import FindPipeline
    pipe = FindPipeline.from_checkpoint(converted_small_model, device="cpu")
    image = np.zeros((96, 128, 3), np.uint8)
    image[20:60, 30:80] = (220, 30, 30)
    result = pipe.segment(image, ["red square", "floor"], mode="instance")
    assert len(result.segments) == pipe.model.config.interface.num_object_queries  # top-k of 10 queries x 2 classes
    scores = [s.score for s in result.segments]
    assert scores == sorted(scores, reverse=True)
    assert pipe._class_cache[1].shape[0] == 3  # the two classes and "background"
    embedding = pipe.embed_pixels(image)
    assert embedding.embeddings.shape[-1] == 64 and np.isfinite(embedding.embeddings).all()


def test_retrieval_and_interleave_steps_on_the_converted_model_compute_the_official_outputs(converted_small_model):
    """Captions, interleave grounding (a visual entity's points from an entity-alone pass on its
    reference, here the same image) and the interleave ranking, through the steps FindPipeline takes."""
    from find_core.tasks import official
    model = load_checkpoint(converted_small_model).eval()
    image = load_file(str(SMALL / "backbone.safetensors"))["image_raw"].to(torch.uint8)
    retrieval, grounding, ranking = (load_file(str(SMALL / f"{name}.safetensors"))
                                     for name in ("retrieval", "interleave_grounding", "interleave_retrieval"))

    def projected(hidden: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        return [model.language_projection(h[m.bool()]) for h, m in zip(hidden, mask)]

    def entry(saved: dict, regions: torch.Tensor, features) -> official.Entry:
        valid = saved["in.entity_attention_mask"][0].bool()
        tokens = projected(saved["in.entity_token_hidden_states"], saved["in.entity_attention_mask"])[0]
        entity_to_tokens = saved["in.entity_to_tokens"][:, valid].bool()
        visual = saved["in.interleave_isvisual"][:, 0].bool()
        alone = [official.entity_alone(model, features, tokens[entity_to_tokens[e]], regions[e]) if visual[e] else None
                 for e in range(len(visual))]
        return official.Entry.of(tokens, entity_to_tokens, visual, alone, model.width)

    with torch.no_grad():
        features = model.encode_images(image)
        captions = official.caption_embeddings_of(model, projected(retrieval["in.caption_token_hidden_states"],
                                                                   retrieval["in.caption_attention_mask"]))
        assert torch.allclose(captions, retrieval["post.text_embeds"], atol=1e-4)

        grounded = entry(grounding, grounding["in.interleave_query_pos_mask"][0], features)
        masks, _ = official.ground_entry(model, features, grounded)
        assert torch.allclose(masks, grounding["post.pred_masks"][0], atol=1e-4)

        regions = torch.cat([torch.zeros_like(ranking["in.visual_entity.refint.interleave_query_pos_mask"][0]),
                             ranking["in.visual_entity.refint.interleave_query_pos_mask"][0]])
        # the fixture's text entity ran on a blank 64x64 input (upstream: 640x640, README section 6.4)
        embedding, entities = official.embed_entry(model, entry(ranking, regions, features), blank_size=64)
        assert torch.allclose(embedding, ranking["post.interleave_embeds"][0, 0], atol=1e-4)
        assert torch.allclose(entities, ranking["post.interleave_entities"], atol=1e-4)
        outputs = official.image_outputs(model, features)
        score = official.interleave_scores(embedding, entities, outputs["pred_retrievals"][:, 0], outputs["pred_captions"])
        expected = ranking["post.ii_scores"] + 0.5 * ranking["post.eo_scores"]
        assert torch.allclose(score, expected[0], atol=1e-4)
