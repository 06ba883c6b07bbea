"""FindDecoder against the official FIND interface decoder (reference fixtures) and its attention table."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from find_core.convert.interface_parity import (decoder_config, decoder_state, entry_prompt, grounding_prompt,
                                                interface_parity, padded_text_prompt, phrase_prompt,
                                                qualified_name, strokes_of)
from find_core.interface.find_decoder import FindDecoder, InterleavePrompt, PointTokens, entity_point_tokens
from find_core.interface.official_table import (GROUP_TABLE, IMAGE, TASK_GROUPS, Segment, active_rules,
                                                self_attention_allowed, token_cross_allowed)

FIXTURES = Path(__file__).parent / "fixtures" / "find_reference" / "small"
OUTPUT_FILES = ("generic", "grounding", "spatial", "retrieval", "interactive_round2", "interleave_grounding",
                "interleave_retrieval", "train_forward")
TOLERANCE = 1e-4
LANG_PROJ = "sem_seg_head.predictor.lang_encoder.lang_proj"


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "weights.safetensors"))


@pytest.fixture(scope="module")
def comparisons(weights):
    return interface_parity(weights, FIXTURES)


# ---- parity -------------------------------------------------------------------------------------

def test_state_dict_loads_strictly_with_official_keys(weights):
    decoder = FindDecoder(decoder_config(json.loads((FIXTURES / "config.json").read_text())))
    state = decoder_state(weights)
    assert set(decoder.state_dict()) == set(state)
    result = decoder.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_every_fixture_output_is_compared(comparisons):
    expected = {qualified_name(f, k) for f in OUTPUT_FILES
                for k in load_file(str(FIXTURES / f"{f}.safetensors")) if not k.startswith("in.")}
    names = [name for name, _, _ in comparisons]
    assert len(names) == len(set(names)) == len(expected)
    assert set(names) == expected
    # all nine intermediate sets of each run are there
    for prefix in ("generic.seg", "grounding", "spatial", "generic.class0", "retrieval", "interactive_round2.spatial",
                   "interleave_grounding.interleave", "interleave_retrieval.seg", "train_forward.train"):
        assert {n.split(".aux.")[1].split(".")[0] for n in names if n.startswith(prefix + ".aux.")} == \
            {str(i) for i in range(9)}


def test_outputs_match_official_within_tolerance(comparisons):
    failures = []
    for name, ours, official in comparisons:
        assert ours.shape == official.shape, f"{name}: {tuple(ours.shape)} vs {tuple(official.shape)}"
        diff = (ours.double() - official.double()).abs().max().item() if ours.numel() else 0.0
        if not diff <= TOLERANCE:
            failures.append(f"{name}: {diff:.3g}")
    assert not failures, "\n".join(failures)


def test_new_fixture_files_are_compared_with_aux_and_post_processing(comparisons):
    names = {name for name, _, _ in comparisons}
    for name in ("retrieval.aux.0.pred_retrievals_lang", "retrieval.post.scores",
                 "interactive_round2.round1.prev_mask", "interactive_round2.spatial.prev_mask",
                 "interactive_round2.spatial.aux.8.pred_smasks", "interactive_round2.post.mask_iou",
                 "interleave_grounding.interleave.aux.3.pred_legend_pixel", "interleave_grounding.post.grounding_mask",
                 "interleave_retrieval.text_entity.pred_grounding_query",
                 "interleave_retrieval.visual_entity.refint.src_interleave_queries.2",
                 "interleave_retrieval.visual_entity.refimg.src_spatial_indices.0",
                 "interleave_retrieval.seg.aux.5.pred_entity_pixel", "interleave_retrieval.post.scores",
                 "train_forward.train.aux.8.pred_retrievals_class", "train_forward.train.pred_imasks"):
        assert name in names, name


def test_grounding_prompt_matches_the_saved_decoder_inputs(weights):
    saved = load_file(str(FIXTURES / "grounding.safetensors"))
    prompt = grounding_prompt(saved["in.phrase_token_hidden_states"], saved["in.phrase_attention_mask"],
                              weights["sem_seg_head.predictor.lang_encoder.lang_proj"])
    torch.testing.assert_close(prompt.tokens, saved["in.grounding_tokens"], atol=1e-5, rtol=0)
    assert torch.equal(prompt.padding, saved["in.grounding_nonzero_mask"])
    assert torch.equal(prompt.token_items, saved["in.grounding_token_indices"].transpose(0, 1))
    assert torch.equal(prompt.query_items, saved["in.grounding_query_indices"].transpose(0, 1))


def _close(ours: torch.Tensor, saved: torch.Tensor) -> None:
    torch.testing.assert_close(ours.float(), saved.float(), atol=1e-5, rtol=0)


def test_retrieval_and_class_prompts_match_the_saved_decoder_inputs(weights):
    saved = load_file(str(FIXTURES / "retrieval.safetensors"))
    prompt = padded_text_prompt(saved["in.caption_token_hidden_states"], saved["in.caption_attention_mask"],
                                weights[LANG_PROJ])
    _close(prompt.tokens, saved["in.retrieval_tokens"])
    assert torch.equal(prompt.padding, saved["in.retrieval_nonzero_mask"])
    train = load_file(str(FIXTURES / "train_forward.safetensors"))
    for hidden, mask, tokens, padding in (("class", "class", "class_tokens_emb", "class_tokens_mask"),
                                          ("caption", "caption", "retrieval_tokens", "retrieval_nonzero_mask")):
        prompt = padded_text_prompt(train[f"in.{hidden}_token_hidden_states"], train[f"in.{mask}_attention_mask"],
                                    weights[LANG_PROJ])
        _close(prompt.tokens, train[f"in.{tokens}"])
        assert torch.equal(prompt.padding, train[f"in.{padding}"])
    phrases = phrase_prompt(train["in.phrase_token_hidden_states"], train["in.phrase_attention_mask"],
                            weights[LANG_PROJ])
    _close(phrases.tokens, train["in.grounding_tokens"])  # the repeated phrase keeps one copy of its tokens
    assert torch.equal(phrases.padding, train["in.grounding_nonzero_mask"])
    assert torch.equal(phrases.token_items, train["in.grounding_token_indices"].transpose(0, 1))
    assert torch.equal(phrases.query_items, train["in.grounding_query_indices"].transpose(0, 1))


@pytest.mark.parametrize("file", ["interleave_grounding", "interleave_retrieval", "train_forward"])
def test_interleave_entry_prompt_matches_the_saved_decoder_inputs(weights, file):
    saved = load_file(str(FIXTURES / f"{file}.safetensors"))
    prompt = entry_prompt(saved, weights[LANG_PROJ])
    _close(prompt.tokens, saved["in.interleave_tokens"])
    assert torch.equal(prompt.padding, saved["in.interleave_nonzero_mask"])
    assert torch.equal(prompt.token_entities, saved["in.interleave_entity_indices"].transpose(0, 1))
    assert torch.equal(prompt.entity_items, saved["in.interleave_query_indices"].transpose(0, 1))
    # the placeholder tokens are those of the visual entities (upstream: max over entity_mask * isvisual)
    visual = (saved["in.interleave_entity_mask"] * saved["in.interleave_isvisual"][:, :, None]).amax(dim=0)
    assert torch.equal(prompt.visual_tokens.float(), visual)
    assert prompt.token_entities.tolist() == [[-4, -4, 0, 0, -4, -4, 1, 1, 1, 1, 1, 1, -4]]


def test_entity_point_tokens_rebuild_the_ranking_pass_tokens(weights):
    """The ranking pass's per-level point tokens, assembled from our own pass of the visual entity alone
    on its image: an empty padded token for the text entity, then the entity's points re-labelled 1."""
    saved = load_file(str(FIXTURES / "interleave_retrieval.safetensors"))
    decoder = FindDecoder(decoder_config(json.loads((FIXTURES / "config.json").read_text())))
    decoder.load_state_dict(decoder_state(weights), strict=True)
    pixel = load_file(str(FIXTURES / "pixel_decoder.safetensors"))
    valid = saved["in.entity_attention_mask"][0].bool()
    tokens = (saved["in.entity_token_hidden_states"][0] @ weights[LANG_PROJ])[valid]
    own = tokens[saved["in.entity_to_tokens"][1, valid]]
    alone = InterleavePrompt.entry(own, torch.ones(1, len(own), dtype=torch.bool), torch.ones(1, dtype=torch.bool),
                                   regions=saved["in.visual_entity.refint.interleave_query_pos_mask"][0])
    with torch.no_grad():
        out = decoder([pixel[f"multi_scale_features.{i}"] for i in range(3)], pixel["mask_features"], "interleave",
                      interleave=alone)
    before = [p.items.clone() for p in out.entity_tokens]
    merged = entity_point_tokens([None, out.entity_tokens], width=64)
    assert all(torch.equal(p.items, b) for p, b in zip(out.entity_tokens, before))  # inputs left as they were
    for level, points in enumerate(merged):
        _close(points.tokens, saved[f"in.refint_tokens.src_interleave_queries.{level}"])
        assert torch.equal(points.padding, saved[f"in.refint_tokens.src_interleave_maskings.{level}"])
        assert torch.equal(points.items, saved[f"in.refint_tokens.src_interleave_indices.{level}"][..., 0])


