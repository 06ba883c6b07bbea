"""Metrics checked against hand-computed answers and independent computations (direct pycocotools)."""
from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from find_core.metrics import (
    GroundingEvaluator,
    InteractiveEvaluator,
    MaskAPEvaluator,
    PanopticEvaluator,
    PanopticSegment,
    SemanticEvaluator,
    image_text_retrieval,
    interleave_retrieval,
    mask_iou,
    next_click,
    recall_at_k,
)

THING, STUFF = 1, 2


# ----------------------------------------------------------------------------- panoptic


def _two_objects_gt() -> tuple[np.ndarray, list[PanopticSegment]]:
    """20x20: thing A (id 1) rows 0-9 cols 0-9, thing B (id 2) rows 0-9 cols 10-19, rest VOID."""
    gt = np.zeros((20, 20), dtype=np.int32)
    gt[:10, :10] = 1
    gt[:10, 10:] = 2
    return gt, [PanopticSegment(1, THING), PanopticSegment(2, THING)]


def test_panoptic_perfect_prediction_is_100():
    gt, segments = _two_objects_gt()
    gt[10:] = 3
    segments.append(PanopticSegment(3, STUFF))
    evaluator = PanopticEvaluator({THING: True, STUFF: False})
    # the prediction uses other ids for the same segments: only the pixels and categories matter
    pred = np.where(gt > 0, gt + 10, 0)
    evaluator.add(pred, [PanopticSegment(s.id + 10, s.category_id) for s in segments], gt, segments)
    assert evaluator.result().as_dict() == pytest.approx({key: 100.0 for key in evaluator.result().as_dict()})


def test_panoptic_one_tp_one_fp_one_fn():
    gt, gt_segments = _two_objects_gt()
    pred = np.zeros_like(gt)
    pred[:10, :8] = 7  # 80 px inside A: IoU 0.8 -> TP
    pred[:10, 16:] = 8  # 40 px inside B: IoU 0.4 -> FP, and B is a FN
    evaluator = PanopticEvaluator({THING: True, STUFF: False})
    evaluator.add(pred, [PanopticSegment(7, THING), PanopticSegment(8, THING)], gt, gt_segments)
    result = evaluator.result()
    assert result.sq == pytest.approx(80.0)
    assert result.rq == pytest.approx(50.0)  # 1 / (1 + 0.5 * 1 + 0.5 * 1)
    assert result.pq == pytest.approx(40.0)
    assert result.pq_things == pytest.approx(40.0)
    assert math.isnan(result.pq_stuff)  # no stuff category appeared
    counts = result.per_category[THING]
    assert (counts.tp, counts.fp, counts.fn) == (1, 1, 1)


def test_panoptic_iou_of_exactly_half_is_not_a_match():
    gt, gt_segments = _two_objects_gt()
    pred = np.zeros_like(gt)
    pred[:10, :5] = 7  # 50 of A's 100 px
    evaluator = PanopticEvaluator({THING: True})
    evaluator.add(pred, [PanopticSegment(7, THING)], gt, gt_segments)
    counts = evaluator.result().per_category[THING]
    assert (counts.tp, counts.fp, counts.fn) == (0, 1, 2)
    assert evaluator.result().pq == 0.0


def test_panoptic_void_is_removed_from_iou_and_from_false_positives():
    gt, gt_segments = _two_objects_gt()
    pred = np.zeros_like(gt)
    pred[:16, :10] = 7  # all of A plus 60 px of VOID: IoU 100 / (160 - 60) = 1, not 100 / 160
    pred[10:, 10:16] = 8  # 60 px entirely on VOID: not a false positive
    pred[6:16, 16:] = 9  # 40 px: 16 on B, 24 on VOID (60 % VOID): not a false positive
    evaluator = PanopticEvaluator({THING: True})
    evaluator.add(pred, [PanopticSegment(i, THING) for i in (7, 8, 9)], gt, gt_segments)
    result = evaluator.result()
    counts = result.per_category[THING]
    assert (counts.tp, counts.fp, counts.fn) == (1, 0, 1)
    assert result.sq == pytest.approx(100.0)
    assert result.rq == pytest.approx(100.0 / 1.5)

    # the same segment with only 40 % on VOID is a false positive
    pred2 = np.zeros_like(gt)
    pred2[:10, :10] = 7
    pred2[4:14, 16:] = 9  # 40 px: 24 on B, 16 on VOID
    evaluator2 = PanopticEvaluator({THING: True})
    evaluator2.add(pred2, [PanopticSegment(7, THING), PanopticSegment(9, THING)], gt, gt_segments)
    counts2 = evaluator2.result().per_category[THING]
    assert (counts2.tp, counts2.fp, counts2.fn) == (1, 1, 1)


