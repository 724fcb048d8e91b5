#!/usr/bin/env python3
"""Count the warp instructions of one iteration of a kernel loop along its common path.

Usage (nvcc 11.8 on the development machine; no GPU needed):

    cd engine/cuda/kernels
    nvcc -cubin -arch=sm_90 -O3 -std=c++17 -DADAMW_COUNT -DADAMW_COUNT_SR=1 -o /tmp/train.cubin train.cu
    python3 ../scripts/sass_walk.py /tmp/train.cubin adamw_bf16_int8_gb 0

The walk starts at the target of the function's loop-th backward branch and follows the SASS
to that branch. At a conditional branch it takes the side that does not reach a PMTRIG (the
ADAMW_SLOW() marker of a -DADAMW_COUNT build, adamw.cuh) or a CALL first; when neither or both
do, it falls through (an if body the warp issues) and names the branch as ambiguous.

cuobjdump 11.8 prints no mnemonic for some sm_90 instructions (VIMNMX, the integer min/max,
among them): their addresses are missing from the listing. The walk counts each address skipped
between two consecutive instructions it executes as one such hidden instruction, so the total
is what the warp issues; session 11's counts missed them.
"""
import argparse
import re
import subprocess
import sys


def listing(cubin, fn):
    out = subprocess.run(["cuobjdump", "-sass", "-fun", fn, cubin], capture_output=True, text=True, check=True).stdout
    ins = []
    for line in out.splitlines():
        m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
        if m:
            ins.append((int(m.group(1), 16), m.group(2)))
    if not ins:
        sys.exit(f"sass_walk: no SASS for {fn} in {cubin}")
    return ins


def parse(text):
    pred = None
    m = re.match(r"(@!?U?P\w+)\s+(.*)", text)
    if m:
        pred, text = m.group(1), m.group(2)
    op = text.split()[0]
    targets = re.findall(r"0x[0-9a-f]+", text)
    return pred, op, text, (int(targets[-1], 16) if targets else None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cubin")
    ap.add_argument("function")
    ap.add_argument("loop", type=int, nargs="?", default=0, help="index of the backward branch (default 0)")
    ap.add_argument("--path", action="store_true", help="print the walked instructions")
    a = ap.parse_args()

    ins = listing(a.cubin, a.function)
    at = {addr: i for i, (addr, _) in enumerate(ins)}
    backs = []
    for i, (addr, t) in enumerate(ins):
        _, op, _, tgt = parse(t)
        if op == "BRA" and tgt is not None and tgt < addr:
            backs.append((i, tgt))
    if a.loop >= len(backs):
        sys.exit(f"sass_walk: {a.function} has {len(backs)} backward branches")
    end, start = backs[a.loop]

    def rare(i, depth=60):
        seen = 0
        while i < len(ins) and seen < depth:
            pred, op, t, tgt = parse(ins[i][1])
            if op in ("PMTRIG", "CALL.REL.NOINC", "CALL.REL", "CALL.ABS.NOINC"):
                return True
            if op == "BRA":
                if pred is None and "P" not in t.split()[1]:
                    i, seen = at[tgt], seen + 1
                    continue
                return False
            if op in ("EXIT", "BSYNC"):
                return False
            i, seen = i + 1, seen + 1
        return False

    i, n, hidden, ops, ambiguous, path = at[start], 0, 0, {}, [], []
    for _ in range(20000):
        addr, t = ins[i]
        pred, op, _, tgt = parse(t)
        n += 1
        ops[op.split(".")[0]] = ops.get(op.split(".")[0], 0) + 1
        path.append(f"{addr:05x}  {t}")
        if op == "PMTRIG":
            sys.exit(f"sass_walk: the walk met PMTRIG at {addr:x}")
        if op == "EXIT":
            sys.exit(f"sass_walk: the walk met EXIT at {addr:x} (mark the exit's branch with ADAMW_SLOW() to count)")
        if i == end:
            break
        nxt = i + 1
        if op == "BRA":
            cond = pred is not None or re.match(r"BRA\s+!?U?P", t)
            if not cond:
                nxt = at[tgt]
            else:
                taken_rare, fall_rare = rare(at[tgt]), rare(i + 1)
                if taken_rare == fall_rare:
                    ambiguous.append(f"{addr:x}")
                elif fall_rare:
                    nxt = at[tgt]
        if nxt == i + 1 and nxt < len(ins):
            gap = (ins[nxt][0] - addr) // 16 - 1
            hidden += gap
            ops["(hidden)"] = ops.get("(hidden)", 0) + gap
        i = nxt
    else:
        sys.exit("sass_walk: no end after 20000 instructions")
    if a.path:
        print("\n".join(path))
    print(f"{a.function} loop {a.loop} [{ins[at[start]][0]:x}..{ins[end][0]:x}]: {n + hidden} warp instructions an "
          f"iteration ({hidden} of them unprinted by cuobjdump); ambiguous branches (fell through): {ambiguous}")
    print(sorted(ops.items(), key=lambda kv: -kv[1]))


if __name__ == "__main__":
    main()
