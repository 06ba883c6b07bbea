"""Golden values of the embedded checkpoint: a fixed image and fixed phrases give the recorded slices of
its outputs (text, image and per-pixel embeddings, grounding scores) within 1e-4.

Every other test of the embedded model asks for behaviour ("finds 8 of 11 objects"), which survives a
small numerical drift; this one pins the numbers, so a change anywhere on the inference path (letterbox,
backbone, pixel decoder, interface, heads, language side, weights loading) shows at once. The fixture
names the weights' tensor digest: when the checkpoint is replaced on purpose, the test says so and the
values are rewritten with one command:

    .venv/bin/python test/test_embedded_golden.py --write
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

FIXTURE = Path(__file__).parent / "fixtures" / "embedded_golden.json"
COMMAND = ".venv/bin/python test/test_embedded_golden.py --write"
TOLERANCE = 1e-4
PHRASES = ["the red disc", "the blue square", "the large green triangle"]
PIXELS = [(12, 16), (30, 40), (48, 64), (70, 100), (90, 120)]   # (row, column) in the 96×128 image
DIMS = 8                                                        # leading embedding channels recorded


def golden_image() -> np.ndarray:
    """96×128 RGB: a vertical grey gradient with a red disc, a blue square and a green triangle."""
    ys, xs = np.mgrid[0:96, 0:128]
    image = np.repeat((90 + ys * 0.8)[..., None], 3, axis=-1)
    image[(ys - 30) ** 2 + (xs - 32) ** 2 < 15 ** 2] = (215, 35, 35)
    image[50:80, 50:80] = (35, 75, 215)
    image[(ys > 40) & (ys < 88) & (np.abs(xs - 106) < (ys - 40) * 0.4)] = (40, 165, 60)
    return image.astype(np.uint8)


def outputs() -> dict[str, Any]:
    """The recorded slices, computed on the CPU in fp32 with one thread."""
    from find_core import FindPipeline
    from find_core.embedded import EMBEDDED_CHECKPOINT

    torch.set_num_threads(1)
    pipeline = FindPipeline.from_checkpoint(EMBEDDED_CHECKPOINT, device="cpu")
    image = golden_image()
    pixels = pipeline.embed_pixels(image)
    cells = [(int(r / pixels.stride), int(c / pixels.stride)) for r, c in PIXELS]
    return {
        "text_embeddings": pipeline.embed_text(PHRASES)[:, :DIMS].tolist(),
        "image_embedding": pipeline.embed_images([image])[0, :DIMS].tolist(),
        "pixel_embeddings": [pixels.embeddings[r, c, :DIMS].tolist() for r, c in cells],
        "grounding_scores": [s.score for s in pipeline.ground(image, PHRASES).segments],
    }


def checkpoint_digest() -> str:
    from find_core.checkpoint import weights_digest
    from find_core.embedded import EMBEDDED_CHECKPOINT
    return weights_digest(EMBEDDED_CHECKPOINT)


def write() -> None:
    """Record the current checkpoint's values (after a deliberate change of the weights or the model)."""
    doc = {"about": "golden outputs of the embedded checkpoint on test_embedded_golden.golden_image()",
           "command": COMMAND, "checkpoint_sha256": checkpoint_digest(), "phrases": PHRASES, "pixels": PIXELS,
           "outputs": outputs()}
    FIXTURE.write_text("{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in doc.items()) + "\n}\n")
    print(f"wrote {FIXTURE}")


def test_embedded_checkpoint_reproduces_its_golden_outputs():
    golden = json.loads(FIXTURE.read_text())
    assert golden["checkpoint_sha256"] == checkpoint_digest(), (
        f"the embedded checkpoint's weights changed since {FIXTURE.name} was written: if on purpose, run {COMMAND}")
    assert golden["phrases"] == PHRASES and [tuple(p) for p in golden["pixels"]] == PIXELS
    got = outputs()
    assert set(got) == set(golden["outputs"])
    for name, want in golden["outputs"].items():
        np.testing.assert_allclose(np.asarray(got[name]), np.asarray(want), rtol=0, atol=TOLERANCE, err_msg=name)


def test_golden_values_are_not_degenerate():
    """The slices must be able to tell models apart: distinct phrases, distinct pixels, non-zero values."""
    golden = json.loads(FIXTURE.read_text())["outputs"]
    text, pixels = np.asarray(golden["text_embeddings"]), np.asarray(golden["pixel_embeddings"])
    assert len({tuple(np.round(row, 3)) for row in text}) == len(PHRASES)
    assert len({tuple(np.round(row, 3)) for row in pixels}) == len(PIXELS)
    assert np.abs(np.asarray(golden["image_embedding"])).max() > 1e-3


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"rewrite {FIXTURE.name} from the current checkpoint")
    if parser.parse_args().write:
        write()
    else:
        sys.exit("nothing to do: --write rewrites the golden values (pytest runs the check)")
