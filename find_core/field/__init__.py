"""3D feature fields: FIND's per-pixel embeddings fused (TSDF + voxel averaging) or distilled
(nerfstudio ``find-field``) into 3D, and queried there by text, interleaved instruction or image.

    fusion = FeatureFusion(FusionConfig(voxel_size=0.02))
    fusion.integrate(depth, pose, K, emb.embeddings, emb.stride, rgb=rgb)   # per frame
    fmap = fusion.to_map()                        # save_map / load_map; fusion.continue_from(fmap) goes on
    query = query_from_pipeline(pipeline, text="the red disc")
    relevancy, objects = locate(fmap, query)

The nerfstudio method lives in :mod:`find_core.field.nerf` (imported on demand: it needs nerfstudio).
"""
from .abstain import Abstention, Decision, decide, fit_threshold, load_abstention, save_abstention
from .fusion import FeatureFusion, FusionConfig, FusionStats, MapMismatch, grid_from_geometry
from .io import TsdfBlocks, VoxelFeatureMap, load_map, save_map, write_color_ply, write_relevancy_ply
from .objects import FieldObject, ObjectConfig, find_objects, find_voxel_objects, locate
from .query import CANONICAL_NEGATIVES, Embedder, FieldQuery, query_from_pipeline, relevancy, similarity

__all__ = [
    "Abstention", "Decision", "decide", "fit_threshold", "load_abstention", "save_abstention",
    "FeatureFusion", "FusionConfig", "FusionStats", "MapMismatch", "grid_from_geometry",
    "TsdfBlocks", "VoxelFeatureMap", "load_map", "save_map", "write_color_ply", "write_relevancy_ply",
    "FieldObject", "ObjectConfig", "find_objects", "find_voxel_objects", "locate",
    "CANONICAL_NEGATIVES", "Embedder", "FieldQuery", "query_from_pipeline", "relevancy", "similarity",
]
