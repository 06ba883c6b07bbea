"""The build: per-image work in worker processes, then the visual-replacement search and the files.

Output under ``out``::

    entity_{split}.json      FIND-Bench entities; phrases with a visual replacement carry the
                             official ``reference: {image_id, annotation_id, prob}``
    retrieval_{split}.json   the interleave-retrieval gallery (every image of the split that was read)
    report.json              counts, entities per image, references, refused outputs and why, failures
    build/                   per-image records and the embedding cache (what a rerun resumes from)

Everything is a function of the inputs, the settings and the seed — not of the number of workers, the
order images finish in, or how often the build was interrupted (on one machine and thread setting:
float arithmetic may differ in the last bits across those, which can move a ``prob`` digit).
"""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .embeddings import checkpoint_fingerprint, resolve_checkpoint
from .facts import EntityRules
from .inputs import load_captions, open_panoptic, split_name
from .llm_writer import LlmConfig, check_llm_available, llm_settings
from .references import SegmentIndex, link_references
from .report import make_report
from .store import BuildStore, write_json
from .worker import ImageJob, JobResult, Worker, WorkerSetup, initialize, run_job

__all__ = ["BuildConfig", "BuildInterrupted", "build"]

log = logging.getLogger("find_bench")


@dataclass(frozen=True)
class BuildConfig:
    panoptic: Path                           # COCO panoptic JSON
    images: Path                             # its image folder
    captions: Path                           # COCO captions JSON or Karpathy dataset_coco.json
    out: Path
    panoptic_pngs: Path | None = None        # default: the folder named like the JSON, beside it
    split: str | None = None                 # default: from the JSON name (panoptic_val2017 -> val2017)
    llm: LlmConfig | None = None             # None: the rule-based writer
    embedder: Path | None = None             # None: the embedded checkpoint
    workers: int = 1                         # 0: in this process
    seed: int = 0
    device: str = "auto"
    threads: int = 1                         # torch threads per worker (fixed, so the worker count cannot
                                             # change the float results: more cores, more workers)
    rules: EntityRules = field(default_factory=EntityRules)
    min_reference_area: int = 64             # pixels; smaller segments make unreadable reference crops
    progress: bool = True

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


