"""The build folder on disk: files written whole or not at all, so a killed build leaves no half file.

Layout under ``OUT/build/``::

    manifest.json          the settings the records were made with (a resume must match them)
    records/{image_id}.json    one image's writer result (accepted entry or refused attempts)
    embeddings/{fingerprint}/{image_id}.npz    its segments' embeddings, per embedder checkpoint
"""
from __future__ import annotations

import io
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_atomic", "write_json", "BuildStore"]

log = logging.getLogger("find_bench")


def write_atomic(path: Path, data: bytes) -> None:
    """Write through a temporary file in the same folder and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any, compact: bool = True) -> None:
    text = json.dumps(data, separators=(",", ":")) if compact else json.dumps(data, indent=2)
    write_atomic(path, (text + ("" if compact else "\n")).encode("utf-8"))


class BuildStore:
    """Per-image records and embedding files of one build folder."""

    def __init__(self, out: Path, embedder_fingerprint: str) -> None:
        self.root = Path(out) / "build"
        self.records = self.root / "records"
        self.embeddings = self.root / "embeddings" / embedder_fingerprint
        self.manifest = self.root / "manifest.json"

    def remove_partial_files(self) -> None:
        """Delete the temporary files a killed writer left (a SIGKILL skips write_atomic's clean-up).

        Only call it while no worker writes into this build folder."""
        partial = [p for folder in (self.records, self.embeddings) if folder.is_dir() for p in folder.glob(".*.tmp")]
        for path in partial:
            path.unlink(missing_ok=True)
        if partial:
            log.info("removed %d half-written files a killed writer left in %s", len(partial), self.root)

    def record_path(self, image_id: int) -> Path:
        return self.records / f"{image_id}.json"

    def embedding_path(self, image_id: int) -> Path:
        return self.embeddings / f"{image_id}.npz"

    def read_record(self, image_id: int) -> dict | None:
        """The image's record, or None when there is none (or it cannot be read: it is then redone)."""
        path = self.record_path(image_id)
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            log.warning("record %s cannot be read (%s): image %d is done again", path, error, image_id)
            return None
        if not isinstance(record, dict) or record.get("image_id") != image_id:
            log.warning("record %s is not image %d's: it is done again", path, image_id)
            return None
        return record

    def write_record(self, image_id: int, record: dict) -> None:
        write_json(self.record_path(image_id), record)

    def read_embeddings(self, image_id: int) -> dict[str, np.ndarray] | None:
        path = self.embedding_path(image_id)
        if not path.is_file():
            return None
        try:
            with np.load(path) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError, EOFError) as error:
            log.warning("embedding file %s cannot be read (%s): image %d is embedded again", path, error, image_id)
            return None

    def write_embeddings(self, image_id: int, arrays: dict[str, np.ndarray]) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        write_atomic(self.embedding_path(image_id), buffer.getvalue())