def test_spatial_memories_need_one_prompt(weights):
    decoder = FindDecoder(decoder_config(json.loads((FIXTURES / "config.json").read_text())))
    decoder.load_state_dict(decoder_state(weights), strict=True)
    pixel = load_file(str(FIXTURES / "pixel_decoder.safetensors"))
    saved = load_file(str(FIXTURES / "spatial.safetensors"))  # two prompts
    levels = [pixel[f"multi_scale_features.{i}"] for i in range(3)]
    with pytest.raises(ValueError, match="prev_mask"):
        decoder(levels, pixel["mask_features"], "spatial_memory", strokes=strokes_of(saved))
    with pytest.raises(ValueError, match="one prompt"), torch.no_grad():
        decoder(levels, pixel["mask_features"], "spatial_memory", strokes=strokes_of(saved),
                prev_mask=saved["spatial.prev_mask"])


# ---- attention table ----------------------------------------------------------------------------

# A frozen copy of GROUP_TABLE (configs/find/focalt_llama_lang.yaml, ATTENTION_ARCH): any edit of one
# entry of the table must be made here too, on purpose.
OBJ, GRD, SEG, IEP = ("proposals_vision_object", "proposals_vision_grounding", "proposals_vision_segment",
                      "proposals_interleave_entity")
IMG, SPQ, CPQ, CLQ, DSQ = ("queries_vision_image", "queries_vision_spatial", "queries_language_caption",
                           "queries_language_class", "queries_language_description")