def test_panoptic_crowd_is_neither_fn_nor_fp():
    gt, gt_segments = _two_objects_gt()
    gt_segments[1] = PanopticSegment(2, THING, iscrowd=True)  # B is a crowd region
    pred = np.zeros_like(gt)
    pred[:10, :10] = 7
    pred[:10, 12:] = 8  # lies on the crowd region of its own category
    evaluator = PanopticEvaluator({THING: True})
    evaluator.add(pred, [PanopticSegment(7, THING), PanopticSegment(8, THING)], gt, gt_segments)
    counts = evaluator.result().per_category[THING]
    assert (counts.tp, counts.fp, counts.fn) == (1, 0, 0)


def test_panoptic_things_stuff_split_and_category_average():
    gt, gt_segments = _two_objects_gt()
    gt[10:] = 3
    gt_segments.append(PanopticSegment(3, STUFF))
    pred = np.zeros_like(gt)
    pred[:10, :8] = 7  # thing: TP IoU 0.8, B missed
    pred[:10, 16:] = 8  # thing: FP
    pred[10:, :] = 9  # stuff: perfect
    evaluator = PanopticEvaluator({THING: True, STUFF: False, 5: False})  # category 5 never appears
    evaluator.add(pred, [PanopticSegment(7, THING), PanopticSegment(8, THING), PanopticSegment(9, STUFF)],
                  gt, gt_segments)
    result = evaluator.result()
    assert result.pq_things == pytest.approx(40.0)
    assert result.pq_stuff == pytest.approx(100.0)
    assert result.sq_stuff == pytest.approx(100.0)
    assert result.pq == pytest.approx(70.0)  # mean over the 2 categories that appear
    assert result.sq == pytest.approx(90.0)
    assert result.rq == pytest.approx(75.0)
    assert set(result.per_category) == {THING, STUFF}


def test_panoptic_accumulates_over_images():
    gt, gt_segments = _two_objects_gt()
    evaluator = PanopticEvaluator({THING: True})
    evaluator.add(np.where(gt > 0, gt + 4, 0), [PanopticSegment(5, THING), PanopticSegment(6, THING)], gt, gt_segments)
    evaluator.add(np.zeros_like(gt), [], gt, gt_segments)  # nothing predicted: 2 FN
    result = evaluator.result()
    assert result.rq == pytest.approx(100.0 * 2 / (2 + 0.5 * 2))
    assert result.sq == pytest.approx(100.0)


def test_panoptic_rejects_bad_input():
    gt, gt_segments = _two_objects_gt()
    evaluator = PanopticEvaluator({THING: True})
    with pytest.raises(ValueError, match="not listed"):
        evaluator.add(gt, gt_segments[:1], gt, gt_segments)
    with pytest.raises(ValueError, match="unknown category_id"):
        evaluator.add(gt, [PanopticSegment(1, 99), PanopticSegment(2, THING)], gt, gt_segments)
    with pytest.raises(ValueError, match="shape"):
        evaluator.add(gt[:5], gt_segments, gt, gt_segments)
    with pytest.raises(RuntimeError):
        evaluator.result()


# ----------------------------------------------------------------------------- mask AP


