"""Losses of FIND checked against known answers and independent computations."""
from __future__ import annotations

import math
import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import find_core.tasks  # noqa: F401  (the task registry declares the per-task default loss weights)
from find_core.losses import (
    HungarianMatcher,
    LossConfig,
    TaskLossWeights,
    class_loss,
    contrastive_loss,
    dice_loss,
    point_mask_losses,
    point_sample,
    query_choice_loss,
    sigmoid_bce_loss,
    uncertain_points,
)


# ---------------------------------------------------------------- weights

def test_default_weights_are_the_papers():
    cfg = LossConfig()
    assert (cfg.generic.ce, cfg.generic.bce, cfg.generic.dice) == (2.0, 5.0, 5.0)
    for task in (cfg.grounding, cfg.interactive, cfg.interleave_grounding):
        assert (task.ce, task.bce, task.dice, task.contrastive) == (0.4, 1.0, 1.0, 0.0)
    assert cfg.retrieval.contrastive == cfg.interleave_retrieval.contrastive == 8.0
    assert cfg.retrieval.ce == cfg.retrieval.bce == cfg.retrieval.dice == 0.0
    assert cfg.no_object_weight == 0.1 and cfg.num_points == 12544
    assert (cfg.oversample_ratio, cfg.importance_ratio) == (3.0, 0.75)
    assert (cfg.matcher_cost_class, cfg.matcher_cost_mask, cfg.matcher_cost_dice) == (2.0, 5.0, 5.0)
    cfg.generic.ce = 9.0
    assert LossConfig().generic.ce == 2.0  # no shared mutable defaults


def test_from_dict_partial_and_unknown_keys():
    cfg = LossConfig.from_dict({"generic": {"ce": 3}, "num_points": 100, "retrieval": {"contrastive": 2.0}})
    assert cfg.generic == TaskLossWeights(ce=3.0, bce=5.0, dice=5.0)
    assert cfg.num_points == 100 and cfg.retrieval.contrastive == 2.0
    assert cfg.grounding.ce == 0.4
    with pytest.raises(ValueError, match="num_point"):
        LossConfig.from_dict({"num_point": 5})
    with pytest.raises(ValueError, match="cee"):
        LossConfig.from_dict({"grounding": {"cee": 1.0}})
    with pytest.raises(ValueError, match="oversample_ratio"):
        LossConfig(oversample_ratio=0.5)
    with pytest.raises(ValueError, match="bce"):
        TaskLossWeights(ce=1.0, bce=-1.0, dice=1.0)


# ---------------------------------------------------------------- point sampling

def test_point_sample_ramp_known_values():
    h, w = 4, 8
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    image = torch.stack([xs, 10 * ys])[None]  # channel 0 = column index, channel 1 = 10 * row index
    # align_corners=False: normalised u maps to pixel coordinate u * size - 0.5.
    # The last point is the far corner: border padding keeps the edge pixel's value.
    coords = torch.tensor([[[0.5 / w, 0.5 / h], [0.25, 0.5], [(3 + 0.5) / w, (2 + 0.5) / h], [0.5, 0.25],
                            [1.0, 1.0]]])
    out = point_sample(image, coords)
    assert out.shape == (1, 2, 5)
    torch.testing.assert_close(out[0, 0], torch.tensor([0.0, 1.5, 3.0, 3.5, 7.0]))
    torch.testing.assert_close(out[0, 1], torch.tensor([0.0, 15.0, 20.0, 5.0, 30.0]))
    with pytest.raises(ValueError, match="coords"):
        point_sample(image, torch.rand(1, 3, 3))


def test_uncertain_points_prefer_the_boundary():
    torch.manual_seed(0)
    xs = torch.linspace(0, 1, 64)
    logits = ((xs - 0.5) * 40).expand(64, 64)[None, None].repeat(2, 1, 1, 1)  # boundary at x = 0.5
    pts = uncertain_points(logits, 2000, 3.0, 0.75)
    assert pts.shape == (2, 2000, 2) and pts.min() >= 0 and pts.max() <= 1
    near = ((pts[..., 0] - 0.5).abs() < 0.1).float().mean().item()
    uniform = ((uncertain_points(logits, 2000, 3.0, 0.0)[..., 0] - 0.5).abs() < 0.1).float().mean().item()
    assert abs(uniform - 0.2) < 0.04  # importance 0 is plain uniform sampling
    assert near > 0.6  # 75 % picked among the most uncertain third of 6000 candidates


