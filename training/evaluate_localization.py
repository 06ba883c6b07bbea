"""Frame localization on synthetic sequences: does ``FindPipeline.localize`` pick the frame that holds
the object an instruction names, and does its mask cover that object?

    python -m training.evaluate_localization [--checkpoint CKPT] [--seeds 7001-7040] [--out F.json]

Each sequence is four scenes of the synthetic generator the embedded checkpoint was trained on (seeds
the training and held-out sets never use). One of them hides a thing whose (colour, category) occurs
in no other frame of the sequence, and the instruction names exactly that ("the red disc"). A model
that ignored the words would pick the right frame one time in four. The JSON summary (right frames,
masks with IoU >= 0.5 among them, their mean IoU, chance) names the checkpoint's tensor digest and
this command, so the README's figure can be checked against it (test/test_readme_figures.py).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np

from find_core.data.synthetic_shapes import SceneObject, sample_scene
from find_core.metrics.interactive import mask_iou

from .output import add_measurement_arguments, run_measurement

FRAMES = 4
SIZE = 128                      # the synthetic training scenes' size
DEFAULT_SEEDS = "7001-7040"
IOU_HIT = 0.5


@dataclass
class Sequence:
    """Frames, the index of the one holding the named object, the instruction text and that object's mask."""

    frames: list[np.ndarray]
    target: int
    text: str
    mask: np.ndarray


def unique_object(scenes: list, index: int) -> SceneObject | None:
    """A thing of scene ``index`` whose (colour, category) occurs nowhere else in the sequence."""
    def look(o: SceneObject) -> tuple[str | None, str]:
        return o.colour, o.category
    elsewhere = {look(o) for j, s in enumerate(scenes) if j != index for o in s.things}
    mine = [look(o) for o in scenes[index].things]
    return next((o for o in scenes[index].things if look(o) not in elsewhere and mine.count(look(o)) == 1), None)


def make_sequence(seed: int) -> Sequence:
    """The sequence of ``seed`` (redrawn from the same generator until one frame has a unique object)."""
    rng = np.random.default_rng(seed)
    while True:
        scenes = [sample_scene(rng, i, SIZE, int(rng.integers(2, 5))) for i in range(FRAMES)]
        target = int(rng.integers(FRAMES))
        obj = unique_object(scenes, target)
        if obj is not None:
            return Sequence([s.image for s in scenes], target, f"the {obj.colour} {obj.category}", obj.mask)


def evaluate(pipeline, seeds: list[int]) -> dict:
    """Localize every sequence; counts, mean IoU of the right-frame masks and per-sequence outcomes."""
    outcomes = []
    for seed in seeds:
        sequence = make_sequence(seed)
        result = pipeline.localize(sequence.frames, sequence.text)
        right = result.best_index == sequence.target
        iou = mask_iou(result.grounding.segments[0].mask, sequence.mask) if right else 0.0
        outcomes.append({"seed": seed, "text": sequence.text, "target": sequence.target,
                         "chosen": int(result.best_index), "iou": round(float(iou), 4)})
    right_ious = [o["iou"] for o in outcomes if o["chosen"] == o["target"]]
    return {
        "sequences": len(outcomes), "frames_per_sequence": FRAMES, "chance_right": len(outcomes) / FRAMES,
        "right_frame": len(right_ious), "masks_iou_at_least_0.5": sum(i >= IOU_HIT for i in right_ious),
        "mean_iou_when_right": round(float(np.mean(right_ious)), 4) if right_ious else None,
        "outcomes": outcomes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate_localization", description=__doc__.splitlines()[0])
    add_measurement_arguments(parser, DEFAULT_SEEDS)
    args = parser.parse_args(argv)
    return run_measurement("training.evaluate_localization", args, argv, evaluate)


if __name__ == "__main__":
    sys.exit(main())
