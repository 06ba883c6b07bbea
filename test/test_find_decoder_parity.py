"""FindDecoder against the official FIND interface decoder (reference fixtures) and its attention table."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from find_core.convert.interface_parity import (decoder_config, decoder_state, grounding_prompt,
                                                interface_parity, qualified_name)
from find_core.interface.find_decoder import (GROUP_TABLE, IMAGE, TASK_GROUPS, FindDecoder, Segment,
                                              active_rules, self_attention_allowed, token_cross_allowed)

FIXTURES = Path(__file__).parent / "fixtures" / "find_reference" / "small"
OUTPUT_FILES = ("generic", "grounding", "spatial")
TOLERANCE = 1e-4

needs_fixtures = pytest.mark.skipif(not (FIXTURES / "weights.safetensors").is_file(),
                                    reason="reference fixtures not present")


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "weights.safetensors"))


@pytest.fixture(scope="module")
def comparisons(weights):
    return interface_parity(weights, FIXTURES)


# ---- parity -------------------------------------------------------------------------------------

@needs_fixtures
def test_state_dict_loads_strictly_with_official_keys(weights):
    import json
    decoder = FindDecoder(decoder_config(json.loads((FIXTURES / "config.json").read_text())))
    state = decoder_state(weights)
    assert set(decoder.state_dict()) == set(state)
    result = decoder.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


@needs_fixtures
def test_every_fixture_output_is_compared(comparisons):
    expected = {qualified_name(f, k) for f in OUTPUT_FILES
                for k in load_file(str(FIXTURES / f"{f}.safetensors")) if not k.startswith("in.")}
    names = [name for name, _, _ in comparisons]
    assert len(names) == len(set(names)) == len(expected)
    assert set(names) == expected
    # all nine intermediate sets of each run are there
    for prefix in ("generic.seg", "grounding", "spatial", "generic.class0"):
        assert {n.split(".aux.")[1].split(".")[0] for n in names if n.startswith(prefix + ".aux.")} == \
            {str(i) for i in range(9)}


@needs_fixtures
def test_outputs_match_official_within_tolerance(comparisons):
    failures = []
    for name, ours, official in comparisons:
        assert ours.shape == official.shape, f"{name}: {tuple(ours.shape)} vs {tuple(official.shape)}"
        diff = (ours.double() - official.double()).abs().max().item() if ours.numel() else 0.0
        if not diff <= TOLERANCE:
            failures.append(f"{name}: {diff:.3g}")
    assert not failures, "\n".join(failures)


@needs_fixtures
def test_grounding_prompt_matches_the_saved_decoder_inputs(weights):
    saved = load_file(str(FIXTURES / "grounding.safetensors"))
    prompt = grounding_prompt(saved["in.phrase_token_hidden_states"], saved["in.phrase_attention_mask"],
                              weights["sem_seg_head.predictor.lang_encoder.lang_proj"])
    torch.testing.assert_close(prompt.tokens, saved["in.grounding_tokens"], atol=1e-5, rtol=0)
    assert torch.equal(prompt.padding, saved["in.grounding_nonzero_mask"])
    assert torch.equal(prompt.token_items, saved["in.grounding_token_indices"].transpose(0, 1))
    assert torch.equal(prompt.query_items, saved["in.grounding_query_indices"].transpose(0, 1))


# ---- attention table ----------------------------------------------------------------------------

# A frozen copy of GROUP_TABLE (configs/find/focalt_llama_lang.yaml, ATTENTION_ARCH): any edit of one
# entry of the table must be made here too, on purpose.
EXPECTED_TABLE = {
    # name: (self_sees, cross_sees, output, copy_of, padded, full_image, per_item, heads)
    "proposals_vision_object": (("proposals_vision_object",), (IMAGE,), True, None, False, False, False,
                                {"logits": "pred_logits", "mask": "pred_masks", "caption": "pred_captions",
                                 "maskemb": "pred_maskembs"}),
    "proposals_vision_grounding": (("proposals_vision_grounding", "tokens_language_description"), (IMAGE,), True,
                                   "proposals_vision_object", False, False, False,
                                   {"mask": "pred_gmasks", "caption": "pred_gtexts"}),
    "proposals_vision_segment": (("proposals_vision_segment", "tokens_vision_spatial"), (IMAGE,), True,
                                 "proposals_vision_object", False, False, False,
                                 {"mask": "pred_smasks", "caption": "pred_spatials", "maskemb": "pred_smaskembs"}),
    "queries_vision_image": (("queries_vision_image",), (IMAGE,), True, None, False, True, False,
                             {"caption": "pred_retrievals", "maskemb": "pred_image_pixel"}),
    "queries_vision_spatial": (("queries_vision_spatial",), ("tokens_vision_spatial",), True, "queries_vision_image",
                               False, False, True, {"caption": "pred_spatial_class", "maskemb": "pred_pspatials"}),
    "queries_language_class": (("queries_language_class",), ("tokens_language_class",), True, "queries_vision_image",
                               False, False, False, {"caption": "pred_retrievals_class"}),
    "queries_language_description": (("queries_language_description",), ("tokens_language_description",), True,
                                     "queries_vision_image", False, False, True, {"caption": "pred_grounding_query"}),
    "tokens_vision_spatial": (("tokens_vision_spatial",), (), False, None, True, False, True, {}),
    "tokens_language_description": (("proposals_vision_grounding", "tokens_language_description"), (), False, None,
                                    True, False, True, {}),
    "tokens_language_class": (("tokens_language_class",), (), False, None, True, False, False, {}),
}
EXPECTED_TASKS = {
    "class": ("proposals_vision_object", "queries_vision_image", "queries_language_class", "tokens_language_class"),
    "seg": ("proposals_vision_object", "queries_vision_image"),
    "grounding_eval": ("proposals_vision_object", "proposals_vision_grounding", "queries_vision_image",
                       "queries_language_description", "tokens_language_description"),
    "spatial": ("proposals_vision_object", "proposals_vision_segment", "queries_vision_image",
                "queries_vision_spatial", "tokens_vision_spatial"),
}


def test_table_is_frozen():
    actual = {r.name: (r.self_sees, r.cross_sees, r.output, r.copy_of, r.padded, r.full_image, r.per_item,
                       dict(r.heads)) for r in GROUP_TABLE}
    assert list(actual) == list(EXPECTED_TABLE), "row order is the concatenation order (yaml order)"
    for name, row in EXPECTED_TABLE.items():
        assert actual[name] == row, name
    assert TASK_GROUPS == EXPECTED_TASKS


def _segments(task: str, lengths: dict[str, int], **extra) -> list[Segment]:
    return [Segment(r.name, lengths[r.name], **extra.get(r.name, {})) for r in active_rules(task, lambda r: r.self_sees)]


def test_seg_self_attention_objects_and_image_query_stay_apart():
    allowed = self_attention_allowed(_segments("seg", {"proposals_vision_object": 10, "queries_vision_image": 1}), 1)[0]
    expected = torch.zeros(11, 11, dtype=torch.bool)
    expected[:10, :10] = True  # object queries see each other
    expected[10, 10] = True  # the image query sees only itself (it reads the objects at prediction time)
    assert torch.equal(allowed, expected)


def test_seg_cross_attention_groups():
    assert [r.name for r in active_rules("seg", lambda r: IMAGE in r.cross_sees)] == \
        ["proposals_vision_object", "queries_vision_image"]
    assert [r.name for r in active_rules("seg", lambda r: r.full_image)] == ["queries_vision_image"]
    assert [r.name for r in active_rules("seg", lambda r: r.output)] == \
        ["proposals_vision_object", "queries_vision_image"]


def test_grounding_self_attention_blocks():
    lengths = {"proposals_vision_object": 2, "proposals_vision_grounding": 2, "queries_vision_image": 1,
               "queries_language_description": 2, "tokens_language_description": 3}
    segments = _segments("grounding_eval", lengths)
    assert [s.name for s in segments] == list(lengths)
    allowed = self_attention_allowed(segments, 1)[0].int()
    #   obj obj grd grd img dsq dsq tok tok tok
    expected = torch.tensor([
        [1, 1, 0, 0, 0, 0, 0, 0, 0, 0],  # object
        [1, 1, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 1, 1, 0, 0, 0, 1, 1, 1],  # grounding proposals read the phrase tokens
        [0, 0, 1, 1, 0, 0, 0, 1, 1, 1],
        [0, 0, 0, 0, 1, 0, 0, 0, 0, 0],  # image
        [0, 0, 0, 0, 0, 1, 1, 0, 0, 0],  # phrase queries see each other only
        [0, 0, 0, 0, 0, 1, 1, 0, 0, 0],
        [0, 0, 1, 1, 0, 0, 0, 1, 1, 1],  # phrase tokens see grounding proposals and all tokens
        [0, 0, 1, 1, 0, 0, 0, 1, 1, 1],
        [0, 0, 1, 1, 0, 0, 0, 1, 1, 1],
    ])
    assert torch.equal(allowed, expected)


def test_padding_is_neither_read_nor_reading():
    lengths = {"proposals_vision_object": 1, "proposals_vision_grounding": 1, "queries_vision_image": 1,
               "queries_language_description": 1, "tokens_language_description": 3}
    pad = torch.tensor([[False, False, True]])
    segments = _segments("grounding_eval", lengths, tokens_language_description={"padding": pad})
    allowed = self_attention_allowed(segments, 1)[0]
    assert not allowed[-1].any() and not allowed[:, -1].any()  # the padded token
    assert allowed[1, 4:6].all()  # the grounding proposal (row 1) still reads the valid tokens (4, 5)


def test_grounding_phrase_query_reads_only_its_own_phrase():
    queries = [Segment("queries_language_description", 3, items=torch.tensor([[0, 1, 2]]))]
    tokens = [Segment("tokens_language_description", 5, padding=torch.zeros(1, 5, dtype=torch.bool),
                      items=torch.tensor([[0, 0, 1, 2, 2]]))]
    allowed = token_cross_allowed(queries, tokens, 1)[0].int()
    assert torch.equal(allowed, torch.tensor([[1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 1, 1]]))


def test_spatial_tables():
    lengths = {"proposals_vision_object": 1, "proposals_vision_segment": 2, "queries_vision_image": 1,
               "queries_vision_spatial": 2, "tokens_vision_spatial": 3}
    segments = _segments("spatial", lengths)
    allowed = self_attention_allowed(segments, 1)[0].int()
    #   obj seg seg img spq spq tok tok tok
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 1, 1, 0, 0, 0, 1, 1, 1],  # segment proposals read every stroke token (no item limit)
        [0, 1, 1, 0, 0, 0, 1, 1, 1],
        [0, 0, 0, 1, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 1, 1, 1],  # stroke tokens see only each other
        [0, 0, 0, 0, 0, 0, 1, 1, 1],
        [0, 0, 0, 0, 0, 0, 1, 1, 1],
    ])
    assert torch.equal(allowed, expected)
    queries = [Segment("queries_vision_spatial", 2, items=torch.tensor([[0, 1]]))]
    tokens = [Segment("tokens_vision_spatial", 3, padding=torch.tensor([[False, False, True]]),
                      items=torch.tensor([[0.0, 1.0, -2.0]]))]
    cross = token_cross_allowed(queries, tokens, 1)[0].int()
    assert torch.equal(cross, torch.tensor([[1, 0, 0], [0, 1, 0]]))


def test_class_query_reads_all_its_tokens():
    queries = [Segment("queries_language_class", 1)]
    tokens = [Segment("tokens_language_class", 4, padding=torch.tensor([[False, False, False, True]]))]
    assert torch.equal(token_cross_allowed(queries, tokens, 1)[0].int(), torch.tensor([[1, 1, 1, 0]]))
