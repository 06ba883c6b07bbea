"""Turn a training checkpoint into one to ship (e.g. the embedded checkpoint):

    python -m training.export_checkpoint --checkpoint runs/retrieval_visual_source \
        --out find_core/checkpoints/find-synthetic

The weights are copied as they are (the same tensor digest, so metrics measured on the run's checkpoint
name the shipped one too); the config beside them loses what only the training run needs: the
frozen language model's on-disk feature cache points into the run's folder (``runs/...``), which a
package or another machine does not have, and an inference process should not write into.
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from pathlib import Path

from find_core.checkpoint import CONFIG, WEIGHTS, CheckpointError, load_config_beside, weights_digest
from training.evaluate import resolve_checkpoint


def export_checkpoint(source: Path, out: Path) -> str:
    """Copy ``source``'s weights (a checkpoint folder, or a run folder: its newest checkpoint) into
    ``out`` with its config minus training-only settings; returns the weights' tensor digest."""
    found = resolve_checkpoint(source)
    weights = found / WEIGHTS if found.is_dir() else found
    config = load_config_beside(weights)
    config = dataclasses.replace(config, language=dataclasses.replace(config.language, cache_dir=None))
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, out / WEIGHTS)
    config.to_yaml(out / CONFIG)
    return weights_digest(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint folder or run folder")
    parser.add_argument("--out", type=Path, required=True, help="folder to write model.safetensors + config.yaml")
    args = parser.parse_args(argv)
    try:
        digest = export_checkpoint(args.checkpoint, args.out)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{args.out}: weights {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
