"""Model presets: YAML files under config/models/, found in a source checkout or an install."""
from __future__ import annotations

import os
import sys
from pathlib import Path

PACKAGE = "find_ros"


def preset_dirs() -> list[Path]:
    """Where presets are looked for, in order: $FIND_ROS_PRESETS, the source tree, install shares."""
    dirs = []
    if os.environ.get("FIND_ROS_PRESETS"):
        dirs.append(Path(os.environ["FIND_ROS_PRESETS"]))
    dirs.append(Path(__file__).resolve().parents[1] / "config" / "models")
    prefixes = [sys.prefix] + [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    dirs.extend(Path(prefix) / "share" / PACKAGE / "config" / "models" for prefix in prefixes)
    return dirs


def available_presets() -> list[str]:
    return sorted({p.stem for d in preset_dirs() if d.is_dir() for p in d.glob("*.yaml")})


def preset_path(name: str) -> Path:
    for directory in preset_dirs():
        candidate = directory / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(d) for d in preset_dirs())
    raise FileNotFoundError(f"unknown model preset '{name}'; available: {available_presets()}; looked in: {looked}")
