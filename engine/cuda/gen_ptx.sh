#!/bin/bash
# Regenerates engine/cuda/kernels/*.ptx from the kernels/*.cu sources (nvcc -ptx -arch=sm_90),
# then each PTX's sm_90 machine code (ptxas -arch=sm_90 -O3 → *.sm_90.cubin.gz) and cubins.sum,
# the SHA-256 of every PTX its cubin was assembled from. All are committed and embedded (ptx.go),
# so building and running the GPU backend needs no nvcc, and an H100/H200 loads the cubins
# without the driver's JIT (31-36 s on a fresh H200's first open); other GPUs JIT the PTX. Run this
# after editing a .cu file. NVCC and PTXAS override the compilers; --cubins keeps the PTX and
# only reassembles the cubins (with another ptxas: PTXAS=/usr/local/cuda/bin/ptxas on the device
# machine, whose CUDA 13 ptxas is what its driver's JIT runs).
set -euo pipefail
export LC_ALL=C # the same order of files (and so the same cubins.sum) everywhere
cd "$(dirname "$0")/kernels"
nvcc=${NVCC:-nvcc}
cubins_only=0
[ "${1:-}" = --cubins ] && cubins_only=1
for cu in *.cu; do
  [ $cubins_only = 1 ] && break
  out=${cu%.cu}.ptx
  tmp=$(mktemp ".${out}.XXXXXX")
  trap 'rm -f "$tmp"' EXIT
  "$nvcc" -ptx -arch=sm_90 -O3 -std=c++17 -o "$tmp" "$cu"
  chmod 644 "$tmp"
  mv "$tmp" "$out"
  trap - EXIT
  echo "gen_ptx: $out"
done

# The cubins: assembled from the PTX just written, in parallel (~30 s on 2 cores), each written
# atomically; the sums last, so a failed run leaves the old sums and TestCubinsMatchPTX fails.
ptxas=${PTXAS:-$(dirname "$(command -v "$nvcc")")/ptxas}
export ptxas
# They are stored gzipped (-n: no name or time, so the same cubin gives the same bytes): a
# quarter of the size in the repository and in every build.
ls *.ptx | xargs -P "$(nproc)" -I{} bash -c '
  set -euo pipefail
  out=$(basename {} .ptx).sm_90.cubin.gz
  tmp=$(mktemp ".${out}.XXXXXX")
  if ! "$ptxas" -arch=sm_90 -O3 -o "$tmp.cubin" {}; then rm -f "$tmp" "$tmp.cubin"; exit 1; fi
  gzip -9 -n -c "$tmp.cubin" >"$tmp"; rm -f "$tmp.cubin"
  chmod 644 "$tmp"; mv "$tmp" "$out"; echo "gen_ptx: $out"'
tmp=$(mktemp .cubins.sum.XXXXXX)
{ echo "# ptxas: $("$ptxas" --version | grep -o "release [0-9.]*, V[0-9.]*")"; sha256sum *.ptx; } >"$tmp"
chmod 644 "$tmp"
mv "$tmp" cubins.sum
echo "gen_ptx: cubins.sum"
case $(head -1 cubins.sum) in
*"release 1"[3-9]*) ;;
*) echo "gen_ptx: note: these cubins come from $(head -1 cubins.sum | cut -c3-); ptxas 11.8's code ran" \
	"the decode ~2 % slower than CUDA 13's (NOTES.md, session 21): reassemble them on the device with" \
	"engine/cuda/scripts/cubins_on_device.sh before landing" >&2 ;;
esac
