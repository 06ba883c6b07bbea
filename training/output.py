"""How the evaluation CLIs hand over their results: one JSON object on stdout, optionally a file."""
from __future__ import annotations

import json
from pathlib import Path


def emit_json(data: dict, out: Path | None = None) -> None:
    """Print ``data`` as indented JSON (NaN refused: JSON has none) and also write it to ``out``."""
    text = json.dumps(data, indent=1, allow_nan=False)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    print(text, flush=True)
