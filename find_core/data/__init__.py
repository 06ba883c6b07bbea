"""Dataset readers (COCO panoptic, RefCOCOg, Karpathy captions, FIND-Bench entities) that all return
the typed samples of :mod:`find_core.data.samples`, and a synthetic-scene generator that writes a
complete dataset in those same formats."""
from .captions import CocoCaptions
from .coco_panoptic import Category, CocoPanoptic, id_to_rgb, read_panoptic_png, rgb_to_id
from .find_bench import FindBenchEntities, load_retrieval_gallery, segment_crop
from .refcoco import Ref, RefCocoG, load_refs
from .samples import CaptionSample, EntityPhrase, EntitySample, PanopticSample, ReferringSample, Segment
from .synthetic_scenes import SyntheticConfig, SyntheticDataset, generate

__all__ = [
    "CocoCaptions", "Category", "CocoPanoptic", "id_to_rgb", "read_panoptic_png", "rgb_to_id",
    "FindBenchEntities", "load_retrieval_gallery", "segment_crop", "Ref", "RefCocoG", "load_refs",
    "CaptionSample", "EntityPhrase", "EntitySample", "PanopticSample", "ReferringSample", "Segment",
    "SyntheticConfig", "SyntheticDataset", "generate",
]
