"""Figure 1: model latency per task, and the FIND interface against the encoders it sits on.

Per task (FindPipeline calls, end to end: letterbox, encoders, interface, decoding to the frame's
resolution) at 320, 480 and 640 px wide frames, for the embedded checkpoint and for a paper-sized
model with random weights (``bench.common.paper_config``: FocalNet-T and a 16×512 LLaMA). The baseline of every task figure is
the vision-encoder forward (``FindModel.encode_images``: backbone + pixel decoder) of the same model
in the same run. Frame size changes only pre- and post-processing: every frame is letterboxed to the
model's ``input_size``. The quick run uses 320 px frames only and an input of 256 (not 1024) for the
paper-sized model.

``localize`` ranks a buffer of frames whose ranking part (``FindPipeline.gallery``) was computed when
they arrived (as the ROS node does) and grounds the instruction in the best one; filling that buffer
is timed separately (``gallery``, per frame).

The interface figure times the parts separately on the letterboxed input: vision backbone, pixel
decoder, language model, and the interface alone (generic and grounding, ``interface_calls``) on precomputed
features. FIND's claim is that the interface is light next to the foundation models.

The input-size figure prices ``FindPipeline(input_size=...)``: ``embed_pixels`` of one 320×240
frame letterboxed to half and twice the embedded model's own side (twice: where the demo camera's
objects reach the training scale, the 3D field's 512 row in the README), against the model's own size.
"""
from __future__ import annotations

import gc
import time
from typing import Any

import numpy as np
import torch

from .common import (BenchConfig, Section, Table, device_label, embedded_pipeline, frame_sizes, ms, paper_pipeline,
                     ratio, scene_frame, sig, time_call)

CLASSES = ["person", "chair", "table", "cup", "bottle", "plant"]
PHRASE = "the red cup next to the plant"


