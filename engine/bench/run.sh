#!/usr/bin/env bash
# The side-by-side benchmark of issues 6 and 7, run on the GPU machine from the repository
# root in one call: qwengo (`qwenrepl bench`, built beforehand by `make cuda-bins` into
# .dev/gpu/) then PyTorch + transformers (engine/bench/peer.py), one after the other on the
# same GPU, then one markdown table of both, printed last.
#
#   bash engine/bench/run.sh [--layers N] [--quick] [--only decode,prefill,optim,train]
#
# The arguments go to both sides; QWENGO_ARGS adds arguments for qwengo's side only (e.g.
# QWENGO_ARGS="--lm-head nvfp4"). Output in $OUT (default: a new temporary directory):
# device.txt, qwengo.json + qwengo.log, peer.json + peer.log, table.md. Each side is bounded
# (QWENGO_SECONDS, PEER_SECONDS: no figure starts after that; timeout(1) interrupts it 90 s
# later and it still writes its report); a side that fails leaves the other's figures in the
# table.
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
BIN=${QWENREPL:-.dev/gpu/qwenrepl}
PY=${PYTHON:-python3}
QWENGO_SECONDS=${QWENGO_SECONDS:-270}
PEER_SECONDS=${PEER_SECONDS:-150}

{
	nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv 2>&1 || echo "nvidia-smi failed"
	echo "python: $($PY -c 'import sys, torch, transformers; print(sys.version.split()[0], "torch", torch.__version__, "transformers", transformers.__version__)' 2>&1 | tail -1)"
	echo "qwenrepl: $BIN ($(stat -c '%y' "$BIN" 2>/dev/null || echo missing))"
	echo "args: $*"
} >"$OUT/device.txt"
cat "$OUT/device.txt"

echo "== qwengo: $BIN bench $* (log: qwengo.log)"
start=$SECONDS
timeout -s INT -k 20 $((QWENGO_SECONDS + 90)) "$BIN" bench "$@" ${QWENGO_ARGS:-} --max-seconds "$QWENGO_SECONDS" \
	--json "$OUT/qwengo.json" >"$OUT/qwengo.md" 2>"$OUT/qwengo.log"
echo "qwengo: exit $? after $((SECONDS - start)) s"
tail -n 40 "$OUT/qwengo.log"

echo "== PyTorch: $PY engine/bench/peer.py $* (log: peer.log)"
start=$SECONDS
timeout -s INT -k 20 $((PEER_SECONDS + 90)) "$PY" engine/bench/peer.py "$@" --max-seconds "$PEER_SECONDS" \
	--json "$OUT/peer.json" 2>"$OUT/peer.log"
echo "peer: exit $? after $((SECONDS - start)) s"
tail -n 40 "$OUT/peer.log"

echo "== table"
if ! "$BIN" bench --combine --report "$OUT/qwengo.json" --peer "$OUT/peer.json" --markdown "$OUT/table.md" >/dev/null 2>"$OUT/combine.log"; then
	cat "$OUT/combine.log"
	# No usable Go binary or reports: show whatever the peer wrote.
	"$PY" - "$OUT/peer.json" >"$OUT/table.md" 2>&1 <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
print("PyTorch only (%s, %s)\n\n| figure | PyTorch |\n|---|---|" % (r.get("device"), r.get("software")))
for f in r.get("figures", []):
    v = ("%.4g" % f["value"]) if f.get("status") == "ok" else f.get("status")
    print("| %s (%s) | %s |" % (f.get("label"), f.get("unit"), v))
PYEOF
fi
cat "$OUT/combine.log" 2>/dev/null
echo
cat "$OUT/table.md"
