"""The Fast DDS profile every process of the project runs with (``config/fastdds_large_messages.xml``).

Why: Fast DDS sends a message larger than its shared-memory segment (512 kB by default) over UDP,
and camera frames and ``~/embeddings`` grids are larger than that; the profile's 16 MB segments keep
them in shared memory (bench ``transport``). A profile the environment already names wins.
"""
from __future__ import annotations

import os
from pathlib import Path

PROFILE_VARIABLE = "FASTDDS_DEFAULT_PROFILES_FILE"
PROFILE_FILE = "fastdds_large_messages.xml"


def dds_profile_env(config_dir: str | Path) -> dict[str, str]:
    """``{FASTDDS_DEFAULT_PROFILES_FILE: <config_dir>/fastdds_large_messages.xml}``, or nothing when
    the environment names a profile already or the file is not there."""
    path = Path(config_dir) / PROFILE_FILE
    if os.environ.get(PROFILE_VARIABLE) or not path.is_file():
        return {}
    return {PROFILE_VARIABLE: str(path)}