ILQ, IEQ = "queries_interleave_legend", "queries_interleave_entity"
SPT, IPT, DST, CPT, CLT, ILT = ("tokens_vision_spatial", "tokens_vision_spatial_", "tokens_language_description",
                                "tokens_language_caption", "tokens_language_class", "tokens_interleave_legend")
MEM = "memories_vision_spatial"
EXPECTED_TABLE = {
    # name: (self_sees, cross_sees, output, copy_of, padded, full_image, per_item, prev_mask_attention, heads)
    OBJ: ((OBJ,), (IMAGE,), True, None, False, False, False, False,
          {"logits": "pred_logits", "mask": "pred_masks", "caption": "pred_captions", "maskemb": "pred_maskembs"}),
    GRD: ((GRD, DST), (IMAGE,), True, OBJ, False, False, False, False,
          {"mask": "pred_gmasks", "caption": "pred_gtexts"}),
    SEG: ((SEG, SPT, MEM), (IMAGE,), True, OBJ, False, False, False, False,
          {"mask": "pred_smasks", "caption": "pred_spatials", "maskemb": "pred_smaskembs"}),
    IEP: ((IEP, ILT), (IMAGE,), True, OBJ, False, False, False, False,
          {"mask": "pred_imasks", "caption": "pred_interleave_objects", "maskemb": "pred_imaskembs"}),
    IMG: ((IMG,), (IMAGE,), True, None, False, True, False, False,
          {"caption": "pred_retrievals", "maskemb": "pred_image_pixel"}),
    SPQ: ((SPQ,), (SPT,), True, IMG, False, False, True, False,
          {"caption": "pred_spatial_class", "maskemb": "pred_pspatials"}),
    CPQ: ((CPQ,), (CPT,), True, IMG, False, False, False, False, {"caption": "pred_retrievals_lang"}),
    CLQ: ((CLQ,), (CLT,), True, IMG, False, False, False, False, {"caption": "pred_retrievals_class"}),
    DSQ: ((DSQ,), (DST,), True, IMG, False, False, True, False, {"caption": "pred_grounding_query"}),
    ILQ: ((ILQ,), (ILT,), True, IMG, False, False, False, False,
          {"caption": "pred_interleave_image", "maskemb": "pred_legend_pixel"}),
    IEQ: ((IEQ,), (ILT,), True, IMG, False, False, True, False,
          {"caption": "pred_entity_class", "maskemb": "pred_entity_pixel"}),
    SPT: ((SPT,), (), False, None, True, False, True, False, {}),
    IPT: ((IPT,), (), False, None, True, False, True, False, {}),
    DST: ((GRD, DST), (), False, None, True, False, True, False, {}),
    CPT: ((CPT,), (), False, None, True, False, False, False, {}),
    CLT: ((CLT,), (), False, None, True, False, False, False, {}),
    ILT: ((ILT,), (IPT,), False, None, True, False, True, False, {}),
    MEM: ((MEM,), (IMAGE,), True, None, False, False, False, True, {}),
}
EXPECTED_TASKS = {
    "class": (OBJ, IMG, CLQ, CLT),
    "seg": (OBJ, IMG),
    "grounding_eval": (OBJ, GRD, IMG, DSQ, DST),
    "spatial": (OBJ, SEG, IMG, SPQ, SPT),
    "retrieval": (OBJ, IMG, CPQ, CPT),
    "spatial_memory": (OBJ, SEG, IMG, SPQ, SPT, MEM),
    "interleave": (OBJ, IEP, IMG, ILQ, IEQ, IPT, ILT),
    "train": (OBJ, GRD, SEG, IEP, IMG, SPQ, CPQ, CLQ, DSQ, ILQ, IEQ, SPT, IPT, DST, CPT, CLT, ILT),
}


