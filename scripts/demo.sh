#!/usr/bin/env bash
# The main job on the embedded default: sets up .venv (idempotent), then runs the demo into demo_out/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
cd "$root"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$root/.venv/bin/python" -m find_core.demo --out "$root/demo_out" "$@"