# ---------------------------------------------------------------- mask losses

def test_dice_identical_and_disjoint():
    target = torch.zeros(3, 100)
    target[0, :30] = 1
    target[1, 50:] = 1
    target[2, ::3] = 1
    same = (2 * target - 1) * 50
    assert dice_loss(same, target, 3).item() == pytest.approx(0.0, abs=0.02)
    disjoint = -same
    assert dice_loss(disjoint, target, 3).item() == pytest.approx(1.0, abs=0.03)
    # num_masks normalises the sum over masks
    assert dice_loss(disjoint, target, 1).item() == pytest.approx(3 * dice_loss(disjoint, target, 3).item())


def test_bce_matches_torch():
    torch.manual_seed(1)
    logits, targets = torch.randn(5, 37), (torch.rand(5, 37) > 0.5).float()
    expected = F.binary_cross_entropy_with_logits(logits, targets) * 5 / 2.5
    torch.testing.assert_close(sigmoid_bce_loss(logits, targets, 2.5), expected)


def test_point_mask_losses_known_answers_and_gradient():
    torch.manual_seed(2)
    cfg = LossConfig(num_points=500)
    # Logit 0 everywhere: BCE is ln 2 at every point whatever the target; targets all ones at a
    # different resolution give Dice 1 - (P + 1) / (1.5 P + 1).
    pred = torch.zeros(2, 16, 16, requires_grad=True)
    target = torch.ones(2, 64, 48, dtype=torch.bool)
    bce, dice = point_mask_losses(pred, target, cfg, num_masks=2)
    assert bce.item() == pytest.approx(math.log(2), rel=1e-5)
    assert dice.item() == pytest.approx(1 - 501 / 751, rel=1e-5)
    (bce + dice).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0

    # A prediction of the right mask scores far better than one of the wrong half.
    box = torch.zeros(1, 64, 64)
    box[:, :, :32] = 1
    good = F.interpolate((box * 2 - 1)[None] * 20, size=16, mode="nearest")[0]
    good_bce, good_dice = point_mask_losses(good, box, cfg, 1)
    bad_bce, bad_dice = point_mask_losses(-good, box, cfg, 1)
    assert good_bce < 0.5 * bad_bce and good_dice < 0.5 * bad_dice

    empty = torch.zeros(0, 16, 16, requires_grad=True)
    zb, zd = point_mask_losses(empty, torch.zeros(0, 64, 64), cfg, 1)
    assert zb.item() == zd.item() == 0.0 and zb.requires_grad
    with pytest.raises(ValueError, match="targets"):
        point_mask_losses(pred, target[:1], cfg, 1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        point_mask_losses(pred.detach(), torch.full((2, 8, 8), 255.0), cfg, 1)


def test_class_loss_weights_no_object():
    torch.manual_seed(3)
    logits = torch.randn(2, 6, 4)  # K = 3 classes + no-object
    targets = torch.tensor([[0, 3, 3, 1, 3, 2], [3, 3, 2, 3, 3, 0]])
    flat_logits, flat_targets = logits.reshape(-1, 4), targets.reshape(-1)
    per_item = -flat_logits.log_softmax(-1)[torch.arange(12), flat_targets]
    weights = torch.where(flat_targets == 3, 0.1, 1.0)
    expected = (per_item * weights).sum() / weights.sum()
    torch.testing.assert_close(class_loss(logits, targets, 0.1), expected)
    assert not torch.allclose(class_loss(logits, targets, 1.0), expected)
    with pytest.raises(ValueError, match="target_classes"):
        class_loss(logits, torch.full((2, 6), 4), 0.1)


def test_query_choice_loss():
    scores = torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    target = torch.tensor([0, 2])
    expected = -math.log(math.exp(5) / (math.exp(5) + 2))
    assert query_choice_loss(scores, target).item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="target_query"):
        query_choice_loss(scores, torch.tensor([0, 3]))


# ---------------------------------------------------------------- matcher

def _rect_masks(n: int, size: int = 32) -> torch.Tensor:
    masks = torch.zeros(n, size, size)
    for i in range(n):
        r, c = divmod(i, 3)
        masks[i, r * 10:r * 10 + 9, c * 10:c * 10 + 9] = 1
    return masks