def test_table_is_frozen():
    actual = {r.name: (r.self_sees, r.cross_sees, r.output, r.copy_of, r.padded, r.full_image, r.per_item,
                       r.prev_mask_attention, dict(r.heads)) for r in GROUP_TABLE}
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


def test_retrieval_tables():
    lengths = {OBJ: 2, IMG: 1, CPQ: 1, CPT: 3}
    pad = torch.tensor([[False, False, True]])
    segments = _segments("retrieval", lengths, **{CPT: {"padding": pad}})
    assert [s.name for s in segments] == list(lengths)
    allowed = self_attention_allowed(segments, 1)[0].int()
    #   obj obj img cpq cpt cpt cpt
    expected = torch.tensor([
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0, 0],
        [0, 0, 0, 1, 0, 0, 0],  # the caption query meets its caption only in cross-attention
        [0, 0, 0, 0, 1, 1, 0],  # caption tokens see each other, not the padding
        [0, 0, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 0],
    ])
    assert torch.equal(allowed, expected)
    cross = token_cross_allowed([Segment(CPQ, 1)], [Segment(CPT, 3, padding=pad)], 1)[0].int()
    assert torch.equal(cross, torch.tensor([[1, 1, 0]]))
    assert [r.name for r in active_rules("retrieval", lambda r: IMAGE in r.cross_sees)] == [OBJ, IMG]


def test_spatial_memory_tables():
    lengths = {OBJ: 1, SEG: 1, IMG: 1, SPQ: 1, SPT: 2, MEM: 2}
    segments = _segments("spatial_memory", lengths)
    assert [s.name for s in segments] == list(lengths)  # the memories come last, as in the yaml
    allowed = self_attention_allowed(segments, 1)[0].int()
    #   obj seg img spq spt spt mem mem
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0, 0, 0],
        [0, 1, 0, 0, 1, 1, 1, 1],  # segment proposals read the stroke tokens and the memories
        [0, 0, 1, 0, 0, 0, 0, 0],
        [0, 0, 0, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 0, 0, 1, 1],  # memories see only each other (not the proposals that read them)
        [0, 0, 0, 0, 0, 0, 1, 1],
    ])
    assert torch.equal(allowed, expected)
    assert [r.name for r in active_rules("spatial_memory", lambda r: IMAGE in r.cross_sees)] == [OBJ, SEG, IMG, MEM]
    assert [r.name for r in active_rules("spatial_memory", lambda r: r.prev_mask_attention)] == [MEM]


def test_memories_attend_inside_the_previous_mask():
    prev = torch.full((1, 1, 4, 4), -10.0)
    prev[..., :2, :2] = 10.0  # the previous round's mask: the top-left quarter
    blocked = FindDecoder._prev_mask_blocked(prev, (2, 2), rows=3)
    assert blocked.shape == (1, 3, 4)
    assert torch.equal(blocked[0], torch.tensor([[False, True, True, True]] * 3))  # every memory: only there


