"""One FIND interface layer: content attention, conditional attention, FFN (post-norm)."""
from __future__ import annotations

import torch
from torch import nn

from ..config import InterfaceConfig


class FindLayer(nn.Module):
    def __init__(self, config: InterfaceConfig):
        super().__init__()
        width, heads, dropout = config.width, config.heads, config.dropout
        self.vision_attention = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.vision_norm = nn.LayerNorm(width)
        self.content_attention = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.content_norm = nn.LayerNorm(width)
        self.conditional_attention = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.conditional_norm = nn.LayerNorm(width)
        self.ffn = nn.Sequential(nn.Linear(width, config.ffn), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(config.ffn, width))
        self.ffn_norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, n_vision: int,
                level: torch.Tensor | None, level_pos: torch.Tensor | None, level_blocked: torch.Tensor | None,
                source_rows: torch.Tensor, content_blocked: torch.Tensor,
                conditional_blocked: torch.Tensor) -> torch.Tensor:
        """x, pos: [B, L, C]. Masks are boolean, True = blocked, shaped [B*heads, L_q, L_k]."""
        if n_vision and level is not None:
            # Mask2Former masked attention: vision queries read the image level inside their last masks
            queries = x[:, :n_vision]
            update = self.vision_attention(queries + pos[:, :n_vision], level + level_pos, level,
                                           attn_mask=level_blocked, need_weights=False)[0]
            x = torch.cat([self.vision_norm(queries + update), x[:, n_vision:]], dim=1)
        if bool(source_rows.any()):
            # source queries read their own prompt tokens
            update = self.content_attention(x + pos, x, x, attn_mask=content_blocked, need_weights=False)[0]
            x = torch.where(source_rows[..., None], self.content_norm(x + update), x)
        update = self.conditional_attention(x + pos, x + pos, x, attn_mask=conditional_blocked, need_weights=False)[0]
        x = self.conditional_norm(x + update)
        return self.ffn_norm(x + self.ffn(x))
