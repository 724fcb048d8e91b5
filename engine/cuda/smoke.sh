#!/bin/bash
# GPU smoke through the product, run on the device machine after `make cuda-bins` (carry .dev/gpu):
# the same greedy generation on the CPU and on the GPU, then the op and model parity tests.
# Writes gen_{cpu,cuda}.json to $OUT (or /tmp).
OUT=${OUT:-/tmp}
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
cd "$(dirname "$0")/../.."
for b in cpu cuda; do
  QWENGO_BACKEND=$b .dev/gpu/qwenrepl generate --model engine/qwen3/testdata/tiny-tied --ids 5,17,300,2,99 --max-tokens 64 --json > $OUT/gen_$b.json 2>$OUT/gen_$b.err
  echo "$b rc=$? $(python3 -c "import json;d=json.load(open('$OUT/gen_$b.json'));print(d['device'], 'decode tok/s', round(d['decode_tokens_per_sec'],1), 'ids', d['ids'][:12])")"
done
python3 -c "
import json
a=json.load(open('$OUT/gen_cpu.json'));b=json.load(open('$OUT/gen_cuda.json'))
print('64 greedy ids identical cpu vs cuda:', a['ids']==b['ids'])"
QWENGO_BACKEND=cuda .dev/gpu/qwenrepl -e 'engine.Device()' 2>&1 | tail -2
(cd engine/cuda && ../../.dev/gpu/cuda.test -test.short -test.run 'Model|Parity|Budget' 2>&1 | tail -3)
