"""The official FIND criterion (`find_core.losses.official`) against upstream SetCriterion.

Reference: test/fixtures/find_reference/small/train_losses.safetensors (README section 7): every loss
term and every Hungarian assignment upstream produced on the training forward of
train_forward.safetensors (batch 1), and on synthetic batch-2 predictions (part `b2`, where the
contrastive terms are not trivially 0). Point sampling is replayed from the saved seed.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from find_core.convert.interface_parity import (decoder_config, decoder_state, entry_prompt, padded_text_prompt,
                                                phrase_prompt, strokes_of)
from find_core.convert.parity import fixture_config
from find_core.interface.find_decoder import DecoderOutput, FindDecoder
from find_core.losses.official import (ImageTargets, OfficialCriterion, OfficialLossConfig, OfficialLossWeights,
                                       OfficialResult)
from find_core.losses.official_points import PointSampling, importance_points

FIXTURES = Path(__file__).parent / "fixtures" / "find_reference" / "small"
LOSSES = FIXTURES / "train_losses.safetensors"
LANGUAGE = "sem_seg_head.predictor.lang_encoder."
TOLERANCE = 1e-4  # absolute, relative for values above 1
GROUP_TERMS = {"mask": ("ce", "bce", "dice"), "spatial": ("ce", "bce", "dice"), "grounding": ("ce", "bce", "dice"),
               "retrieval": ("decoder",), "interleave": ("itc", "ce", "bce", "dice")}


# ---- fixture access ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved() -> dict[str, torch.Tensor]:
    return load_file(str(LOSSES))


@pytest.fixture(scope="module")
def forward() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "train_forward.safetensors"))


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "weights.safetensors"))


def _decoder(weights: dict[str, torch.Tensor]) -> FindDecoder:
    decoder = FindDecoder(decoder_config(fixture_config(FIXTURES)))
    decoder.load_state_dict(decoder_state(weights), strict=True)
    return decoder


def _run_train(decoder: FindDecoder, forward: dict[str, torch.Tensor],
               weights: dict[str, torch.Tensor]) -> DecoderOutput:
    """The decoder's `train` call on the saved training-forward inputs (as interface_parity drives it)."""
    lang_proj = weights[LANGUAGE + "lang_proj"]
    pixel = load_file(str(FIXTURES / "pixel_decoder.safetensors"))
    generic = load_file(str(FIXTURES / "generic.safetensors"))

    def text(kind: str):
        return forward[f"in.{kind}_token_hidden_states"], forward[f"in.{kind}_attention_mask"], lang_proj

    return decoder([pixel[f"multi_scale_features.{i}"] for i in range(3)], pixel["mask_features"], "train",
                   class_embeddings=generic["default_text_embeddings"], logit_scale=weights[LANGUAGE + "logit_scale"],
                   class_prompt=padded_text_prompt(*text("class")), grounding=phrase_prompt(*text("phrase")),
                   strokes=strokes_of(forward), retrieval=padded_text_prompt(*text("caption")),
                   interleave=entry_prompt(forward, lang_proj))


@pytest.fixture(scope="module")
def our_output(forward, weights) -> DecoderOutput:
    decoder = _decoder(weights).eval()
    with torch.no_grad():
        return _run_train(decoder, forward, weights)


def _targets(saved: dict[str, torch.Tensor], prefix: str) -> list[ImageTargets]:
    """ImageTargets from upstream's target dicts (`{prefix}target.{b}.*`) and the criterion's
    `interleave_isvisual` ([E, B], padded with 0)."""
    batch = len({k[len(prefix + "target."):].split(".")[0] for k in saved if k.startswith(prefix + "target.")})
    visual = saved[prefix + "interleave_isvisual"]
    images = []
    for b in range(batch):
        def get(key: str) -> torch.Tensor:
            return saved[f"{prefix}target.{b}.{key}"]
        valid = get("caption_mask")[0].bool()
        entities = len(get("interleave_masks"))
        images.append(ImageTargets(
            labels=get("labels"), masks=get("masks"), spatial_masks=get("gt_spatial_masks"),
            grounding_masks=get("grounding_masks"), grounding_phrase_ids=get("grounding_hash"),
            grounding_task=("text", "class")[int(get("grounding_task"))],
            caption_tokens=get("caption_tokens")[0][valid],
            interleave_masks=get("interleave_masks"), interleave_visual=visual[:entities, b].bool()))
    return images


def _saved_sets(tensors: dict[str, torch.Tensor], prefix: str) -> list[dict[str, torch.Tensor]]:
    """Final set, then the intermediate sets from the last one back (upstream's loss order)."""
    final = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix) and ".aux." not in k}
    count = len({k.split(".aux.")[1].split(".")[0] for k in tensors if k.startswith(prefix + "aux.")})
    aux = [{k[len(f"{prefix}aux.{i}."):]: v for k, v in tensors.items() if k.startswith(f"{prefix}aux.{i}.")}
           for i in range(count)]
    return [final] + aux[::-1]


