"""bench.run --update replaces committed sections only with measured ones."""
from __future__ import annotations

import shutil
from pathlib import Path

import bench.models
from bench.run import main

REPO = Path(__file__).resolve().parents[1]


def test_a_failed_benchmark_leaves_the_committed_results_as_they_were(tmp_path, monkeypatch):
    for name in ("results.json", "RESULTS.md"):
        shutil.copy(REPO / "bench" / name, tmp_path / name)
    before = {name: (tmp_path / name).read_bytes() for name in ("results.json", "RESULTS.md")}

    def broken(config):
        raise RuntimeError("no model today")
    monkeypatch.setattr(bench.models, "run", broken)
    assert main(["--only", "models", "--update", "--out", str(tmp_path)]) == 1
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
