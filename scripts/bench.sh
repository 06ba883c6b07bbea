#!/usr/bin/env bash
# Benchmarks: sets up .venv (idempotent), then runs bench/run.py, which writes bench/RESULTS.md and
# bench/results.json. --quick shrinks every size (a few minutes on 2 cores, for CI) and writes to
# bench/out/quick/ instead; other arguments go to the runner (--only models,fusion, --device cuda:0,
# --threads 1 on a machine other jobs share, --out DIR). Figures, never pass/fail: the exit code is
# non-zero only when a benchmark could not be measured at all.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
cd "$root"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# large DDS messages in shared memory (config/fastdds_large_messages.xml) unless a profile is named
export FASTDDS_DEFAULT_PROFILES_FILE="${FASTDDS_DEFAULT_PROFILES_FILE:-$root/config/fastdds_large_messages.xml}"
exec "$root/.venv/bin/python" -m bench.run "$@"