def _criterion_on(sets, saved, prefix: str, logit_scale: torch.Tensor) -> OfficialResult:
    generator = torch.Generator().manual_seed(int(saved[prefix + "seed"]))
    with torch.no_grad():
        return OfficialCriterion().compute_sets(sets, _targets(saved, prefix), logit_scale, generator)


def _differences(result: OfficialResult, saved: dict[str, torch.Tensor], prefix: str) -> dict[str, float]:
    """Per upstream term: |ours - upstream| / max(1, |upstream|)."""
    expected = sorted(k[len(prefix):] for k in saved if k.startswith(prefix + "loss_"))
    assert sorted(result.terms) == expected
    return {name: (result.terms[name].double() - saved[prefix + name].double()).abs().item()
            / max(1.0, abs(saved[prefix + name].item())) for name in expected}


def _assert_matches(result: OfficialResult, saved: dict[str, torch.Tensor], prefix: str) -> None:
    expected = {k[len(prefix + "match."):].rsplit(".", 2)[0] for k in saved if k.startswith(prefix + "match.")}
    assert set(result.matches) == expected
    for key, per_image in result.matches.items():
        for b, (src, tgt) in enumerate(per_image):
            assert torch.equal(src, saved[f"{prefix}match.{key}.{b}.src"]), f"{key} image {b}: {src}"
            assert torch.equal(tgt, saved[f"{prefix}match.{key}.{b}.tgt"]), f"{key} image {b}: {tgt}"


def _assert_close(differences: dict[str, float]) -> None:
    failures = {name: diff for name, diff in differences.items() if not diff <= TOLERANCE}
    assert not failures, failures


# ---- parity ---------------------------------------------------------------------------------------

def test_fixture_holds_every_upstream_term(saved):
    for prefix, sets in (("", 10), ("b2.", 3)):
        names = {k[len(prefix):] for k in saved if k.startswith(prefix + "loss_")}
        assert names == {f"loss_{g}_{t}_{k}" for g, terms in GROUP_TERMS.items() for t in terms for k in range(sets)}
    # at batch 1 the image-text ITC terms are 0 (one pair); batch 2 makes them informative
    assert all(saved[f"loss_interleave_itc_{k}"].item() == 0.0 for k in range(10))
    assert all(saved[f"b2.loss_interleave_itc_{k}"].item() > 0.1 for k in range(3))


def test_terms_from_our_decoder_match_upstream(our_output, saved, weights):
    result = _criterion_on([our_output.final] + our_output.aux[::-1], saved, "in.", weights[LANGUAGE + "logit_scale"])
    _assert_close(_differences(result, saved, ""))
    _assert_matches(result, saved, "")
    assert abs(result.total.item() - saved["total"].item()) <= TOLERANCE * abs(saved["total"].item())


def test_terms_from_saved_upstream_outputs_match(forward, saved, weights):
    result = _criterion_on(_saved_sets(forward, "train."), saved, "in.", weights[LANGUAGE + "logit_scale"])
    _assert_close(_differences(result, saved, ""))
    _assert_matches(result, saved, "")


def test_batch_of_two_matches_upstream(saved):
    """Synthetic batch 2: contrastive terms across images, per-image padding of prompts / entities /
    phrases, an empty stroke target (not supervised), a class-name grounding (weight 0.5)."""
    sets = _saved_sets(saved, "in.b2.pred.")
    assert len(sets) == 3
    result = _criterion_on(sets, saved, "in.b2.", saved["in.b2.lang_logit"])
    _assert_close(_differences(result, saved, "b2."))
    _assert_matches(result, saved, "b2.")
    assert abs(result.total.item() - saved["b2.total"].item()) <= TOLERANCE * abs(saved["b2.total"].item())


def test_weights_and_total_are_the_official_ones(saved):
    weights = OfficialLossWeights()
    for prefix in ("", "b2."):
        terms = {k[len(prefix):]: v for k, v in saved.items() if k.startswith(prefix + "loss_")}
        for name, value in terms.items():
            assert saved[f"{prefix}weighted.{name}"].item() == pytest.approx(weights.of(name) * value.item(), rel=1e-6)
        total = sum(weights.of(name) * value.double() for name, value in terms.items())
        assert total.item() == pytest.approx(saved[prefix + "total"].item(), rel=1e-6)


def test_random_draws_follow_upstream(forward, saved, weights, monkeypatch):
    """Same sequence of torch.rand shapes as upstream (so a seeded generator replays its points), and the
    first matcher points / first importance-sampled loss points equal the recorded ones."""
    shapes: list[tuple[int, ...]] = []
    real_rand = torch.rand

    def recording_rand(*size, **kwargs):
        out = real_rand(*size, **kwargs)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(torch, "rand", recording_rand)
    _criterion_on(_saved_sets(forward, "train."), saved, "in.", weights[LANGUAGE + "logit_scale"])
    _criterion_on(_saved_sets(saved, "in.b2.pred."), saved, "in.b2.", saved["in.b2.lang_logit"])
    monkeypatch.undo()
    expected = [tuple(s) for prefix in ("in.", "in.b2.") for s in saved[prefix + "rand_shapes"].tolist()]
    assert shapes == expected

    generator = torch.Generator().manual_seed(int(saved["in.seed"]))
    matcher_points = torch.rand(1, 12544, 2, generator=generator)
    assert torch.equal(matcher_points, saved["in.points.matcher_mask_0"])
    matched = forward["train.pred_masks"][0, saved["match.mask_0.0.src"]][:, None]
    points = importance_points(matched, PointSampling(), generator)
    assert torch.equal(points, saved["in.points.mask_0"])


