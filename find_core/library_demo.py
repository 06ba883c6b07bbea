"""The library demo: FindPipeline on a bundled, project-generated scene, results into an out folder.

Runs with no hardware and no downloads:  python -m find_core.library_demo [--out demo_out/library]
The model is the embedded default (:mod:`find_core.embedded`). The ROS node demo
(``scripts/demo.sh``, :mod:`find_ros.demo`) writes into ``demo_out/`` itself, so this one defaults
to its own sub-folder.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
from PIL import Image

from .data.synthetic_language import referring_expressions
from .data.synthetic_shapes import sample_scene
from .embedded import default_pipeline
from .instructions import Entity, Instruction, VisualReference
from .metrics.interactive import mask_iou
from .visualize import label_image, overlay

log = logging.getLogger("find_core.library_demo")


def run(out: Path, seed: int = 0, device: str = "auto") -> dict:
    """Ground, interleave-ground and segment one scene; write overlays and ``results.json`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    pipeline, model_name = default_pipeline(device)
    rng = np.random.default_rng(seed)
    scene = sample_scene(rng, image_id=1, size=256, n_things=4)
    reference_scene = sample_scene(rng, image_id=2, size=256, n_things=3,
                                   reuse_pool=[(t.category, t.colour) for t in scene.things], reuse_prob=1.0)
    expressions = referring_expressions(scene, rng, per_object=1)
    target = scene.things[0]
    phrase = expressions[target.segment_id][0]

    grounded = pipeline.ground(scene.image, [phrase])
    # an interleaved instruction: words for one object, an image crop of a look-alike for another
    look_alike = next(t for t in reference_scene.things if (t.category, t.colour) in
                      {(s.category, s.colour) for s in scene.things})
    ys, xs = np.nonzero(look_alike.mask)
    crop_box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
    text = f"{phrase} and this one: <image>"
    instruction = Instruction(text, (Entity(0, len(phrase), "text"),
                                     Entity(text.index("<image>"), len(text), "visual",
                                            VisualReference(image=reference_scene.image, box=crop_box))))
    interleaved = pipeline.interleave_ground(scene.image, instruction)
    classes = sorted({t.category for t in scene.things})
    segmented = pipeline.segment(scene.image, classes, mode="panoptic")

    same_look = [t for t in scene.things if (t.category, t.colour) == (look_alike.category, look_alike.colour)]
    summary = {
        "model": model_name,
        "referring_expression": phrase,
        "grounding_iou": mask_iou(grounded.segments[0].mask, target.mask),
        "interleaved_instruction": text,
        "interleave_entity_ious": [mask_iou(interleaved.segments[0].mask, target.mask),
                                   max(mask_iou(interleaved.segments[1].mask, t.mask) for t in same_look)],
        "panoptic_segments": [{"label": s.label, "score": round(s.score, 3), "area": s.area} for s in segmented.segments],
        "seconds": round(time.perf_counter() - started, 2),
    }
    Image.fromarray(scene.image).save(out / "scene.png")
    Image.fromarray(overlay(scene.image, grounded.segments)).save(out / "grounding_overlay.png")
    Image.fromarray(overlay(scene.image, interleaved.segments)).save(out / "interleave_overlay.png")
    Image.fromarray(overlay(scene.image, segmented.segments)).save(out / "panoptic_overlay.png")
    Image.fromarray(label_image(interleaved.segments, scene.image.shape[:2])).save(out / "interleave_masks.png")
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo_out") / "library")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    summary = run(args.out, args.seed, args.device)
    print(json.dumps(summary, indent=2))
    print(f"outputs written to {args.out.resolve()}")


if __name__ == "__main__":
    main()
