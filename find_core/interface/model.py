"""The FIND interface: learnable queries + prompts through N layers, predictions after every layer."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import InterfaceConfig
from ..encoders.positional import sine_position_embedding
from .attention_table import visibility
from .groups import PROMPTS_OF, SOURCE_QUERIES, Group
from .heads import Heads
from .inputs import ImageFeatures, PredictionSet, SampleInputs
from .layers import FindLayer


class FindInterface(nn.Module):
    def __init__(self, config: InterfaceConfig, num_levels: int = 3):
        super().__init__()
        self.config = config
        width = config.width
        self.object_content = nn.Embedding(config.num_object_queries, width)
        self.object_position = nn.Embedding(config.num_object_queries, width)
        self.image_content = nn.Embedding(1, width)
        self.image_position = nn.Embedding(1, width)
        self.group_embedding = nn.Embedding(len(Group), width)
        # Small, like BERT's token-type embedding: at N(0, 1) its norm (~sqrt(width)) was three times
        # that of the projected text, so every class name and phrase started as nearly the same vector
        # (class embeddings at cosine 0.88 before training) and the class loss had little to separate.
        nn.init.normal_(self.group_embedding.weight, std=0.02)
        self.level_embedding = nn.Embedding(num_levels, width)
        self.layers = nn.ModuleList(FindLayer(config) for _ in range(config.layers))
        self.heads = Heads(width, config.pixel_head_layers)

    def forward(self, features: ImageFeatures | None, samples: list[SampleInputs], task: str) -> list[PredictionSet]:
        """Run the interface on a batch; `features` is None for text-only batches (captions, classes, entries)."""
        batch = self._collate(features, samples)
        x, pos, n_vision = batch["x"], batch["pos"], batch["n_vision"]
        heads = self.config.heads
        blocked = ~visibility(task, batch["groups"], batch["items"], batch["valid"])
        conditional_blocked = blocked.repeat_interleave(heads, dim=0)
        content_blocked = self._content_blocked(batch).repeat_interleave(heads, dim=0)
        source_rows = batch["source_rows"]
        levels, level_pos = self._levels(features)
        mask_features = features.mask_features if features is not None else None

        sets = [self._predict(x, batch, mask_features)]
        for index, layer in enumerate(self.layers):
            level = index % len(levels) if levels else None
            level_blocked = None
            if level is not None and sets[-1].object_masks is not None:
                level_blocked = self._vision_blocked(sets[-1].object_masks, levels[level].shape[1],
                                                     features.levels[level].shape[-2:], n_vision)
            x = layer(x, pos, n_vision if levels else 0,
                      levels[level] if levels else None, level_pos[level] if levels else None, level_blocked,
                      source_rows, content_blocked, conditional_blocked)
            sets.append(self._predict(x, batch, mask_features))
        return sets

    def _collate(self, features: ImageFeatures | None, samples: list[SampleInputs]) -> dict:
        """Lay out [object queries | image query | source queries | prompt tokens | padding] per sample."""
        width = self.config.width
        vision = features is not None
        if vision and len(features) != len(samples):
            raise ValueError(f"{len(features)} images but {len(samples)} samples")
        device = self.object_content.weight.device
        n_object = self.config.num_object_queries if vision else 0
        n_vision = n_object + 1 if vision else 0
        rows, n_sources = [], []
        for sample in samples:
            contents = [q.init for q in sample.queries] + [p.tokens for p in sample.prompts]
            groups = [int(q.group) for q in sample.queries] + [int(p.group) for p in sample.prompts for _ in range(len(p.tokens))]
            items = [q.item for q in sample.queries] + [p.item for p in sample.prompts for _ in range(len(p.tokens))]
            content = torch.cat([c.reshape(-1, width) for c in contents]) if contents else torch.zeros(0, width, device=device)
            rows.append((content, groups, items))
            n_sources.append(len(sample.queries))
        length = n_vision + max((len(r[1]) for r in rows), default=0)
        batch_size = len(samples)
        x = torch.zeros(batch_size, length, width, device=device)
        pos = torch.zeros_like(x)
        groups = torch.full((batch_size, length), -1, dtype=torch.long, device=device)
        items = torch.full((batch_size, length), -1, dtype=torch.long, device=device)
        valid = torch.zeros(batch_size, length, dtype=torch.bool, device=device)
        if vision:
            x[:, :n_object] = self.object_content.weight
            pos[:, :n_object] = self.object_position.weight
            x[:, n_object] = self.image_content.weight[0]
            pos[:, n_object] = self.image_position.weight[0]
            groups[:, :n_object], groups[:, n_object] = int(Group.OBJECT), int(Group.IMAGE)
            valid[:, :n_vision] = True
        for b, (content, group_list, item_list) in enumerate(rows):
            n = len(group_list)
            if n:
                x[b, n_vision:n_vision + n] = content.to(x.dtype)
                groups[b, n_vision:n_vision + n] = torch.tensor(group_list, device=device)
                items[b, n_vision:n_vision + n] = torch.tensor(item_list, device=device)
                valid[b, n_vision:n_vision + n] = True
        known = groups.clamp(min=0)
        x = x + self.group_embedding(known) * valid[..., None]
        source_rows = torch.zeros_like(valid)
        for group in SOURCE_QUERIES:
            source_rows |= groups == int(group)
        max_sources = max(n_sources, default=0)
        source_index = torch.zeros(batch_size, max_sources, dtype=torch.long, device=device)
        source_valid = torch.zeros(batch_size, max_sources, dtype=torch.bool, device=device)
        for b, count in enumerate(n_sources):
            source_index[b, :count] = torch.arange(n_vision, n_vision + count, device=device)
            source_valid[b, :count] = True
        return {"x": x, "pos": pos, "groups": groups, "items": items, "valid": valid, "n_vision": n_vision,
                "n_object": n_object, "source_rows": source_rows, "source_index": source_index,
                "source_valid": source_valid}

    @staticmethod
    def _content_blocked(batch: dict) -> torch.Tensor:
        """Source queries read only the prompt tokens of their own item; other rows read themselves."""
        groups, items = batch["groups"], batch["items"]
        allowed = torch.zeros(groups.shape[0], groups.shape[1], groups.shape[1], dtype=torch.bool, device=groups.device)
        for query, tokens in PROMPTS_OF.items():
            allowed |= ((groups[:, :, None] == int(query)) & (groups[:, None, :] == int(tokens))
                        & (items[:, :, None] == items[:, None, :]))
        allowed |= torch.eye(groups.shape[1], dtype=torch.bool, device=groups.device)[None]
        return ~allowed

    def _levels(self, features: ImageFeatures | None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Flatten the 1/32, 1/16, 1/8 maps to tokens with sine + level position embeddings."""
        if features is None:
            return [], []
        levels, positions = [], []
        for index, level in enumerate(features.levels):
            _, channels, height, width = level.shape
            position = sine_position_embedding(height, width, channels, level.device, level.dtype)
            levels.append(level.flatten(2).transpose(1, 2))
            positions.append((position.flatten(1).t() + self.level_embedding.weight[index])[None])
        return levels, positions

    def _vision_blocked(self, masks: torch.Tensor, n_pixels: int, size: torch.Size, n_vision: int) -> torch.Tensor:
        """Masked attention: object queries see only pixels inside their previous mask (all if empty)."""
        resized = F.interpolate(masks.detach().float(), size=tuple(size), mode="bilinear", align_corners=False)
        blocked = resized.flatten(2).sigmoid() < 0.5
        blocked[blocked.all(dim=-1)] = False
        image_row = torch.zeros(blocked.shape[0], n_vision - blocked.shape[1], n_pixels, dtype=torch.bool,
                                device=blocked.device)
        return torch.cat([blocked, image_row], dim=1).repeat_interleave(self.config.heads, dim=0)

    def _predict(self, x: torch.Tensor, batch: dict, mask_features: torch.Tensor | None) -> PredictionSet:
        n_object = batch["n_object"]
        semantic, masks = self.heads(x, n_object, mask_features)
        index = batch["source_index"]
        source = torch.gather(semantic, 1, index[..., None].expand(-1, -1, semantic.shape[-1]))
        return PredictionSet(
            object_semantic=semantic[:, :n_object] if n_object else None,
            object_masks=masks,
            image_semantic=semantic[:, n_object] if n_object else None,
            source_semantic=source,
            source_valid=batch["source_valid"],
        )
