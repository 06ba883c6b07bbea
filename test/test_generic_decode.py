"""Generic segmentation decoding on hand-built query outputs with a known answer."""
from __future__ import annotations

import numpy as np
import torch

from find_core.prompts import ClassPrompt
from find_core.tasks.generic import decode

CLASSES = [ClassPrompt(text="disc"), ClassPrompt(text="square"), ClassPrompt(text="floor", isthing=False)]
BIG = 20.0


def _queries():
    """4 queries on an 8×8 image: a disc (left), a square (right), floor split in two, and a no-object query."""
    masks = torch.full((5, 8, 8), -BIG)
    masks[0, :, :3] = BIG          # disc, columns 0-2
    masks[1, :, 5:] = BIG          # square, columns 5-7
    masks[2, :4, 3:5] = BIG        # floor, top half of the middle
    masks[3, 4:, 3:5] = BIG        # floor, bottom half of the middle
    masks[4] = BIG                 # no-object query covering everything
    logits = torch.full((5, 4), -BIG)
    logits[0, 0] = logits[1, 1] = logits[2, 2] = logits[3, 2] = logits[4, 3] = BIG
    return logits, masks


def test_panoptic_merges_stuff_and_drops_no_object():
    result = decode("panoptic", *_queries(), CLASSES)
    assert [s.label for s in result.segments] == ["disc", "square", "floor"]
    disc, square, floor = (s.mask for s in result.segments)
    assert disc[:, :3].all() and disc.sum() == 24
    assert square[:, 5:].all() and square.sum() == 24
    assert floor[:, 3:5].all() and floor.sum() == 16          # two floor queries merged into one segment
    assert set(np.unique(result.label_map)) == {1, 2, 3}
    assert not result.segments[2].isthing


def test_instance_and_semantic_modes():
    instance = decode("instance", *_queries(), CLASSES)
    assert sorted(s.label for s in instance.segments) == ["disc", "floor", "floor", "square"]
    semantic = decode("semantic", *_queries(), CLASSES)
    expected = np.zeros((8, 8), np.int32)
    expected[:, :3], expected[:, 3:5], expected[:, 5:] = 1, 3, 2
    assert np.array_equal(semantic.label_map, expected)


def test_object_threshold_and_overlap_rule():
    logits, masks = _queries()
    assert decode("panoptic", logits, masks, CLASSES, object_threshold=1.01).segments == []
    masks[1, :, 2:] = BIG   # the square now claims the disc's last column too, but the disc wins it (tie → first)
    result = decode("panoptic", logits, masks, CLASSES)
    assert result.segments[0].mask[:, 2].all()


def test_official_instance_inference_keeps_the_topk_query_class_pairs():
    """Official (Mask2Former) instance decoding: every (query, class) pair competes; score = class
    probability × mean mask probability inside the mask (mask logit > 0)."""
    masks = torch.full((2, 4, 4), -BIG)
    masks[0, :2] = 2.0            # query 0: top half, sigmoid(2) inside
    masks[1, 2:] = BIG            # query 1: bottom half, ~1 inside
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0],    # query 0: disc > square > floor
                           [0.0, 3.0, 0.0, 2.0]])    # query 1: square; no-object second
    probs = logits.softmax(-1)
    mask_score = [torch.sigmoid(torch.tensor(2.0)).item(), 1.0]
    pairs = sorted(((probs[q, k].item(), q, k) for q in range(2) for k in range(3)), reverse=True)[:3]
    expected = sorted(((p * mask_score[q], q, k) for p, q, k in pairs), reverse=True)

    result = decode("instance", logits, masks, CLASSES, instance_topk=3)
    assert [(s.label, round(s.score, 5)) for s in result.segments] == \
        [(CLASSES[k].name, round(score, 5)) for score, _, k in expected]
    for segment, (_, q, _) in zip(result.segments, expected):
        assert (segment.mask == (masks[q] > 0).numpy()).all()
    # the label map paints the best-scored segment first
    assert result.label_map[3, 0] == 1 and expected[0][1] == 1
