"""Token groups of the interface sequence.

The sequence of one sample is: object queries, the image query (vision side), then source queries
(one per class / phrase / spatial prompt / entity / entry / caption), then prompt tokens. Every
token carries its group and an item id, so one table decides who may attend to whom.
"""
from __future__ import annotations

from enum import IntEnum


class Group(IntEnum):
    OBJECT = 0          # 100 learnable object queries: masks + semantic embeddings
    IMAGE = 1           # 1 learnable image query: image-level embedding (retrieval)
    CLASS = 2           # one query per class (name, description or visual example)
    PHRASE = 3          # one query per grounding phrase
    SPATIAL = 4         # one query per interactive object (its clicks / boxes / scribbles)
    ENTITY = 5          # one query per entity of an interleaved entry
    ENTRY = 6           # one query per interleaved entry (interleave retrieval)
    CAPTION = 7         # one query per caption (image-text retrieval)
    CLASS_TOKENS = 8
    PHRASE_TOKENS = 9
    SPATIAL_TOKENS = 10
    ENTRY_TOKENS = 11
    CAPTION_TOKENS = 12


VISION_QUERIES = (Group.OBJECT, Group.IMAGE)
SOURCE_QUERIES = (Group.CLASS, Group.PHRASE, Group.SPATIAL, Group.ENTITY, Group.ENTRY, Group.CAPTION)
PROMPT_GROUPS = (Group.CLASS_TOKENS, Group.PHRASE_TOKENS, Group.SPATIAL_TOKENS, Group.ENTRY_TOKENS,
                 Group.CAPTION_TOKENS)

# Content attention: each source query reads the prompt tokens of its own item in this group.
PROMPTS_OF = {
    Group.CLASS: Group.CLASS_TOKENS,
    Group.PHRASE: Group.PHRASE_TOKENS,
    Group.SPATIAL: Group.SPATIAL_TOKENS,
    Group.ENTITY: Group.ENTRY_TOKENS,
    Group.ENTRY: Group.ENTRY_TOKENS,
    Group.CAPTION: Group.CAPTION_TOKENS,
}
