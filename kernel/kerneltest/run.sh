#!/usr/bin/env bash
# Jupyter client tests for the qwengo kernel (the lead's .ci/run calls this
# through `make test-kernel`).
#
#   kernel/kerneltest/run.sh [pytest args...]   conformance + client tests
#   kernel/kerneltest/run.sh bench [bench args] qwengo vs ipykernel benchmark
#   kernel/kerneltest/run.sh notebooks [--write] NB.ipynb...  execute notebooks (nbclient)
#
# Builds qwenkernel, installs the kernelspec into a temporary Jupyter data
# dir (JUPYTER_PATH/JUPYTER_DATA_DIR point there, so nothing of the user's is
# touched), then runs the tests with /usr/bin/python3, which has Debian's
# python3-jupyter-client, python3-jupyter-kernel-test, python3-nbclient and
# python3-ipykernel (the python3 first on PATH may be a shim without them).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-/usr/bin/python3}
GO=${GO:-go}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export JUPYTER_DATA_DIR="$tmp/data" JUPYTER_PATH="$tmp/data" \
       JUPYTER_CONFIG_DIR="$tmp/config" JUPYTER_RUNTIME_DIR="$tmp/runtime" \
       IPYTHONDIR="$tmp/ipython" JUPYTER_PLATFORM_DIRS=0
# The kernels' input history goes to the temp dir, not the user's.
export QWENGO_HISTORY="$tmp/kernel_history.jsonl" PYTHONUNBUFFERED=1

"$GO" build -o "$tmp/bin/qwenkernel" ./kernel/cmd/qwenkernel
"$GO" run ./install --binary "$tmp/bin/qwenkernel"

if [[ "${1:-}" == notebooks ]]; then
  shift
  "$PY" kernel/kerneltest/notebooks.py "$@"
  exit
fi
if [[ "${1:-}" == bench ]]; then
  shift
  "$PY" kernel/kerneltest/bench.py "$@"
  exit
fi
cd kernel/kerneltest
"$PY" -m pytest -p no:cacheprovider -v "$@"
