"""Evaluation metrics of FIND as plain numpy (+ pycocotools) functions; results are in percent."""
from find_core.metrics.grounding import GroundingEvaluator, GroundingResult
from find_core.metrics.interactive import InteractiveEvaluator, InteractiveResult, mask_iou, next_click
from find_core.metrics.mask_ap import MaskAPEvaluator, MaskAPResult
from find_core.metrics.panoptic import CategoryPQ, PanopticEvaluator, PanopticResult, PanopticSegment
from find_core.metrics.retrieval import (
    ImageTextRetrievalResult,
    image_text_retrieval,
    interleave_retrieval,
    recall_at_k,
)
from find_core.metrics.semantic import SemanticEvaluator, SemanticResult

__all__ = [
    "CategoryPQ",
    "GroundingEvaluator",
    "GroundingResult",
    "ImageTextRetrievalResult",
    "InteractiveEvaluator",
    "InteractiveResult",
    "MaskAPEvaluator",
    "MaskAPResult",
    "PanopticEvaluator",
    "PanopticResult",
    "PanopticSegment",
    "SemanticEvaluator",
    "SemanticResult",
    "image_text_retrieval",
    "interleave_retrieval",
    "mask_iou",
    "next_click",
    "recall_at_k",
]
