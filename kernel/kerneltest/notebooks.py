"""Executes notebooks with the qwengo kernel through nbclient, as CI and `make notebooks` do.

    python3 notebooks.py [--write] [--timeout S] NOTEBOOK.ipynb ...

Every code cell must run without error and produce at least one output, unless its metadata
tags include "no-output". Parameters reach the notebooks through the environment (the kernel
inherits it): QWENGO_MODEL (model path; the notebooks default to the embedded model) and
QWENGO_QUICK=1 (reduced steps for CI). With --write the executed notebook replaces the file
(atomically), so its committed outputs come from this run.
"""
import argparse
import os
import sys
import tempfile
import time

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def check_outputs(nb, path):
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        tags = cell.get("metadata", {}).get("tags", [])
        outs = cell.get("outputs", [])
        errs = [o for o in outs if o.get("output_type") == "error"]
        if errs:
            problems.append(f"{path}: cell {i + 1}: {errs[0].get('ename')}: {errs[0].get('evalue')}")
        if not outs and "no-output" not in tags:
            problems.append(f"{path}: cell {i + 1} produced no output:\n{cell.source[:200]}")
    return problems


def run(path, timeout, write):
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="qwengo",
                            resources={"metadata": {"path": os.path.dirname(os.path.abspath(path))}})
    t0 = time.time()
    try:
        client.execute()
    except CellExecutionError as e:
        msg = str(e)
        print(f"FAIL {path}: {msg[:800]} … {msg[-1500:]}" if len(msg) > 2400 else f"FAIL {path}: {msg}", file=sys.stderr)
        return False
    problems = check_outputs(nb, path)
    for p in problems:
        print("FAIL", p, file=sys.stderr)
    print(f"{'ok  ' if not problems else 'FAIL'} {path} ({len(nb.cells)} cells, {time.time() - t0:.1f} s)")
    if write and not problems:
        d = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".nb-", suffix=".ipynb", dir=d)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            nbformat.write(nb, f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    return not problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="write the executed notebook back")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    ap.add_argument("notebooks", nargs="+")
    a = ap.parse_args()
    ok = all([run(p, a.timeout, a.write) for p in a.notebooks])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
