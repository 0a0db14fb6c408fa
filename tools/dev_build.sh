#!/usr/bin/env bash
# Developer build without pip, one folder per worktree user: builds into build/NAME and
# assembles an importable package there (links to python/costxent plus the built
# libraries), so `PYTHONPATH=build/NAME/py python -m pytest tests` tests the working tree.
# Extra arguments go to CMake (e.g. -DCOSTXENT_CUDA=ON); CUDA is off unless asked for.
set -euo pipefail
name=${1:-dev}
shift || true
root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/build/$name
mkdir -p "$out/py/costxent"
cmake -S "$root" -B "$out/cmake" -G Ninja -DCOSTXENT_CUDA="${COSTXENT_CUDA:-OFF}" \
  -DPython_EXECUTABLE="$(command -v python)" -Dpybind11_DIR="$(python -m pybind11 --cmakedir)" \
  -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$out/py/costxent" "$@" >/dev/null
cmake --build "$out/cmake"
find "$out/py/costxent" -xtype l -delete  # links to modules that no longer exist
for f in "$root"/python/costxent/*.py; do ln -sf "$f" "$out/py/costxent/"; done
cp "$out/cmake/_build_info.py" "$out/py/costxent/"