def _random_box_mask(rng: np.random.Generator, shape=(48, 64)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    y0, x0 = rng.integers(0, shape[0] - 12), rng.integers(0, shape[1] - 12)
    height, width = rng.integers(6, 12, size=2)
    mask[y0:y0 + height, x0:x0 + width] = True
    return mask


def _jitter(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    return np.roll(mask, tuple(rng.integers(-3, 4, size=2)), axis=(0, 1))


def _random_ap_fixture(seed: int = 0):
    rng = np.random.default_rng(seed)
    gts, preds = {}, {}
    for image_id in (3, 8, 11):
        gt_masks = [_random_box_mask(rng) for _ in range(4)]
        gt_cats = rng.choice([1, 2], size=4).tolist()
        pred_masks = [_jitter(rng, mask) for mask in gt_masks] + [_random_box_mask(rng) for _ in range(2)]
        pred_cats = gt_cats + rng.choice([1, 2], size=2).tolist()
        scores = rng.random(len(pred_masks)).tolist()
        gts[image_id] = (gt_masks, gt_cats)
        preds[image_id] = (pred_masks, pred_cats, scores)
    return gts, preds


def _direct_cocoeval(gts, preds) -> np.ndarray:
    """The reference: the usual pycocotools route (a COCO ground-truth object plus loadRes)."""
    def rle(mask):
        return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))

    annotations, results = [], []
    for image_id, (masks, cats) in gts.items():
        for mask, cat in zip(masks, cats):
            encoded = rle(mask)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat,
                                "segmentation": encoded, "area": float(mask_utils.area(encoded)),
                                "bbox": mask_utils.toBbox(encoded).tolist(), "iscrowd": 0})
    for image_id, (masks, cats, scores) in preds.items():
        for mask, cat, score in zip(masks, cats, scores):
            results.append({"image_id": image_id, "category_id": cat, "segmentation": rle(mask), "score": score})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": [{"id": i, "height": 48, "width": 64} for i in gts],
                           "categories": [{"id": 1}, {"id": 2}], "annotations": annotations}
        coco_gt.createIndex()
        evaluation = COCOeval(coco_gt, coco_gt.loadRes(results), iouType="segm")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation.stats


def test_mask_ap_perfect_prediction_is_100():
    gts, _ = _random_ap_fixture()
    evaluator = MaskAPEvaluator([1, 2])
    for image_id, (masks, cats) in gts.items():
        evaluator.add_ground_truth(image_id, masks, cats)
        evaluator.add_predictions(image_id, masks, cats, [0.9] * len(masks))
    result = evaluator.result()
    assert (result.ap, result.ap50, result.ap75) == (pytest.approx(100.0),) * 3


def test_mask_ap_equals_direct_cocoeval():
    gts, preds = _random_ap_fixture(seed=1)
    evaluator = MaskAPEvaluator([1, 2])
    for image_id in gts:
        evaluator.add_ground_truth(image_id, *gts[image_id])
        evaluator.add_predictions(image_id, *preds[image_id])
    result = evaluator.result()
    reference = _direct_cocoeval(gts, preds)
    assert 0.0 < result.ap < 100.0  # a non-trivial case
    assert result.ap == pytest.approx(100.0 * reference[0], abs=1e-9)
    assert result.ap50 == pytest.approx(100.0 * reference[1], abs=1e-9)
    assert result.ap75 == pytest.approx(100.0 * reference[2], abs=1e-9)


def test_mask_ap_counts_false_positives_on_empty_images_and_rejects_orphans():
    gts, _ = _random_ap_fixture()
    masks, cats = gts[3]
    evaluator = MaskAPEvaluator([1, 2])
    evaluator.add_ground_truth(3, masks, cats)
    evaluator.add_predictions(3, masks, cats, [0.5] * len(masks))
    evaluator.add_ground_truth(4, [], [])
    evaluator.add_predictions(4, [masks[0]], [cats[0]], [0.99])  # a confident FP on an empty image
    assert evaluator.result().ap50 < 100.0

    evaluator.add_predictions(5, [masks[0]], [cats[0]], [0.5])
    with pytest.raises(ValueError, match="no ground truth"):
        evaluator.result()
    with pytest.raises(ValueError, match="unknown category_id"):
        evaluator.add_predictions(3, [masks[0]], [7], [0.5])
    with pytest.raises(ValueError, match="bool"):
        evaluator.add_predictions(3, [masks[0].astype(np.float32)], [1], [0.5])


def test_mask_ap_without_predictions_is_zero():
    gts, _ = _random_ap_fixture()
    evaluator = MaskAPEvaluator([1, 2])
    evaluator.add_ground_truth(3, *gts[3])
    assert evaluator.result().ap == 0.0


# ----------------------------------------------------------------------------- semantic


def test_semantic_miou_matches_manual_confusion_matrix():
    rng = np.random.default_rng(0)
    num_classes = 5
    evaluator = SemanticEvaluator(num_classes, ignore_index=255)
    manual = np.zeros((num_classes, num_classes), dtype=np.int64)
    for _ in range(3):
        gt = rng.integers(0, num_classes - 1, size=(12, 9))  # class 4 never in gt
        gt[rng.random(gt.shape) < 0.2] = 255
        pred = rng.integers(0, num_classes, size=gt.shape)
        evaluator.add(pred, gt)
        for g, p in zip(gt.ravel(), pred.ravel()):
            if g != 255:
                manual[g, p] += 1
    np.testing.assert_array_equal(evaluator.confusion_matrix, manual)
    ious = [manual[c, c] / (manual[c].sum() + manual[:, c].sum() - manual[c, c]) for c in range(4)]
    result = evaluator.result()
    assert result.miou == pytest.approx(100.0 * np.mean(ious))  # class 4 (no gt pixels) is not averaged
    assert result.pixel_acc == pytest.approx(100.0 * np.trace(manual) / manual.sum())


