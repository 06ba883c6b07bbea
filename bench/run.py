"""Run the benchmarks and write bench/RESULTS.md and bench/results.json.

    python -m bench.run [--quick] [--only models,node] [--out DIR] [--device cuda:0] [--threads 1]

``--quick`` shrinks every size (a few minutes on 2 CPU cores, for CI). Only a full run of every
benchmark writes bench/ by default; --quick and --only runs go to bench/out/quick/ and
bench/out/partial/ (git-ignored) unless --out says otherwise. ``--only NAMES --update`` re-measures
those sections into the committed bench/RESULTS.md and results.json, keeping the others; the header
then lists each such update (date, command, machine). A benchmark that fails is reported as not measured and the others
still run; the exit code is then 1.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from .common import REPO, BenchConfig, Section, device_info
from .report import merge, table_markdown, write

BENCHMARKS = ("models", "node", "transport", "fusion", "field_query", "album", "training", "field_nerf")


def run_one(name: str, config: BenchConfig) -> Section:
    print(f"[bench] {name} ...", flush=True)
    started = time.perf_counter()
    try:
        section = importlib.import_module(f"bench.{name}").run(config)
    except Exception as error:  # one broken benchmark must not hide the others' figures
        traceback.print_exc()
        section = Section(name, name, "", error=f"{type(error).__name__}: {error}")
    section.seconds = time.perf_counter() - started
    for table in section.tables:
        print(table_markdown(table), flush=True)
    print(f"[bench] {name} done in {section.seconds:.0f} s" + (f" — FAILED: {section.error}" if section.error else ""),
          flush=True)
    return section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shrink every size (CI)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    parser.add_argument("--out", type=Path, help="where RESULTS.md and results.json go (default: bench/ for a "
                                                 "full run of every benchmark, else bench/out/quick/ or "
                                                 "bench/out/partial/, so those never overwrite the committed results)")
    parser.add_argument("--device", default="auto", help="torch device of the model figures")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch / OpenMP threads in every process (0 = torch's default, all cores); "
                             "1 gives steadier figures on a machine other jobs share")
    parser.add_argument("--update", action="store_true",
                        help="with --only: replace those sections in bench/ (or --out), keep the others")
    args = parser.parse_args(argv)
    names = BENCHMARKS if not args.only else tuple(n.strip() for n in args.only.split(",") if n.strip())
    if args.update and (args.quick or not args.only):
        parser.error("--update re-measures some sections of a full run: give --only, not --quick")
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; choose from {list(BENCHMARKS)}")
    if args.threads > 0:           # before torch is imported, so node and training subprocesses inherit it
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    if args.threads > 0:
        import torch
        torch.set_num_threads(args.threads)
    config = BenchConfig(quick=args.quick, device=args.device)
    config.work_dir.mkdir(parents=True, exist_ok=True)
    header = {"quick": args.quick, "arguments": list(argv if argv is not None else sys.argv[1:]), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "device": device_info(), "benchmarks": list(names)}
    started = time.perf_counter()
    sections = [run_one(name, config) for name in names]
    header["seconds"] = time.perf_counter() - started
    header["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    out = args.out or (REPO / "bench" / "out" / "quick" if args.quick else
                       REPO / "bench" if names == BENCHMARKS or args.update else REPO / "bench" / "out" / "partial")
    if args.update:
        failed = [s.key for s in sections if s.error]
        if failed:   # an update replaces committed figures: never with "not measured"
            print(f"[bench] {', '.join(failed)} failed: {out} left as it was", flush=True)
            return 1
        sections, header = merge(out / "results.json", sections, header, BENCHMARKS)
    md, js = write(sections, header, out)
    print(f"[bench] wrote {md} and {js} in {header['seconds'] / 60:.1f} min", flush=True)
    return 1 if any(s.error for s in sections) else 0


if __name__ == "__main__":
    sys.exit(main())
