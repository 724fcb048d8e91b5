#!/usr/bin/env bash
# Reassembles the embedded sm_90 cubins on the device machine with its CUDA 13 ptxas (what its
# driver's JIT runs), from the committed PTX, and packs them for the trip back:
#
#   device call:  bash engine/cuda/scripts/cubins_on_device.sh
#   here, after:  tar -C engine/cuda/kernels -xJf <files_at>/cubins.tar.xz
#                 go test -run TestCubinsMatchPTX ./engine/cuda
#
# Why: a cubin from this machine's ptxas 11.8 ran the batch-1 decode ~1.5 µs a layer slower at
# context 8192 than the driver's JIT of the same PTX (session 21, NOTES.md); ptxas 13.0's cubins
# matched the JIT. gen_ptx.sh here still writes 11.8 cubins after a .cu edit, so run this before
# measuring or landing kernel changes.
set -euo pipefail
cd "$(dirname "$0")/../../.."
ptxas=${PTXAS:-/usr/local/cuda/bin/ptxas}
PTXAS=$ptxas bash engine/cuda/gen_ptx.sh --cubins >/dev/null
head -1 engine/cuda/kernels/cubins.sum
out=$(realpath "${OUT:-.}")
(cd engine/cuda/kernels && tar -cJf "$out/cubins.tar.xz" *.sm_90.cubin.gz cubins.sum)
echo "cubins: $out/cubins.tar.xz"