def test_semantic_known_values_and_bad_input():
    gt = np.array([[0, 0, 1, 1]])
    pred = np.array([[0, 1, 1, 1]])
    evaluator = SemanticEvaluator(2)
    evaluator.add(pred, gt)
    # class 0: I 1, U 2 -> 0.5; class 1: I 2, U 3 -> 2/3
    assert evaluator.result().miou == pytest.approx(100.0 * (0.5 + 2 / 3) / 2)
    assert evaluator.result().pixel_acc == pytest.approx(75.0)
    with pytest.raises(ValueError, match="pred has labels"):
        evaluator.add(np.array([[0, 2, 1, 1]]), gt)
    with pytest.raises(ValueError, match="gt has labels"):
        evaluator.add(pred, np.array([[0, 7, 1, 1]]))
    with pytest.raises(ValueError, match="collides"):
        SemanticEvaluator(3, ignore_index=0)


# ----------------------------------------------------------------------------- grounding


def test_grounding_ciou_differs_from_miou():
    evaluator = GroundingEvaluator()
    big_gt = np.zeros((20, 20), dtype=bool)
    big_gt[:10, :10] = True  # 100 px
    big_pred = big_gt.copy()
    big_pred[9, :] = False  # 90 px inside: IoU 0.9
    small_gt = np.zeros((20, 20), dtype=bool)
    small_gt[0, :10] = True  # 10 px
    small_pred = np.zeros((20, 20), dtype=bool)
    small_pred[0, :5] = True  # 5 px inside: IoU 0.5
    assert evaluator.add(big_pred, big_gt) == pytest.approx(0.9)
    assert evaluator.add(small_pred, small_gt) == pytest.approx(0.5)
    result = evaluator.result()
    assert result.ciou == pytest.approx(100.0 * 95 / 110)
    assert result.miou == pytest.approx(70.0)
    assert result.precision_at_50 == pytest.approx(50.0)  # IoU 0.5 is not > 0.5
    with pytest.raises(ValueError, match="values other than 0 and 1"):
        evaluator.add(big_pred * 0.7, big_gt)


# ----------------------------------------------------------------------------- interactive


def test_noc_with_known_iou_sequences():
    evaluator = InteractiveEvaluator(max_clicks=20)
    evaluator.add([0.9])  # both thresholds at click 1
    evaluator.add([0.5, 0.86, 0.89, 0.95])  # 0.85 at click 2, 0.90 at click 4
    evaluator.add([0.1, 0.2, 0.3])  # never: counts as 20 clicks
    result = evaluator.result()
    assert result.iou_at_1 == pytest.approx(50.0)
    assert result.noc85 == pytest.approx((1 + 2 + 20) / 3)
    assert result.noc90 == pytest.approx((1 + 4 + 20) / 3)
    assert (result.nof85, result.nof90) == (1.0, 1.0)
    with pytest.raises(ValueError, match="not percent"):
        evaluator.add([85.0])
    with pytest.raises(ValueError, match="max_clicks"):
        evaluator.add([0.5] * 21)


