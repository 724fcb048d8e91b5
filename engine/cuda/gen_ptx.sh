#!/bin/bash
# Regenerates engine/cuda/kernels/*.ptx from the kernels/*.cu sources (nvcc -ptx -arch=sm_90).
# The .ptx files are committed and embedded (ptx.go), so building and running the GPU backend
# needs no nvcc; run this after editing a .cu file. NVCC overrides the compiler.
set -euo pipefail
cd "$(dirname "$0")/kernels"
nvcc=${NVCC:-nvcc}
for cu in *.cu; do
  out=${cu%.cu}.ptx
  tmp=$(mktemp ".${out}.XXXXXX")
  trap 'rm -f "$tmp"' EXIT
  "$nvcc" -ptx -arch=sm_90 -O3 -std=c++17 -o "$tmp" "$cu"
  chmod 644 "$tmp"
  mv "$tmp" "$out"
  trap - EXIT
  echo "gen_ptx: $out"
done
