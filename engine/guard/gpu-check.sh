#!/usr/bin/env bash
# The memory guard on a real GPU: the budget refusing an allocation (the session and model
# staying usable), the watchdog cancelling a runaway engine call over cuMemGetInfo, and the
# CUDA backend's DeviceUsage answering while its owner goroutine is busy.
#
#   bash engine/guard/gpu-check.sh build   # here (CUDA headers): test binaries + qwenrepl in .dev/gpu
#   bash engine/guard/gpu-check.sh run     # on the GPU machine (carry .dev/gpu)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=.dev/gpu
case "${1:-}" in
build)
	bash ../shared/scripts/cuda-dev-setup.sh
	mkdir -p "$out"
	go test -tags cuda -c -o "$out/engine.test" ./engine
	go test -tags cuda -c -o "$out/cuda.test" ./engine/cuda
	go build -tags cuda -o "$out/" ./kernel/cmd/qwenrepl
	;;
run)
	export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
	root=$PWD
	rc=0
	(cd engine/cuda && "$root/$out/cuda.test" -test.v -test.count=1 -test.run '^(TestDeviceUsage|TestOpenAndName)$') || rc=1
	(cd engine && QWENGO_BACKEND=cuda "$root/$out/engine.test" -test.v -test.count=1 \
		-test.run '^(TestBudgetRefusesAndRecovers|TestWatchdogCancelsRunawayCall|TestWatchdogOnDevice|TestConfigureGuard|TestGuardError)$') || rc=1
	# End to end through the console binary: the banner's budget, a refused load, %mem's report.
	tiny=$root/engine/qwen3/testdata/tiny-tied
	QWENGO_BACKEND=cuda "$out/qwenrepl" --gpu-limit-gb 0.0001 -e "_, err := engine.Load(\"$tiny\")
fmt.Println(err)
engine.SetMemoryLimit(0)
m, err := engine.Load(\"$tiny\")
fmt.Println(\"after raising the limit:\", err, m != nil)
engine.MemoryReport()" || rc=1
	exit $rc
	;;
*)
	echo "usage: $0 build|run" >&2
	exit 2
	;;
esac
