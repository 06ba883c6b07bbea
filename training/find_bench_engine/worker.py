"""One image's work, in a worker process: describe it (writer) and embed its segments (checkpoint).

A worker loads the panoptic split, the writer and the embedder once, then takes image jobs. It
writes the image's files itself, each whole (see :mod:`.store`), so a worker killed mid-image
loses only that image, which the next run does again. A failure on one image (a broken PNG, a model
error) is returned, logged and reported, and does not stop the build; it is not recorded, so a
later run tries the image again.
"""
from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .embeddings import SegmentEmbedder
from .facts import EntityRules, Writer
from .inputs import image_facts, open_panoptic
from .llm_writer import LlmConfig, LlmWriter
from .rule_writer import RuleWriter
from .store import BuildStore

__all__ = ["WorkerSetup", "ImageJob", "JobResult", "Worker", "initialize", "run_job"]

log = logging.getLogger("find_bench")


@dataclass(frozen=True)
class WorkerSetup:
    """Everything a worker process needs (picklable)."""

    panoptic_json: Path
    images: Path
    pngs: Path | None
    out: Path
    checkpoint: Path
    fingerprint: str
    device: str
    seed: int
    rules: EntityRules
    llm: LlmConfig | None
    threads: int                 # torch threads per worker


@dataclass(frozen=True)
class ImageJob:
    image_id: int
    captions: tuple[str, ...]
    describe: bool               # no record yet
    embed: bool                  # no embedding file yet


@dataclass(frozen=True)
class JobResult:
    image_id: int
    status: str                  # "accepted", "refused" or "failed" (or "embedded": nothing to describe)
    detail: str = ""


def make_writer(setup: WorkerSetup) -> Writer:
    if setup.llm is None:
        return RuleWriter(setup.rules)
    return LlmWriter(setup.llm, setup.rules, setup.device)


class Worker:
    def __init__(self, setup: WorkerSetup) -> None:
        torch.set_num_threads(setup.threads)
        self.setup = setup
        self.panoptic = open_panoptic(setup.panoptic_json, setup.images, setup.pngs)
        self.store = BuildStore(setup.out, setup.fingerprint)
        self.writer = make_writer(setup)
        self.embedder = SegmentEmbedder(setup.checkpoint, setup.device)

    def run(self, job: ImageJob) -> JobResult:
        try:
            return self._run(job)
        except Exception as error:  # one bad image must not stop the build; it is reported instead
            log.warning("image %d failed: %s: %s", job.image_id, type(error).__name__, error)
            return JobResult(job.image_id, "failed", f"{type(error).__name__}: {error}")

    def _run(self, job: ImageJob) -> JobResult:
        sample = self.panoptic.sample(job.image_id)
        if job.embed:
            masks = [s.mask for s in sample.segments]
            self.store.write_embeddings(job.image_id, {
                "segment_ids": np.array([s.id for s in sample.segments], np.int64),
                "category_ids": np.array([s.category_id for s in sample.segments], np.int64),
                "areas": np.array([int(m.sum()) for m in masks], np.int64),
                "iscrowd": np.array([s.iscrowd for s in sample.segments], bool),
                "embeddings": self.embedder.embed(sample.image, masks),
            })
        if not job.describe:
            return JobResult(job.image_id, "embedded")
        described = self.writer.describe(image_facts(sample, self.panoptic, list(job.captions)), self.setup.seed)
        record = {"image_id": job.image_id, "status": "accepted" if described.entry else "refused",
                  "entry": described.entry.to_json() if described.entry else None,
                  "refused": [a.to_json() for a in described.refused], "captions": len(job.captions)}
        self.store.write_record(job.image_id, record)
        return JobResult(job.image_id, record["status"], "" if described.entry else described.refused[-1].reason)


_worker: Worker | None = None


def initialize(setup: WorkerSetup) -> None:
    """Process-pool initializer: build this process's worker once. Ctrl-C is left to the main
    process, which stops handing out images; a worker finishes (and saves) the one it is on."""
    global _worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s[%(process)d]: %(message)s")
    _worker = Worker(setup)


def run_job(job: ImageJob) -> JobResult:
    if _worker is None:
        raise RuntimeError("worker not initialised (initialize(setup) runs first)")
    return _worker.run(job)
