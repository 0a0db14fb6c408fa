#!/usr/bin/env bash
# Builds the binary wheel: tools/build_wheels.sh PYTHON  ->  dist/costxent-*.whl
#
# In a fresh venv of PYTHON with the pinned build tools (wheel-build-requirements.txt) and
# the TensorFlow the wheel is built for. The GPU kernels come from a CUDA 12 toolchain out
# of the package index (wheel-cuda12-requirements.txt): TF 2.21 users have CUDA 12 drivers,
# and the local nvcc (CUDA 13) makes code that needs a CUDA 13 driver and cannot target
# sm_70. The index's CUDA 12 "nvcc" package holds ptxas and libdevice but no nvcc front end,
# so clang compiles the .cu files against those CUDA 12 pieces, ptxas 12 makes the SASS,
# and cudart 12 is linked statically. auditwheel repairs the result, leaving TensorFlow's
# own libraries to TensorFlow.
#
# Environment:
#   COSTXENT_WHEEL_CUDA   ON (default) or OFF (a CPU-only wheel)
#   COSTXENT_CUDA_ARCHS   SASS targets, default "70;75;80;86;89;90"; PTX of the last one too
#   COSTXENT_CUDA_CLANG   the clang++ that compiles CUDA (default clang++-19, else clang++)
set -euo pipefail
python=${1:?usage: tools/build_wheels.sh PYTHON}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$root/build/wheel
cuda=${COSTXENT_WHEEL_CUDA:-ON}
archs=${COSTXENT_CUDA_ARCHS:-70;75;80;86;89;90}
venv=$work/venv
start=$SECONDS

mkdir -p "$work" "$root/dist"
# Reused between runs (rm -rf build/wheel for a clean one); pip brings it to the pins.
"$python" -m venv "$venv"
"$venv/bin/pip" install -q -r "$root/tools/wheel-build-requirements.txt"
# Nothing from /usr/local: the local CUDA 13 toolkit must not be found.
export PATH=$venv/bin:/usr/bin:/bin

defines=(--config-settings=cmake.define.COSTXENT_CUDA="$cuda")
if [ "$cuda" = ON ]; then
  clang=${COSTXENT_CUDA_CLANG:-$(command -v clang++-19 || command -v clang++ || true)}
  if [ -z "$clang" ]; then
    echo "build_wheels.sh: no clang++ to compile CUDA (apt-get install clang-19)" >&2
    exit 1
  fi
  "$venv/bin/pip" install -q -r "$root/tools/wheel-cuda12-requirements.txt"
  nvidia=$("$venv/bin/python" -c "import nvidia; print(list(nvidia.__path__)[0])")
  version=$("$venv/bin/python" -c \
    "import importlib.metadata as m; print(m.version('nvidia-cuda-nvcc-cu12'))")
  # One CUDA toolkit tree, the layout clang and CMake look for, linked to the pip packages.
  toolkit=$work/cuda12
  rm -rf "$toolkit"
  mkdir -p "$toolkit/bin" "$toolkit/include" "$toolkit/lib64" "$toolkit/nvvm"
  ln -s "$nvidia/cuda_nvcc/bin/ptxas" "$toolkit/bin/ptxas"
  ln -s "$nvidia/cuda_nvcc/nvvm/libdevice" "$toolkit/nvvm/libdevice"
  for package in cuda_runtime cuda_nvcc cuda_cccl curand; do
    cp -rs --remove-destination "$nvidia/$package/include/." "$toolkit/include/"
  done
  for library in libcudart_static.a libcudadevrt.a libculibos.a libcudart.so.12; do
    ln -s "$nvidia/cuda_runtime/lib/$library" "$toolkit/lib64/$library"
  done
  ln -s libcudart.so.12 "$toolkit/lib64/libcudart.so"  # FindCUDAToolkit insists on it
  # clang packs SASS and PTX with bin/fatbinary, spelling its options the old way.
  export FATBINARY=$nvidia/cu13/bin/fatbinary
  ln -s "$root/tools/clang_fatbinary.sh" "$toolkit/bin/fatbinary"
  # CMake finds clang's toolkit by asking its nvcc for the version; this one only answers.
  printf '%s\n' '#!/bin/sh' \
    "# Answers CMake's version probe of a toolkit that has no nvcc; compiles nothing." \
    "[ \"\$1\" = --version ] && echo 'Cuda compilation tools, release ${version%.*}, V$version' && exit 0" \
    "echo 'this CUDA $version toolkit has no nvcc: clang compiles its CUDA code' >&2; exit 1" \
    > "$toolkit/bin/nvcc"
  chmod +x "$toolkit/bin/nvcc"
  newest=${archs##*;}
  defines+=(
    --config-settings=cmake.define.CMAKE_CUDA_COMPILER="$clang"
    --config-settings=cmake.define.CUDAToolkit_ROOT="$toolkit"
    --config-settings=cmake.define.COSTXENT_CUDA_ARCHS="$archs"
    "--config-settings=cmake.define.CMAKE_CUDA_FLAGS=-Wno-unknown-cuda-version --no-cuda-include-ptx=all --cuda-include-ptx=sm_$newest"
  )
fi

rm -rf "$work/raw" "$work/repaired"
"$venv/bin/pip" wheel --no-build-isolation --no-deps "${defines[@]}" \
  --config-settings=build-dir="$work/cmake" -w "$work/raw" "$root"
# Repaired apart from dist/, which may hold wheels of earlier builds.
"$venv/bin/auditwheel" repair --exclude libtensorflow_framework.so.2 \
  --exclude libtensorflow_cc.so.2 --exclude _pywrap_tensorflow_internal.so \
  -w "$work/repaired" "$work/raw"/costxent-*.whl
wheel=$(echo "$work/repaired"/costxent-*.whl)
"$venv/bin/auditwheel" show "$wheel"
mv -f "$wheel" "$root/dist/"
echo "build_wheels.sh: built dist/$(basename "$wheel") in $((SECONDS - start)) s"
