"""Write a synthetic FIND dataset (COCO panoptic, RefCOCOg, Karpathy captions, FIND-Bench entities).

    python -m training.make_synthetic --out data/synthetic --seed 0 --images 100 [--size 256]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from find_core.data.synthetic_scenes import SyntheticConfig, generate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output directory (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same files")
    parser.add_argument("--images", type=int, default=100, help="total images over train and val (>= 4)")
    parser.add_argument("--size", type=int, default=256, help="square image side in pixels")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="share of images in the val split")
    args = parser.parse_args(argv)
    try:
        config = SyntheticConfig(images=args.images, size=args.size, seed=args.seed, val_fraction=args.val_fraction)
    except ValueError as e:
        parser.error(str(e))
    start = time.perf_counter()
    dataset = generate(args.out, config)
    counts = ", ".join(f"{split}: {len(ids)}" for split, ids in dataset.splits.items())
    print(f"wrote {config.images} images ({counts}) to {dataset.root} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