def test_matcher_recovers_permutation():
    torch.manual_seed(4)
    targets = _rect_masks(6)
    perm = torch.randperm(6)  # query q shows target perm[q]
    preds = F.interpolate(((targets[perm] * 2 - 1) * 10)[None], size=16, mode="bilinear")[0]
    matcher = HungarianMatcher.from_config(LossConfig())
    q, t = matcher.match(preds, targets)
    assert q.dtype == t.dtype == torch.long and len(q) == 6
    assert torch.equal(t, perm[q])

    # More queries than targets: the extra (empty) queries stay unmatched.
    extra = torch.cat([preds, torch.full((4, 16, 16), -10.0)])
    q, t = matcher.match(extra[torch.tensor([6, 0, 7, 1, 2, 8, 3, 4, 9, 5])], targets)
    assert len(q) == 6 and set(q.tolist()) == {1, 3, 4, 6, 7, 9}
    # Fewer queries than targets: min(Q, N) pairs.
    q, t = matcher.match(preds[:2], targets)
    assert len(q) == 2 and torch.equal(t, perm[:2])


def test_matcher_respects_class_cost_on_tied_masks():
    target = _rect_masks(1).repeat(2, 1, 1)  # two identical targets
    preds = (target * 2 - 1) * 10  # two identical predictions
    matcher = HungarianMatcher(num_points=1000)
    q, t = matcher.match(preds, target, class_cost=torch.tensor([[0.0, -1.0], [-1.0, 0.0]]))
    assert q.tolist() == [0, 1] and t.tolist() == [1, 0]
    q, t = matcher.match(preds, target, class_cost=torch.tensor([[-1.0, 0.0], [0.0, -1.0]]))
    assert t.tolist() == [0, 1]
    with pytest.raises(ValueError, match="class_cost"):
        matcher.match(preds, target, class_cost=torch.zeros(3, 2))
    q, t = matcher.match(preds, target[:0])
    assert len(q) == len(t) == 0


# ---------------------------------------------------------------- contrastive

def test_contrastive_aligned_and_swapped():
    a = torch.eye(4, 8)
    scale = torch.tensor(math.log(100.0))
    assert contrastive_loss(a, a.clone(), scale).item() == pytest.approx(0.0, abs=1e-6)
    swapped = contrastive_loss(a, a[torch.tensor([1, 0, 3, 2])], scale).item()
    assert swapped == pytest.approx(100.0, rel=1e-3)  # the positive is 100 logits below a negative
    torch.manual_seed(5)
    x, y = torch.randn(6, 5), torch.randn(6, 5)
    logits = 3.0 * F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T
    manual = (F.cross_entropy(logits, torch.arange(6)) + F.cross_entropy(logits.T, torch.arange(6))) / 2
    torch.testing.assert_close(contrastive_loss(x, y, torch.tensor(math.log(3.0))), manual)
    with pytest.raises(ValueError, match="logit_scale"):
        contrastive_loss(x, y, torch.zeros(2))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _global_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g), torch.tensor(math.log(4.0))


def _dist_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=30))
    try:
        a, b, scale = _global_batch()
        n = a.shape[0] // world
        a_local = a[rank * n:(rank + 1) * n].clone().requires_grad_(True)
        b_local = b[rank * n:(rank + 1) * n].clone().requires_grad_(True)
        loss = contrastive_loss(a_local, b_local, scale)
        loss.backward()
        local_only = contrastive_loss(a_local.detach(), b_local.detach(), scale, gather=False)
        torch.save({"loss": loss.detach(), "local_only": local_only, "ga": a_local.grad, "gb": b_local.grad},
                   Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()  # no rank tears gloo down while the other is still inside a collective
    finally:
        dist.destroy_process_group()


def test_contrastive_distributed_equals_global_batch(tmp_path):
    world = 2
    mp.spawn(_dist_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=True)
    a, b, scale = _global_batch()
    a.requires_grad_(True)
    b.requires_grad_(True)
    reference = contrastive_loss(a, b, scale)
    reference.backward()
    n = a.shape[0] // world
    for rank in range(world):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(got["loss"], reference.detach())
        assert not torch.allclose(got["local_only"], reference.detach())  # gathering mattered
        rows = slice(rank * n, (rank + 1) * n)
        # all_gather's backward sums the ranks' identical gradients: world x this rank's share,
        # which DDP's averaging turns back into the single-process gradient.
        torch.testing.assert_close(got["ga"], world * a.grad[rows])
        torch.testing.assert_close(got["gb"], world * b.grad[rows])
        assert got["ga"].abs().sum() > 0 and got["gb"].abs().sum() > 0