def interleaved(frame: np.ndarray):
    """'find <image> near the table': a text entity and an inline crop of the frame."""
    from find_core.instructions import Entity, Instruction, VisualReference
    h, w = frame.shape[:2]
    crop = np.ascontiguousarray(frame[h // 4: h // 2, w // 4: w // 2])
    text = "find <image> near the table"
    return Instruction(text, (Entity(5, 12, "visual", VisualReference(image=crop)), Entity(18, 27, "text")))


def task_calls(pipe, frame: np.ndarray, buffer: list[np.ndarray], buffer_gallery) -> dict[str, Any]:
    from find_core.prompts import SpatialPrompt
    h, w = frame.shape[:2]
    instruction = interleaved(frame)
    return {
        "segment": lambda: pipe.segment(frame, CLASSES),
        "ground": lambda: pipe.ground(frame, [PHRASE]),
        "interactive": lambda: pipe.interactive(frame, [[SpatialPrompt.point(w * 0.3, h * 0.4)],
                                                        [SpatialPrompt.from_box(w * 0.5, h * 0.5, w * 0.8, h * 0.9)]]),
        "interleave_ground": lambda: pipe.interleave_ground(frame, instruction),
        "embed_pixels": lambda: pipe.embed_pixels(frame),
        "localize": lambda: pipe.localize(buffer, instruction, gallery=buffer_gallery),
    }


@torch.inference_mode()
def component_times(pipe, frame: np.ndarray, repeats: int, min_seconds: float) -> dict[str, float]:
    """Median seconds of each part of the model on one letterboxed frame."""
    from find_core.preprocess import letterbox
    model = pipe.model
    tensor, _ = letterbox([frame], model.config.vision.input_size)
    tensor = tensor.to(model.device)
    normalized = model.vision.normalize(tensor)
    pyramid = model.vision(normalized)
    features = model.encode_images(tensor)
    calls = {
        "vision_backbone": lambda: model.vision(normalized),
        "pixel_decoder": lambda: model.pixel_decoder(pyramid),
        "encode_images": lambda: model.encode_images(tensor),
        "language_model": lambda: model.encode_texts([PHRASE]),
        **interface_calls(model, features),
    }
    return {name: time_call(fn, repeats, min_seconds=min_seconds).median for name, fn in calls.items()}


def interface_calls(model, features) -> dict[str, Any]:
    """The interface alone on precomputed image features (and class / phrase embeddings): generic
    segmentation and grounding, through the task code of the model's interface architecture."""
    if model.official:
        from find_core.tasks import official
        classes = official.class_embeddings(model, CLASSES)
        tokens = official.projected_tokens(model, [PHRASE])
        return {"interface_generic": lambda: official.image_outputs(model, features, classes),
                "interface_grounding": lambda: official.ground_tokens(model, features, tokens)}
    from find_core.tasks import generic, grounding
    phrases = grounding.samples(model, [[PHRASE]])
    return {"interface_generic": lambda: model.run_interface(features, [generic.SampleInputs()], generic.TASK),
            "interface_grounding": lambda: model.run_interface(features, phrases, grounding.TASK)}


def input_size_times(pipe, config: BenchConfig, repeats: int) -> dict[int, float]:
    """Median seconds of embed_pixels on one 320×240 frame per inference input size."""
    from find_core.pipeline import FindPipeline
    frame = scene_frame(0, 240, 320)
    own = pipe.model.config.vision.input_size
    sizes = [own] + list(config.pick((own // 2, 2 * own), (2 * own,)))
    return {size: time_call(lambda p=FindPipeline(pipe.model, str(pipe.device), input_size=size): p.embed_pixels(frame),
                            repeats, min_seconds=config.pick(2.0, 0.5)).median for size in sizes}


def parameter_counts(pipe) -> dict[str, float]:
    """Millions of parameters per part."""
    model = pipe.model
    parts = {"vision": model.vision, "pixel_decoder": model.pixel_decoder, "language": model.language,
             "interface": model.interface}
    counts = {name: sum(p.numel() for p in part.parameters()) / 1e6 for name, part in parts.items()}
    counts["total"] = sum(p.numel() for p in model.parameters()) / 1e6
    return counts


def measure(pipe, label: str, config: BenchConfig, repeats: int, buffer_size: int, distinct: int) -> dict[str, Any]:
    """Task latencies at every frame size. The buffer holds ``buffer_size`` frame embeddings made from
    ``distinct`` real frames (repeated: ranking costs the same, and a paper-sized model on a CPU
    would otherwise spend minutes filling it)."""
    torch.manual_seed(config.seed)
    out: dict[str, Any] = {"model": label, "input_size": pipe.model.config.vision.input_size,
                           "parameters_m": parameter_counts(pipe), "buffer_size": buffer_size,
                           "buffer_distinct_frames": distinct, "tasks": {}}
    height, width = frame_sizes(config)[0]
    first = [scene_frame(i, height, width) for i in range(distinct)]
    min_seconds = config.pick(2.0, 0.5)
    out["components_s"] = component_times(pipe, first[0], repeats, min_seconds)
    start = time.perf_counter()
    gallery = pipe.gallery(first)
    out["buffer_fill_per_frame_s"] = (time.perf_counter() - start) / distinct
    gallery = gallery.select(np.arange(buffer_size) % distinct)
    for n, (height, width) in enumerate(frame_sizes(config)):
        buffer = [scene_frame(i % distinct, height, width) for i in range(buffer_size)]
        size_key = f"{width}x{height}"
        row = {task: time_call(call, repeats, warmup=1 if n == 0 else 0, min_seconds=min_seconds).as_dict()
               for task, call in task_calls(pipe, buffer[-1], buffer, gallery).items()}
        out["tasks"][size_key] = row
        print(f"  [models] {label} {size_key}: " + ", ".join(f"{t} {ms(v['median_s'])} ms" for t, v in row.items()),
              flush=True)
    return out


def run(config: BenchConfig) -> Section:
    section = Section("models", "Model latency per task; interface vs encoders", __doc__.split("\n\n", 1)[1].strip())
    runs = []
    pipe, label = embedded_pipeline(config.device)
    runs.append(measure(pipe, label, config, config.pick(5, 2), config.pick(32, 8), config.pick(32, 8)))
    by_size = input_size_times(pipe, config, config.pick(5, 2))
    device = device_label(str(pipe.device))
    del pipe
    gc.collect()
    pipe, label = paper_pipeline(config.device, input_size=config.pick(None, 256))
    runs.append(measure(pipe, label, config, 1, config.pick(32, 4), config.pick(4, 2)))
    del pipe
    gc.collect()
    section.data = {"device": device, "runs": runs, "embed_pixels_by_input_size_s": by_size}

    tasks = list(next(iter(runs[0]["tasks"].values())))
    for r in runs:
        encoder = r["components_s"]["encode_images"]
        table = Table(f"{r['model']} — median latency per call on {device}",
                      ["frame", *[f"{t} ms (×enc)" for t in tasks]])
        for size, row in r["tasks"].items():
            table.rows.append([size, *[f"{ms(row[t]['median_s'])} ({ratio(row[t]['median_s'], encoder)})" for t in tasks]])
        table.notes.append(f"baseline ×enc: encode_images (vision backbone + pixel decoder) = {ms(encoder)} ms at input "
                           f"{r['input_size']}²; localize ranks {r['buffer_size']} buffered frame galleries "
                           f"(from {r['buffer_distinct_frames']} distinct frames) and grounds in the best; filling the "
                           f"buffer cost {ms(r['buffer_fill_per_frame_s'])} ms per frame (gallery, batches of 8).")
        section.tables.append(table)

    table = Table(f"Interface vs encoders (one frame, input letterboxed) on {device}",
                  ["model", "params M (vision / decoder / language / interface)", "vision backbone ms",
                   "pixel decoder ms", "language ms", "interface generic ms", "interface grounding ms",
                   "interface / encode_images", "interface / vision backbone"])
    for r in runs:
        c, p = r["components_s"], r["parameters_m"]
        table.rows.append([r["model"], " / ".join(sig(p[k]) for k in ("vision", "pixel_decoder", "language", "interface")),
                           ms(c["vision_backbone"]), ms(c["pixel_decoder"]), ms(c["language_model"]),
                           ms(c["interface_generic"]), ms(c["interface_grounding"]),
                           ratio(c["interface_generic"], c["encode_images"]),
                           ratio(c["interface_generic"], c["vision_backbone"])])
    table.notes.append("interface = interface_calls on precomputed features (all layers and heads); "
                       "encode_images = backbone + pixel decoder.")
    section.tables.append(table)

    own = next(iter(by_size))
    table = Table(f"{runs[0]['model']} — embed_pixels of a 320×240 frame by inference input size on {device}",
                  ["input size", "ms", f"× input {own} (the model's own)"])
    table.rows += [[f"{size}²", ms(t), ratio(t, by_size[own])] for size, t in by_size.items()]
    section.tables.append(table)
    return section