def test_mask_iou():
    a = np.zeros((4, 4), dtype=bool)
    a[:2] = True
    b = np.zeros((4, 4), dtype=bool)
    b[1:3] = True
    assert mask_iou(a, b) == pytest.approx(4 / 12)
    assert mask_iou(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == 1.0
    with pytest.raises(ValueError, match="shape"):
        mask_iou(a, b[:3])


def test_next_click_picks_centre_of_square_false_negative():
    gt = np.zeros((31, 31), dtype=bool)
    gt[10:21, 5:16] = True  # 11x11 square, centre (15, 10)
    assert next_click(np.zeros_like(gt), gt) == (15, 10, True)


def test_next_click_picks_largest_error_region_and_its_sign():
    gt = np.zeros((40, 40), dtype=bool)
    gt[2:7, 2:7] = True  # small FN region (5x5)
    pred = np.zeros_like(gt)
    pred[20:27, 20:27] = True  # larger FP region (7x7), centre (23, 23)
    assert next_click(pred, gt) == (23, 23, False)
    # now the largest region is a 9x9 FN square on the left image border: the border counts as
    # boundary, so the click is its centre (34, 4), not a pixel on the border itself
    gt[30:39, 0:9] = True
    assert next_click(pred, gt) == (34, 4, True)
    with pytest.raises(ValueError, match="no error region"):
        next_click(gt, gt)


# ----------------------------------------------------------------------------- retrieval


def test_recall_at_k_with_known_similarity():
    similarity = np.array([
        [0.9, 0.1, 0.2, 0.3],  # correct item 0 is rank 0
        [0.5, 0.4, 0.6, 0.1],  # correct item 1 is rank 2
        [0.2, 0.3, 0.1, 0.0],  # correct items {2, 3}: best is 2, rank 2
    ])
    assert recall_at_k(similarity, [0, 1, {2, 3}], ks=(1, 2, 3)) == pytest.approx({1: 100 / 3, 2: 100 / 3, 3: 100.0})
    # a tie with a wrong item counts against the query
    assert recall_at_k(np.ones((2, 3)), [0, 1], ks=(1, 3)) == {1: 0.0, 3: 100.0}
    with pytest.raises(ValueError, match="outside"):
        recall_at_k(similarity, [0, 1, 4])
    with pytest.raises(ValueError, match="rows"):
        recall_at_k(similarity, [0, 1])


def test_image_text_retrieval_karpathy_protocol():
    # 12 images, 2 captions each; caption t belongs to image t // 2
    rng = np.random.default_rng(0)
    text_to_image = [t // 2 for t in range(24)]
    similarity = rng.random((24, 12))
    result = image_text_retrieval(similarity, text_to_image)
    # independent computation by sorting
    image_order = np.argsort(-similarity, axis=1)
    ir = {k: 100 * np.mean([text_to_image[t] in image_order[t, :k] for t in range(24)]) for k in (1, 5, 10)}
    text_order = np.argsort(-similarity.T, axis=1)
    tr = {k: 100 * np.mean([bool({2 * i, 2 * i + 1} & set(text_order[i, :k])) for i in range(12)]) for k in (1, 5, 10)}
    assert result.as_dict() == pytest.approx({"ir1": ir[1], "ir5": ir[5], "ir10": ir[10],
                                              "tr1": tr[1], "tr5": tr[5], "tr10": tr[10]})

    perfect = np.full((4, 2), -1.0)
    perfect[[0, 1], 0] = 1.0
    perfect[[2, 3], 1] = 1.0
    assert image_text_retrieval(perfect, [0, 0, 1, 1]).tr1 == 100.0
    with pytest.raises(ValueError, match="no caption"):
        image_text_retrieval(np.zeros((2, 3)), [0, 1])


def test_interleave_retrieval():
    similarity = np.eye(12)[::-1].copy()  # entry i is most similar to image 11 - i
    assert interleave_retrieval(similarity, [11 - i for i in range(12)]) == {"ir1": 100.0, "ir5": 100.0, "ir10": 100.0}
    shifted = interleave_retrieval(similarity, list(range(12)))
    assert shifted["ir1"] == 0.0 and shifted["ir10"] == 0.0  # correct image ties with 10 wrong ones at 0


def test_thing_accuracy_reads_the_class_of_the_best_overlapping_query():
    """Known answer: query 1 covers thing A and names it right, query 2 overlaps thing B best but names
    it wrong (its no-object column is higher, which thing accuracy ignores)."""
    import torch

    from find_core.engine.evaluation import thing_named_right
    a = np.zeros((6, 6), bool)
    a[:3, :3] = True
    b = np.zeros((6, 6), bool)
    b[3:, 3:] = True
    masks = torch.full((3, 6, 6), -5.0)
    masks[1, :3, :3] = 5.0
    masks[2, 3:, 2:] = 5.0                      # IoU 9/12 with b
    masks[0, 3:, 3:4] = 5.0                     # IoU 3/9 with b
    logits = torch.tensor([[0.0, 9.0, 0.0], [5.0, 0.0, 0.0], [0.0, 1.0, 9.0]])   # K = 2 classes + no object
    assert thing_named_right(logits, masks, [(a, 0), (b, 0)]) == [True, False]
    assert thing_named_right(logits, masks, []) == []
