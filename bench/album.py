"""Figure 5: interleave retrieval over an album of cached image embeddings.

``FindPipeline.interleave_retrieve(instruction, gallery=album)`` plus a top-10 selection, for albums
of 10³, 10⁴, 10⁵ cached galleries (``FindPipeline.gallery`` of 8 real frames, each copy's image
embedding with small noise and re-normalised, so the numbers look like a real album) with the
embedded checkpoint. The instruction is interleaved: a text entity and an inline picture ("the mug
like <image> on the table"). The per-query cost is the instruction embedding (constant: language
model + reference picture through the vision side + interface) plus the gallery part (the ranking's
products with the album and the top-k; the official decoder's ranking also matches every entity with
every image's object queries), which should grow linearly with the album. Baseline: the smallest
album. Memory: the album's arrays and the peak of numpy allocations during one query (tracemalloc).
"""
from __future__ import annotations

import tracemalloc

import numpy as np

from .common import BenchConfig, Section, Table, device_label, embedded_pipeline, ms, ratio, scene_frame, sig, time_call

TOP_K = 10


def instruction():
    from find_core.instructions import Entity, Instruction, VisualReference
    picture = scene_frame(3, 96, 128)[16:80, 32:96].copy()
    text = "the mug like <image> on the table"
    return Instruction(text, (Entity(0, 7, "text"), Entity(13, 20, "visual", VisualReference(image=picture)),
                              Entity(24, 33, "text")))


def album(pipe, size: int, seed: int):
    """`size` galleries drawn from 8 real frames', each image embedding with its own noise."""
    from find_core.pipeline import FrameGallery
    rng = np.random.default_rng(seed)
    real = pipe.gallery([scene_frame(i, 240, 320) for i in range(8)])
    drawn = real.select(rng.integers(0, len(real), size))
    rows = drawn.images + rng.normal(0, 0.05, drawn.images.shape).astype(np.float32)
    return FrameGallery((rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32), drawn.objects)


def album_mb(kept) -> float:
    return (kept.images.nbytes + (0 if kept.objects is None else kept.objects.nbytes)) / 1e6


def query(pipe, entry, kept) -> np.ndarray:
    """One album search as a caller writes it: the pipeline's scores, then the top-k, best first."""
    return top_k(pipe.interleave_retrieve(entry, gallery=kept).similarity[0])


def embedded_entry(pipe, entry):
    """The instruction's embeddings, what the gallery part starts from (`gallery_part`)."""
    import torch
    from find_core.tasks import official
    with torch.inference_mode():
        if pipe.model.official:
            return official.entry_embeddings(pipe.model, entry)
        return pipe.embed_instruction(entry)


def gallery_part(pipe, embedded, kept) -> np.ndarray:
    """The same search with the instruction already embedded: the pipeline's own scoring (what
    interleave_retrieve calls: `FindPipeline._official_terms`, else `FindPipeline._scores`) and the top-k."""
    import torch
    from find_core.tasks import official
    with torch.inference_mode():
        if pipe.model.official:
            entry, entities = embedded
            return top_k(official.rank(pipe._official_terms(entry, entities, kept)).cpu().numpy())
        return top_k(pipe._scores(embedded[None], kept.images)[0])


def top_k(scores: np.ndarray) -> np.ndarray:
    top = np.argpartition(-scores, min(TOP_K, len(scores) - 1))[:TOP_K]
    return top[np.argsort(-scores[top])]


def run(config: BenchConfig) -> Section:
    section = Section("album", "Album search: interleave retrieval over cached embeddings",
                      __doc__.split("\n\n", 1)[1].strip())
    pipe, label = embedded_pipeline(config.device)
    device = device_label(str(pipe.device))
    entry = instruction()
    repeats = config.pick(10, 3)
    embed_only = time_call(lambda: embedded_entry(pipe, entry), repeats, min_seconds=config.pick(2.0, 0.5)).median
    embedded = embedded_entry(pipe, entry)
    rows = []
    for size in config.pick([10**3, 10**4, 10**5], [10**3, 10**4]):
        kept = album(pipe, size, size)
        total = time_call(lambda: query(pipe, entry, kept), repeats, min_seconds=config.pick(2.0, 0.5)).median
        part = time_call(lambda: gallery_part(pipe, embedded, kept), repeats, min_seconds=config.pick(1.0, 0.3)).median
        tracemalloc.start()
        query(pipe, entry, kept)
        peak = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()
        rows.append({"gallery": size, "dims": int(kept.images.shape[1]), "gallery_mb": album_mb(kept),
                     "query_s": total, "gallery_part_s": part, "query_peak_mb": peak})
        print(f"  [album] {size:,} images: {ms(total)} ms per query, gallery part {ms(part)} ms", flush=True)
    section.data = {"device": device, "model": label, "instruction_embedding_s": embed_only, "galleries": rows}
    first = rows[0]
    table = Table(f"{label}, D={first['dims']}, on {device}",
                  ["gallery", "gallery MB", "ms / query", "ratio vs 10³", "gallery part ms", "gallery part ratio",
                   "ns / image (gallery part)", "query peak MB (numpy)"])
    for r in rows:
        table.rows.append([f"{r['gallery']:,}", sig(r["gallery_mb"]), ms(r["query_s"]), ratio(r["query_s"], first["query_s"]),
                           ms(r["gallery_part_s"]), ratio(r["gallery_part_s"], first["gallery_part_s"]),
                           sig(r["gallery_part_s"] / r["gallery"] * 1e9), sig(r["query_peak_mb"])])
    table.notes.append(f"the instruction embedding alone (constant per query) takes {ms(embed_only)} ms; gallery part = "
                       f"scores + top-{TOP_K} with the instruction already embedded, timed on its own; 10× the images "
                       "should cost ~10× the gallery part.")
    section.tables.append(table)
    return section
