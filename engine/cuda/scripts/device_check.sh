#!/usr/bin/env bash
# One device-machine call that checks and measures the GPU backend, for the session workflow in
# engine/cuda/NOTES.md: build here with `make cuda-carry` (binaries gzipped into .dev/carry, under
# the 64 MiB a call may carry), run there with carry [".dev/carry"]:
#
#   bash engine/cuda/scripts/device_check.sh [-t TEST_REGEX] [-f FIGURE_REGEX] [-b BENCH_ONLY]
#
#   -t  GPU tests to run (go test -run regex; default: all, -test.short)
#   -f  figure tests to run with QWENGO_CUDA_BENCH=1 (e.g. 'FiguresGEMV|FiguresGraph'; default none)
#   -b  qwenrepl bench workloads, qwengo side only (e.g. decode,optim; default none); for the
#       side-by-side with PyTorch use engine/bench/run.sh instead
#
# Everything goes to $OUT (the device tool brings it back): summary.txt — test verdicts, figure
# lines, bench figures — and all.log with the full output; two files, since a call returns a
# limited number. The summary is printed last.
set -u
cd "$(dirname "$0")/../../.."
tests='.' figs='' bench=''
while getopts "t:f:b:" o; do
	case $o in
	t) tests=$OPTARG ;;
	f) figs=$OPTARG ;;
	b) bench=$OPTARG ;;
	*) echo "usage: $0 [-t TEST_REGEX] [-f FIGURE_REGEX] [-b BENCH_ONLY]" >&2; exit 2 ;;
	esac
done
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT" .dev/gpu
export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
for f in .dev/carry/*.gz; do
	[ -e "$f" ] && gzip -dc "$f" >".dev/gpu/$(basename "$f" .gz)" && chmod +x ".dev/gpu/$(basename "$f" .gz)"
done
S=$OUT/summary.txt L=$OUT/all.log
: >"$S"
: >"$L"
T=$PWD/.dev/gpu/cuda.test
if [ ! -x "$T" ]; then
	echo "no .dev/gpu/cuda.test: run make cuda-carry (or make cuda-bins) first and carry it" | tee -a "$S"
	exit 1
fi
nvidia-smi --query-gpu=name,memory.used,memory.total,driver_version --format=csv,noheader >>"$S" 2>&1

if [ -n "$tests" ]; then
	(cd engine/cuda && timeout 500 "$T" -test.short -test.v -test.run "$tests") >/tmp/dc_tests.log 2>&1
	rc=$?
	cat /tmp/dc_tests.log >>"$L"
	echo "tests ($tests): rc=$rc, $(grep -c '^--- PASS' /tmp/dc_tests.log) passed, $(grep -c '^--- FAIL' /tmp/dc_tests.log) failed, $(grep -c '^--- SKIP' /tmp/dc_tests.log) skipped" >>"$S"
	grep -E '^--- FAIL|panic:' /tmp/dc_tests.log | head -20 >>"$S"
	grep -E -B3 '^--- FAIL' /tmp/dc_tests.log | grep -v '^--- ' | head -30 >>"$S"
fi
if [ -n "$figs" ]; then
	(cd engine/cuda && QWENGO_CUDA_BENCH=1 timeout 400 "$T" -test.v -test.run "$figs") >/tmp/dc_figs.log 2>&1
	echo "figures ($figs): rc=$?" >>"$S"
	cat /tmp/dc_figs.log >>"$L"
	grep -o 'figure .*' /tmp/dc_figs.log | cut -c1-160 >>"$S"
fi
if [ -n "$bench" ]; then
	timeout 500 .dev/gpu/qwenrepl bench --only "$bench" --json "$OUT/bench.json" >/dev/null 2>/tmp/dc_bench.log
	echo "bench ($bench): rc=$?" >>"$S"
	cat /tmp/dc_bench.log >>"$L"
	grep -E '^bench: [a-z0-9_]+: ' /tmp/dc_bench.log | cut -c1-200 >>"$S"
fi
cat "$S"