class BuildInterrupted(RuntimeError):
    """The build stopped early; what was finished is kept and a rerun continues from it."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _writer_settings(config: BuildConfig) -> dict[str, Any]:
    if config.llm is not None:
        return llm_settings(config.llm, config.rules)
    return {"writer": "rule", **asdict(config.rules)}


def _check_manifest(store: BuildStore, settings: dict[str, Any], entity_file: Path) -> None:
    """Records are reused only when made with the same settings and inputs; never overwrite an
    entity file this engine did not write."""
    settings = json.loads(json.dumps(settings))
    if store.manifest.is_file():
        previous = json.loads(store.manifest.read_text(encoding="utf-8"))
        changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
        if changed:
            raise ValueError(f"{store.root} holds records made with other settings or inputs (changed: "
                             f"{', '.join(changed)}); choose a new --out (or delete {store.root} to start over)")
    elif entity_file.exists():
        raise ValueError(f"{entity_file} exists and was not written by this engine (no {store.manifest}); "
                         f"choose another --out")
    write_json(store.manifest, settings, compact=False)


def _run_jobs(jobs: list[ImageJob], setup: WorkerSetup, config: BuildConfig, desc: str) -> list[JobResult]:
    if not jobs:
        return []
    bar = tqdm(total=len(jobs), desc=desc, unit="image", disable=not config.progress)
    results: list[JobResult] = []
    try:
        if config.workers == 0:
            worker = Worker(setup)
            for job in jobs:
                results.append(worker.run(job))
                bar.update()
            return results
        context = multiprocessing.get_context("spawn")  # fork after torch threads start is unsafe
        pool = ProcessPoolExecutor(config.workers, mp_context=context, initializer=initialize, initargs=(setup,))
        try:
            futures = [pool.submit(run_job, job) for job in jobs]
            for future in as_completed(futures):
                results.append(future.result())
                bar.update()
        except BrokenProcessPool as error:
            raise BuildInterrupted(
                f"a worker process died (killed, out of memory, or it failed to start: see the log above; "
                f"{error}) after {len(results)} of {len(jobs)} images of this run; every finished image is "
                f"saved in {setup.out / 'build'}: run the same command again to continue") from error
        finally:  # on Ctrl-C too: drop the images not started, let the running ones finish
            pool.shutdown(wait=True, cancel_futures=True)
        return results
    finally:
        bar.close()


def build(config: BuildConfig) -> dict[str, Any]:
    """Run (or resume) a build; returns the report it also writes to ``out/report.json``."""
    out = Path(config.out).resolve()
    if config.llm is not None:
        check_llm_available(config.llm)
    checkpoint = resolve_checkpoint(config.embedder)
    fingerprint = checkpoint_fingerprint(checkpoint)
    panoptic = open_panoptic(config.panoptic, config.images, config.panoptic_pngs)
    captions = load_captions(config.captions)
    split = config.split or split_name(config.panoptic)
    entity_file, retrieval_file = out / f"entity_{split}.json", out / f"retrieval_{split}.json"
    store = BuildStore(out, fingerprint)
    settings = {**_writer_settings(config), "seed": config.seed,
                "panoptic": str(Path(config.panoptic).resolve()), "panoptic_sha256": _sha256(config.panoptic),
                "captions": str(Path(config.captions).resolve()), "captions_sha256": _sha256(config.captions)}
    _check_manifest(store, settings, entity_file)

    image_ids = list(panoptic.image_ids)
    uncaptioned = [i for i in image_ids if not captions.get(i)]
    if uncaptioned:
        log.warning("%d of %d images have no captions in %s (first: %s); they are described from their "
                    "segments alone", len(uncaptioned), len(image_ids), config.captions, uncaptioned[:5])
    records = {i: r for i in image_ids if (r := store.read_record(i)) is not None}
    embeddings = {i: e for i in image_ids if (e := store.read_embeddings(i)) is not None}
    jobs = [ImageJob(i, tuple(captions.get(i, ())), i not in records, i not in embeddings)
            for i in image_ids if i not in records or i not in embeddings]
    log.info("%d images: %d done before, %d to do", len(image_ids), len(image_ids) - len(jobs), len(jobs))

    setup = WorkerSetup(Path(config.panoptic).resolve(), Path(config.images).resolve(),
                        Path(config.panoptic_pngs).resolve() if config.panoptic_pngs else None, out, checkpoint,
                        fingerprint, config.device, config.seed, config.rules, config.llm, config.threads)
    store.remove_partial_files()                        # left by a build killed before this one
    try:
        results = _run_jobs(jobs, setup, config, f"find_bench {split}")
    except BuildInterrupted:
        store.remove_partial_files()                    # the pool has stopped: no writer is left
        raise
    for r in results:
        if r.status != "failed":
            records.setdefault(r.image_id, store.read_record(r.image_id))
            embeddings.setdefault(r.image_id, store.read_embeddings(r.image_id))
    records = {i: r for i, r in records.items() if r is not None}
    embeddings = {i: e for i, e in embeddings.items() if e is not None}

    index = SegmentIndex(embeddings, config.min_reference_area)
    entries = [records[i]["entry"] for i in image_ids if i in records and records[i]["status"] == "accepted"]
    links = link_references(entries, index)
    described = {e["image_id"] for e in entries}
    write_json(entity_file, {
        "images": [{"id": i, "file_name": panoptic.image_path(i).relative_to(panoptic.image_dir).as_posix()}
                   for i in image_ids if i in described],
        "annotations": entries})
    write_json(retrieval_file, {"split": split, "entity_file": entity_file.name,
                                "gallery_image_ids": [i for i in image_ids if i in embeddings]})

    report = make_report(
        split=split, settings={**_writer_settings(config), "seed": config.seed, "embedder": str(checkpoint),
                               "embedder_fingerprint": fingerprint, "min_reference_area": config.min_reference_area},
        inputs={"panoptic": str(Path(config.panoptic).resolve()), "images": str(Path(config.images).resolve()),
                "captions": str(Path(config.captions).resolve())},
        image_ids=image_ids, uncaptioned=len(uncaptioned), records=records, entries=entries, links=links,
        failed=[r for r in results if r.status == "failed"], processed=len(jobs), segments=len(index),
        outputs={"entity_file": str(entity_file), "retrieval_file": str(retrieval_file)})
    write_json(out / "report.json", report, compact=False)
    return report
