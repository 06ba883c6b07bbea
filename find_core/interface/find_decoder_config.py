"""The official FIND decoder's dimensions (``FindDecoderConfig``), readable from the upstream yaml's
dotted keys; the decoder itself is :mod:`.find_decoder`."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["FindDecoderConfig"]

# Official values of configs/find/focalt_llama_lang.yaml for the keys the decoder reads.
_OFFICIAL_KEYS: dict[str, Any] = {
    "MODEL.DECODER.HIDDEN_DIM": 512,
    "MODEL.DECODER.NHEADS": 8,
    "MODEL.DECODER.DIM_FEEDFORWARD": 2048,
    "MODEL.DECODER.DEC_LAYERS": 10,
    "MODEL.DECODER.NUM_OBJECT_QUERIES": 101,
    "MODEL.DECODER.PRE_NORM": False,
    "MODEL.DECODER.ENFORCE_INPUT_PROJ": False,
    "MODEL.DECODER.MAX_SPATIAL_LEN": [512, 512, 512, 512],
    "MODEL.DECODER.RETRIEVAL.ENABLED": True,
    "MODEL.DECODER.INTERLEAVE.ENABLED": True,
    "MODEL.ENCODER.MASK_DIM": 512,
    "MODEL.ENCODER.CONVS_DIM": 512,
    "MODEL.DIM_PROJ": 512,
    "ATTENTION_ARCH.SPATIAL_MEMORIES": 32,
}


@dataclass(frozen=True)
class FindDecoderConfig:
    """Decoder dims; defaults are the official focalt_llama_lang values.

    dec_layers follows the yaml's DEC_LAYERS, which counts the prediction from the learnable queries:
    the decoder has `dec_layers - 1` layers and as many intermediate (aux) prediction sets.
    num_queries includes the image query (the last row of query_feat / query_embed).
    pool_image_query: the image query's prediction is similarity-pooled from the object queries
    (upstream does this when retrieval or interleave is enabled).
    """

    hidden_dim: int = 512
    heads: int = 8
    ffn: int = 2048
    dec_layers: int = 10
    num_queries: int = 101
    mask_dim: int = 512
    dim_proj: int = 512
    in_channels: int = 512
    spatial_memories: int = 32
    max_spatial_len: tuple[int, ...] = (512, 512, 512, 512)
    num_levels: int = 3
    pre_norm: bool = False
    enforce_input_proj: bool = False
    pool_image_query: bool = True

    @property
    def num_layers(self) -> int:
        return self.dec_layers - 1

    @classmethod
    def from_upstream_keys(cls, keys: Mapping[str, Any]) -> "FindDecoderConfig":
        """Build from dotted upstream config keys (e.g. `MODEL.DECODER.HIDDEN_DIM`); missing keys keep
        the official value."""
        k = {**_OFFICIAL_KEYS, **keys}
        return cls(
            hidden_dim=int(k["MODEL.DECODER.HIDDEN_DIM"]), heads=int(k["MODEL.DECODER.NHEADS"]),
            ffn=int(k["MODEL.DECODER.DIM_FEEDFORWARD"]), dec_layers=int(k["MODEL.DECODER.DEC_LAYERS"]),
            num_queries=int(k["MODEL.DECODER.NUM_OBJECT_QUERIES"]), mask_dim=int(k["MODEL.ENCODER.MASK_DIM"]),
            dim_proj=int(k["MODEL.DIM_PROJ"]), in_channels=int(k["MODEL.ENCODER.CONVS_DIM"]),
            spatial_memories=int(k["ATTENTION_ARCH.SPATIAL_MEMORIES"]),
            max_spatial_len=tuple(int(v) for v in k["MODEL.DECODER.MAX_SPATIAL_LEN"]),
            pre_norm=bool(k["MODEL.DECODER.PRE_NORM"]), enforce_input_proj=bool(k["MODEL.DECODER.ENFORCE_INPUT_PROJ"]),
            pool_image_query=bool(k["MODEL.DECODER.RETRIEVAL.ENABLED"]) or bool(k["MODEL.DECODER.INTERLEAVE.ENABLED"]),
        )
