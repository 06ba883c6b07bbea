#!/usr/bin/env bash
# Idempotent set-up: Debian packages, a local .venv with pinned dependencies, and find_ros itself.
# Re-running with nothing changed only checks a stamp and returns in seconds.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="$root/.venv"
python_bin="${PYTHON:-python3.11}"
command -v "$python_bin" >/dev/null 2>&1 || python_bin=python3

# Open3D needs libusb at import time.
if ! ldconfig -p 2>/dev/null | grep 'libusb-1.0.so.0' >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    echo "[setup] installing Debian package libusb-1.0-0" >&2
    (apt-get install -y -qq libusb-1.0-0 >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq libusb-1.0-0; })
  else
    echo "[setup] warning: libusb-1.0-0 missing and not root; open3d will not import (sudo apt-get install libusb-1.0-0)" >&2
  fi
fi

[ -x "$venv/bin/python" ] || "$python_bin" -m venv "$venv"

stamp="$venv/.find_ros_setup_stamp"
want="$(cat requirements.txt requirements-lock.txt setup.py setup.cfg 2>/dev/null | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
constraints=()
[ -f requirements-lock.txt ] && constraints=(-c requirements-lock.txt)
echo "[setup] installing pinned dependencies into .venv (first run: a few minutes)" >&2
"${pip[@]}" install "${constraints[@]}" -r requirements.txt 2> >(grep -v "is ignored: it is neither" >&2)
"${pip[@]}" install --no-deps --no-build-isolation -e .
echo "$want" > "$stamp"
echo "[setup] done" >&2