def test_interleave_tables():
    lengths = {OBJ: 1, IEP: 1, IMG: 1, ILQ: 1, IEQ: 2, IPT: 3, ILT: 4}
    legend = {"padding": torch.tensor([[False, False, False, True]]), "items": torch.tensor([[-4.0, 0.0, 1.0, 1.0]])}
    points = {"padding": torch.tensor([[True, False, False]]), "items": torch.tensor([[-8.0, 1.0, 1.0]])}
    segments = _segments("interleave", lengths, **{ILT: legend, IPT: points})
    assert [s.name for s in segments] == list(lengths)
    allowed = self_attention_allowed(segments, 1)[0].int()
    #   obj iep img ilq ieq ieq ipt ipt ipt ilt ilt ilt ilt
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0],  # entity proposals read the valid legend tokens
        [0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # the empty (padded) point token
        [0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0],  # legend tokens see each other, not the proposals
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ])
    assert torch.equal(allowed, expected)

    readers = active_rules("interleave", lambda r: bool(r.cross_sees) and IMAGE not in r.cross_sees)
    assert [r.name for r in readers] == [ILQ, IEQ, ILT]
    queries = [Segment(ILQ, 1), Segment(IEQ, 2, items=torch.tensor([[0, 1]])), Segment(ILT, 4, **legend)]
    sources = [Segment(ILT, 4, **legend), Segment(IPT, 3, **points)]
    cross = token_cross_allowed(queries, sources, 1)[0].int()
    #   ilt ilt ilt ilt ipt ipt ipt
    expected = torch.tensor([
        [1, 1, 1, 0, 0, 0, 0],  # the legend query reads the whole entry
        [0, 1, 0, 0, 0, 0, 0],  # entity query 0 reads its entity's tokens
        [0, 0, 1, 0, 0, 0, 0],  # entity query 1 likewise (its last token is padding)
        [0, 0, 0, 0, 0, 0, 0],  # a token of no entity reads no points (zero attention output)
        [0, 0, 0, 0, 0, 0, 0],  # text entity 0 has no (valid) points
        [0, 0, 0, 0, 0, 1, 1],  # visual entity 1's placeholder tokens read its points
        [0, 0, 0, 0, 0, 1, 1],
    ])
    assert torch.equal(cross, expected)


def test_train_task_concatenation_orders():
    assert [r.name for r in active_rules("train", lambda r: r.output)] == \
        [OBJ, GRD, SEG, IEP, IMG, SPQ, CPQ, CLQ, DSQ, ILQ, IEQ]
    assert [r.name for r in active_rules("train", lambda r: IMAGE in r.cross_sees)] == [OBJ, GRD, SEG, IEP, IMG]
    assert [r.name for r in active_rules("train", lambda r: bool(r.cross_sees) and IMAGE not in r.cross_sees)] == \
        [SPQ, CPQ, CLQ, DSQ, ILQ, IEQ, ILT]
    assert [r.name for r in active_rules("train", lambda r: bool(r.self_sees))] == list(EXPECTED_TASKS["train"])


def test_interleave_entry_builder_known_answer():
    tokens = torch.arange(5 * 2, dtype=torch.float32).view(5, 2)
    entity_to_tokens = torch.tensor([[False, True, True, False, False], [False, False, False, True, False]])
    prompt = InterleavePrompt.entry(tokens, entity_to_tokens, torch.tensor([False, True]))
    assert prompt.tokens.shape == (5, 1, 2) and not prompt.padding.any()
    assert prompt.token_entities.tolist() == [[-4, 0, 0, 1, -4]]
    assert prompt.visual_tokens.tolist() == [[False, False, False, True, False]]
    assert prompt.entity_items.tolist() == [[0, 1]]


def test_entity_point_tokens_known_answer():
    visual = [PointTokens(torch.ones(2, 1, 3), torch.tensor([[False, True]]), torch.tensor([[0.0, -7.0]]))]
    merged = entity_point_tokens([None, visual, None], width=3)
    assert len(merged) == 1
    assert merged[0].tokens[:, 0, 0].tolist() == [0.0, 1.0, 1.0, 0.0]
    assert merged[0].padding.tolist() == [[True, False, True, True]]
    assert merged[0].items.tolist() == [[-8.0, 1.0, -7.0, -8.0]]  # points of entity 1; padding keeps its id
