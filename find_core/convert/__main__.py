"""python -m find_core.convert OFFICIAL.pt --out DIR [--language PATH] [--model-config YAML]
python -m find_core.convert --parity FIXTURE_DIR

The first converts a released FIND checkpoint into a find_ros checkpoint folder; the second compares
our modules with the official code's outputs saved in a reference fixture folder and exits non-zero
when a tensor differs by more than the tolerance or is missing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import ConfigError, ModelConfig
from .checkpoint import convert_official
from .official import OfficialCheckpointError
from .parity import TOLERANCE, ParityError, run_parity


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m find_core.convert", description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("official", nargs="?", type=Path, help="official FIND checkpoint (.pt)")
    parser.add_argument("--out", type=Path, help="checkpoint folder to write")
    parser.add_argument("--language", type=Path,
                        help="language model folder (transformers format, e.g. LLaMA-7B) for the converted model; "
                             "when the file holds the LLaMA tower itself, the folder its tokenizer is read from")
    parser.add_argument("--model-config", type=Path,
                        help="model config YAML the file is for (default: the released preset its backbone names)")
    parser.add_argument("--parity", type=Path, metavar="FIXTURE_DIR",
                        help="compare with the official outputs in a reference fixture folder")
    args = parser.parse_args(argv)
    if args.parity is not None:
        if args.official is not None or args.out is not None:
            parser.error("--parity takes only the fixture folder")
        return _parity(args.parity)
    if args.official is None or args.out is None:
        parser.error("give an official checkpoint and --out DIR (or --parity FIXTURE_DIR)")
    try:
        config = ModelConfig.from_yaml(args.model_config) if args.model_config else None
        report = convert_official(args.official, args.out, args.language, config)
    except (OfficialCheckpointError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for note in report.notes:
        print(f"note: {note}")
    print(f"wrote {report.folder} ({report.config.name}): {report.tensors} tensors, {report.elements:,} values")
    return 0


def _parity(folder: Path) -> int:
    try:
        comparisons = run_parity(folder)
    except ParityError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    largest = 0.0
    for name, difference in comparisons:
        print(f"{name}\t{difference:.3g}")
        largest = max(largest, difference)
    verdict = "ok" if largest <= TOLERANCE else f"FAILED (tolerance {TOLERANCE:g})"
    print(f"compared {len(comparisons)} tensors, largest difference {largest:.3g}: {verdict}")
    return 0 if largest <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