# ---- learning ----------------------------------------------------------------------------------

def test_total_decreases_over_sgd_steps(forward, saved, weights):
    """A few SGD steps on the small decoder (every parameter the train task uses) lower the official total."""
    torch.manual_seed(0)
    decoder = _decoder(weights).train()
    targets = _targets(saved, "in.")
    logit_scale = weights[LANGUAGE + "logit_scale"]
    criterion = OfficialCriterion()
    optimiser = torch.optim.SGD(decoder.parameters(), lr=1e-3)
    totals = []
    for step in range(4):
        output = _run_train(decoder, forward, weights)
        losses = criterion(output, targets, logit_scale, torch.Generator().manual_seed(0))
        assert set(losses) == {f"loss_{g}_{t}_{k}" for g, ts in GROUP_TERMS.items() for t in ts for k in range(10)} | {
            "total"}
        optimiser.zero_grad()
        losses["total"].backward()
        if step == 0:
            grads = {name: p.grad for name, p in decoder.named_parameters()}
            assert all(g is None or torch.isfinite(g).all() for g in grads.values())
            for name in ("class_embed", "query_feat.weight", "mask_embed.layers.0.weight", "pn_indicator.weight",
                         "mask_sptial_embed.0", "transformer_ffn_layers.0.linear1.weight"):
                assert grads[name] is not None and grads[name].abs().sum() > 0, name
        optimiser.step()
        totals.append(losses["total"].item())
    assert all(later < totals[0] for later in totals[1:]), totals
    assert totals[-1] < 0.93 * totals[0], totals


# ---- behaviour -----------------------------------------------------------------------------------

def _tiny_output(batch: int = 1, queries: int = 4, size: int = 8, seed: int = 0) -> DecoderOutput:
    g = torch.Generator().manual_seed(seed)

    def rn(*shape):
        return torch.randn(*shape, generator=g)

    final = {"pred_logits": rn(batch, queries, 3), "pred_masks": rn(batch, queries, size, size),
             "pred_captions": rn(batch, queries, 8), "pred_smasks": rn(batch, queries, size, size),
             "pred_smaskembs": rn(batch, queries, 8), "pred_pspatials": rn(batch, 1, 8),
             "pred_gmasks": rn(batch, queries, size, size), "pred_gtexts": rn(batch, queries, 8),
             "pred_grounding_query": rn(batch, 1, 8), "pred_retrievals": rn(batch, 1, 8),
             "pred_retrievals_lang": rn(batch, 1, 8), "pred_interleave_image": rn(batch, 1, 8),
             "pred_imasks": rn(batch, queries, size, size), "pred_imaskembs": rn(batch, queries, 8),
             "pred_interleave_objects": rn(batch, queries, 8), "pred_entity_pixel": rn(batch, 1, 8),
             "pred_entity_class": rn(batch, 1, 8)}
    return DecoderOutput(final=final, aux=[{k: v + 0.1 for k, v in final.items()}])


def _tiny_targets(size: int = 32, empty_prompts: bool = False) -> list[ImageTargets]:
    mask = torch.zeros(1, size, size, dtype=torch.bool)
    mask[0, 4:20, 6:18] = True
    prompt = torch.zeros_like(mask) if empty_prompts else mask
    return [ImageTargets(labels=torch.tensor([1]), masks=mask, spatial_masks=prompt, grounding_masks=None,
                         caption_tokens=torch.randn(3, 8), interleave_masks=prompt,
                         interleave_visual=torch.tensor([True]))]


def test_terms_without_targets_are_zero_but_keep_the_graph():
    """As upstream: no grounding in an image switches grounding off for the batch; empty stroke /
    entity targets give zero spatial / interleave terms (the interleave ITC included)."""
    output = _tiny_output()
    for v in output.final.values():
        v.requires_grad_(True)
    sampling = PointSampling(num_points=64)
    losses = OfficialCriterion(OfficialLossConfig(sampling=sampling)).forward(
        output, _tiny_targets(empty_prompts=True), torch.tensor(1.0), torch.Generator().manual_seed(0))
    for group in ("grounding", "spatial", "interleave"):
        for term in GROUP_TERMS[group]:
            for k in range(2):
                assert losses[f"loss_{group}_{term}_{k}"].item() == 0.0
    assert losses["loss_mask_ce_0"].item() > 0 and losses["loss_retrieval_decoder_1"].item() > 0
    losses["total"].backward()
    assert output.final["pred_gmasks"].grad is not None


def test_batch_size_must_match_targets():
    with pytest.raises(ValueError, match="target images"):
        OfficialCriterion().forward(_tiny_output(batch=2), _tiny_targets(), torch.tensor(1.0))
