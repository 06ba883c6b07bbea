#!/usr/bin/env bash
# The main job on the embedded default: sets up .venv (idempotent), then runs the node demo into demo_out/:
# find_replay + find_perception as processes on the bundled synthetic RGB-D scene (rendered once into
# demo_out/scene, reused afterwards), an interleaved instruction, the answer checked against ground truth
# (demo_out/summary.json), then a 3D feature field of the recording (demo_out/field.ply, field_answer.json).
# Extra arguments go to `python -m find_ros.demo` (e.g. --device cuda, --model tiny-test, --frames 20).
# The 2D library demo alone: .venv/bin/python -m find_core.library_demo
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
cd "$root"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# large DDS messages in shared memory (config/fastdds_large_messages.xml) unless a profile is named
export FASTDDS_DEFAULT_PROFILES_FILE="${FASTDDS_DEFAULT_PROFILES_FILE:-$root/config/fastdds_large_messages.xml}"
exec "$root/.venv/bin/python" -m find_ros.demo --out "$root/demo_out" "$@"
