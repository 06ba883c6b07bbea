"""Write the benchmark sections as RESULTS.md (for people) and results.json (every raw number)."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from .common import Section, Table


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table_markdown(table: Table) -> str:
    lines = [f"**{table.title}**", "", "| " + " | ".join(_cell(c) for c in table.columns) + " |",
             "|" + "|".join("---" for _ in table.columns) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in table.rows]
    lines += [""] + [f"- {note}" for note in table.notes]
    return "\n".join(lines).rstrip() + "\n"


def markdown(sections: list[Section], header: dict[str, Any]) -> str:
    device = header["device"]
    gpu = ", ".join(device["gpu"]) or "none"
    command = " ".join(["scripts/bench.sh", *header["arguments"]])
    quick = "**QUICK RUN** (every size shrunk; for CI, not for comparison). " if header["quick"] else ""
    out = [
        "# find_ros benchmarks",
        "",
        f"{quick}Written by `{command}` (`python -m bench.run`) on {header['date']} in "
        f"{header['seconds'] / 60:.1f} min. Figures, not pass/fail: each comes with the absolute numbers and a "
        "ratio against a baseline measured in the same run on the same machine.",
        "",
        f"- CPU: {device['cpu']} — {device['cpu_cores']} cores usable, torch threads: {device['torch_threads']}, "
        f"{device['memory_gb']} GB RAM; load average at the start {device['load_average']} "
        f"(at the end {header.get('load_average_end')})",
        f"- GPU: {gpu}",
        f"- Python {device['python']}, torch {device['torch']}, numpy {device['numpy']}, open3d {device['open3d']}, "
        f"transformers {device['transformers']}",
    ]
    for update in header.get("updates", []):
        machine = update["device"]
        out.append(f"- Re-measured later: {', '.join(update['benchmarks'])} by `scripts/bench.sh "
                   f"{' '.join(update['arguments'])}` on {update['date']} (CPU: {machine['cpu']}, "
                   f"{machine['cpu_cores']} cores, torch threads {machine['torch_threads']}; GPU: "
                   f"{', '.join(machine['gpu']) or 'none'}; load average {machine['load_average']})")
    if max(device["load_average"]) > 0.75 * device["cpu_cores"]:
        out.append("- Other jobs shared the machine during this run (see the load): ratios, taken in the same run, "
                   "are steadier than the absolute numbers.")
    out.append("")
    for section in sections:
        out += [f"## {section.title}", "", section.method, ""]
        if section.error:
            out += [f"**Not measured**: {section.error}", ""]
        for table in section.tables:
            out += [table_markdown(table)]
        out += [f"_({section.seconds:.0f} s)_", ""]
    return "\n".join(out)


def _finite(value: Any) -> Any:
    """JSON has no NaN/inf: write null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if hasattr(value, "item") and callable(value.item):   # numpy scalars
        return _finite(value.item())
    if isinstance(value, Path):
        return str(value)
    return value


def merge(results: Path, sections: list[Section], header: dict[str, Any],
          order: tuple[str, ...]) -> tuple[list[Section], dict[str, Any]]:
    """The sections and header of ``results`` (a full run's results.json) with ``sections`` replacing
    (or joining, in ``order``) those of the same key, and this run recorded under ``updates``."""
    doc = json.loads(results.read_text())
    if doc.get("quick"):
        raise ValueError(f"{results} holds a quick run: update a full run's results")
    by_key = {s["key"]: Section(**{**s, "tables": [Table(**t) for t in s["tables"]]}) for s in doc.pop("sections")}
    by_key.update({s.key: s for s in sections})
    update = {k: header[k] for k in ("date", "arguments", "device", "benchmarks", "seconds", "load_average_end")}
    doc["updates"] = list(doc.get("updates", [])) + [update]
    return sorted(by_key.values(), key=lambda s: order.index(s.key) if s.key in order else len(order)), doc


def write(sections: list[Section], header: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / "RESULTS.md", out_dir / "results.json"
    md.write_text(markdown(sections, header))
    doc = {**header, "sections": [dataclasses.asdict(s) for s in sections]}
    js.write_text(json.dumps(_finite(doc), indent=1) + "\n")
    return md, js
