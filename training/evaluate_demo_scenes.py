"""The node demo's task offline, over many rendered scenes: does ``FindPipeline.localize`` pick a
frame that shows both objects the demo's interleaved instruction names, and do its masks cover them?

    python -m training.evaluate_demo_scenes [--checkpoint CKPT] [--seeds 0-19] [--input-size N]
                                            [--reference-view crop|image] [--out F.json]

Each seed renders the demo's posed scene (``find_core.data.scene_video``, the demo's frame count and
size; seed 0 is ``scripts/demo.sh``'s own scene) and builds the demo's instruction with its code
(``find_ros.demo_scene``): "The <phrase of one object> is next to the <image>.", the picture being the
other object from a frame without the first, as the whole frame with the object's mask (the
demo's default, FIND-Bench's retrieval protocol) or its tight crop (``--reference-view crop``). All frames are
localized at once, in this process (at the demo's input size unless ``--input-size``): what the node
gets when it buffers every frame, without its
frame dropping. One scene says little (the node demo's summary is one of these); this is the figure
to compare checkpoints by. The JSON names the checkpoint's tensor digest and this command.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from find_core.embedded import EMBEDDED, scene_input_size
from find_core.metrics.interactive import mask_iou
from find_ros.demo import DemoConfig
from find_ros.demo_scene import REFERENCE_VIEWS, DemoError, build_instruction, choose_referents, prepare_scene

from .output import add_measurement_arguments, run_measurement

DEFAULT_SEEDS = "0-19"
IOU_HIT = 0.5


def scene_outcome(pipeline, seed: int, folder: Path, demo: DemoConfig) -> dict:
    """Render scene ``seed`` as ``demo`` renders its own into ``folder``, localize the demo's
    instruction (its picture as ``demo.reference_view``), score the chosen frame."""
    reader = prepare_scene(folder, seed=seed, frames=demo.frames, width=demo.width, height=demo.height, fps=demo.rate)
    referents = choose_referents(reader)
    instruction, _ = build_instruction(reader, referents, f"scene-{seed}", demo.reference_view)
    records = list(reader)
    result = pipeline.localize([record.rgb for record in records], instruction)
    chosen = records[result.best_index]
    text_iou, visual_iou = (mask_iou(segment.mask, chosen.masks == obj["id"])
                            for segment, obj in zip(result.grounding.segments, (referents.text, referents.visual)))
    return {"seed": seed, "text": referents.text["phrase"], "visual": referents.visual["phrase"],
            "chosen": int(result.best_index), "chosen_shows_both": bool(referents.both_seen[result.best_index]),
            "frames_showing_both": int(referents.both_seen.sum()),
            "text_iou": round(float(text_iou), 4), "visual_iou": round(float(visual_iou), 4)}


def evaluate(pipeline, seeds: list[int], demo: DemoConfig | None = None) -> dict:
    """Every scene's outcome and the counts and means over them; scenes and instructions as ``demo``
    (default: the demo's defaults) makes them. A scene the demo could not use (fewer than two objects,
    none seen together) is listed under ``skipped`` with the reason."""
    demo = demo or DemoConfig()
    outcomes, skipped = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            try:
                outcomes.append(scene_outcome(pipeline, seed, Path(tmp) / f"scene{seed}", demo))
            except DemoError as error:
                skipped.append({"seed": seed, "why": str(error)})
    if not outcomes:
        raise ValueError(f"no scene of seeds {seeds} gives the demo an instruction: {skipped}")
    texts, visuals = [o["text_iou"] for o in outcomes], [o["visual_iou"] for o in outcomes]
    return {
        "scenes": len(outcomes), "reference_view": demo.reference_view,
        "chosen_shows_both": sum(o["chosen_shows_both"] for o in outcomes),
        "text_iou_mean": round(float(np.mean(texts)), 4), "visual_iou_mean": round(float(np.mean(visuals)), 4),
        "text_iou_at_least_0.5": sum(i >= IOU_HIT for i in texts),
        "visual_iou_at_least_0.5": sum(i >= IOU_HIT for i in visuals),
        "outcomes": outcomes, **({"skipped": skipped} if skipped else {}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate_demo_scenes", description=__doc__.splitlines()[0])
    add_measurement_arguments(parser, DEFAULT_SEEDS)
    parser.add_argument("--reference-view", choices=REFERENCE_VIEWS, default=DemoConfig.reference_view,
                        help="the visual entity as the object's tight crop (the demo's) or the whole frame + mask")
    args = parser.parse_args(argv)
    if args.input_size is None:   # as the demo runs the model: the embedded checkpoint at its scene size
        args.input_size = scene_input_size(EMBEDDED, str(args.checkpoint or ""))
    demo = DemoConfig(reference_view=args.reference_view)
    return run_measurement("training.evaluate_demo_scenes", args, argv,
                           lambda pipeline, seeds: evaluate(pipeline, seeds, demo))


if __name__ == "__main__":
    sys.exit(main())
