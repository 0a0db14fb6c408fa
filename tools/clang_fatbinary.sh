#!/usr/bin/env bash
# The fatbinary clang calls when it compiles CUDA: clang passes the old option spelling
# (--image=profile=sm_80,file=X for SASS, profile=compute_80 for PTX), which the fatbinary
# on the package index (CUDA 13's: the CUDA 12 packages ship none) only knows as --image3.
# It packs the CUDA 12 ptxas output as it is. FATBINARY names the real one.
set -euo pipefail
args=()
for arg in "$@"; do
  if [[ $arg =~ ^--image=profile=(sm|compute)_([0-9]+[a-z]?),file=(.*)$ ]]; then
    kind=elf
    [ "${BASH_REMATCH[1]}" = compute ] && kind=ptx
    args+=("--image3=kind=$kind,sm=${BASH_REMATCH[2]},file=${BASH_REMATCH[3]}")
  else
    args+=("$arg")
  fi
done
exec "${FATBINARY:?FATBINARY names the fatbinary to run}" "${args[@]}"
