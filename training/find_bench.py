"""FIND-Bench data engine: interleaved grounding / retrieval entries from any COCO-format set.

    python -m training.find_bench build --panoptic PANOPTIC.json --images DIR --captions CAPTIONS.json \\
        --out DIR [--llm MODEL|LLM.yaml] [--embedder CHECKPOINT] [--workers N] [--seed S]

A writer describes each image from its captions and its segments' class names, boxes and ids,
with each entity span linked to its segment (the rule-based writer by default, or ``--llm``: a
Hugging Face causal LM from a local folder, ``package:<module>``, a hub id in the local cache, or a
YAML file of ``training.find_bench_engine.llm_writer.LlmConfig`` fields such as ``random_config``).
Each entity then gets a visual replacement, the most similar same-class segment of another image by
the mask-pooled embeddings of a FIND checkpoint (default: the embedded one). Writes
``OUT/entity_{split}.json`` (official format, ``reference`` on phrases), ``OUT/retrieval_{split}.json``
and ``OUT/report.json``. Interrupted builds continue where they stopped when run again. Runs offline.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from training.find_bench_engine.build import BuildConfig, BuildInterrupted, build
from training.find_bench_engine.facts import EntityRules
from training.find_bench_engine.llm_writer import LlmConfig


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.find_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    b = commands.add_parser("build", help="build FIND-Bench entities (resumes an interrupted build)")
    b.add_argument("--panoptic", type=Path, required=True, help="COCO panoptic JSON (e.g. panoptic_val2017.json)")
    b.add_argument("--images", type=Path, required=True, help="the folder of its images")
    b.add_argument("--captions", type=Path, required=True, help="COCO captions JSON or Karpathy dataset_coco.json")
    b.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    b.add_argument("--panoptic-pngs", type=Path, help="panoptic PNG folder (default: beside the JSON, same name)")
    b.add_argument("--split", help="split name in the output file names (default: from the panoptic JSON name)")
    b.add_argument("--llm", help="causal LM (folder, package:<module>, cached hub id) or an LLM YAML; "
                                 "default: the rule-based writer")
    b.add_argument("--embedder", type=Path, help="FindPipeline checkpoint folder (default: the embedded one)")
    b.add_argument("--workers", type=int, default=1, help="worker processes (0: in this process)")
    b.add_argument("--seed", type=int, default=0, help="same seed and inputs, same files")
    b.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (for the LLM and the embedder)")
    b.add_argument("--threads", type=int, default=1, help="torch threads per worker (use more workers for more cores)")
    b.add_argument("--max-entities", type=int, default=EntityRules.max_entities, help="entities per description")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded at run time
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        config = BuildConfig(
            panoptic=args.panoptic, images=args.images, captions=args.captions, out=args.out,
            panoptic_pngs=args.panoptic_pngs, split=args.split,
            llm=LlmConfig.from_arg(args.llm) if args.llm else None, embedder=args.embedder,
            workers=args.workers, seed=args.seed, device=args.device, threads=args.threads,
            rules=EntityRules(max_entities=args.max_entities), progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    try:
        report = build(config)
    except BuildInterrupted as error:
        print(f"find_bench: interrupted: {error}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"find_bench: interrupted; every finished image is saved in {args.out / 'build'}: run the same "
              f"command again to continue", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as error:
        print(f"find_bench: error: {error}", file=sys.stderr)
        return 2
    images, entities = report["images"], report["entities"]
    print(f"find_bench: {images['described']} of {images['total']} images described "
          f"({images['refused']} refused, {images['failed']} failed), {entities['total']} entities, "
          f"{entities['with_reference']} with a visual reference -> {report['outputs']['entity_file']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
