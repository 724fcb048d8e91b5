"""Execute round-trip benchmark: qwengo vs ipykernel, side by side.

Run with /usr/bin/python3 after installing the qwengo kernelspec (run.sh
bench does both). For each kernel it measures

  * `1+1`: time from sending execute_request to the idle status that ends
    the request (reply and result received), N runs after a warm-up;
    median and p99;
  * a cell printing 10,000 lines: time to idle with every line received,
    and how many stream messages carried them (median of R runs).

Usage: bench.py [--runs N] [--print-runs R] [--kernels qwengo,python3]
"""
import argparse
import statistics
import subprocess
import sys
import time
from queue import Empty

import os

import zmq
from jupyter_client.manager import start_new_kernel

CODE = {
    "qwengo": {"add": "1+1", "print": "for i := 0; i < 10000; i++ { fmt.Println(i) }"},
    "python3": {"add": "1+1", "print": "for i in range(10000): print(i)"},
}


def run_once(kc, code):
    """Returns (seconds to idle, stream messages, stdout text)."""
    shell, iopub = kc.shell_channel.socket, kc.iopub_channel.socket
    poller = zmq.Poller()
    poller.register(shell, zmq.POLLIN)
    poller.register(iopub, zmq.POLLIN)
    t0 = time.perf_counter()
    msg_id = kc.execute(code)
    streams, text, idle, replied = 0, [], False, False
    while not (idle and replied):
        ready = dict(poller.poll(60000))
        if not ready:
            raise TimeoutError(f"{code!r}: nothing for 60 s")
        while shell in ready and not replied:
            try:
                m = kc.get_shell_msg(timeout=0)
            except Empty:
                break
            if m["parent_header"].get("msg_id") == msg_id:
                replied = True
                if m["content"]["status"] != "ok":
                    raise RuntimeError(f"{code!r}: {m['content']}")
        while iopub in ready and not idle:
            try:
                m = kc.get_iopub_msg(timeout=0)
            except Empty:
                break
            if m["parent_header"].get("msg_id") != msg_id:
                continue
            if m["msg_type"] == "stream":
                streams += 1
                text.append(m["content"]["text"])
            elif m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
                idle = True
    return time.perf_counter() - t0, streams, "".join(text)


def pct(xs, p):
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))
    return xs[k]


def bench(kernel_name, runs, print_runs):
    # The kernels' own stderr (logs, debugger notes) would clutter the table.
    km, kc = start_new_kernel(kernel_name=kernel_name, startup_timeout=60, stderr=subprocess.DEVNULL)
    try:
        code = CODE[kernel_name]
        for _ in range(10):
            run_once(kc, code["add"])
        add = [run_once(kc, code["add"])[0] for _ in range(runs)]
        want = "".join(f"{i}\n" for i in range(10000))
        prints, msgs = [], []
        run_once(kc, code["print"])
        for _ in range(print_runs):
            t, n, text = run_once(kc, code["print"])
            if text != want:
                raise RuntimeError(f"{kernel_name}: 10k-line output incomplete ({len(text)} of {len(want)} bytes)")
            prints.append(t)
            msgs.append(n)
        return {
            "add_median": statistics.median(add), "add_p99": pct(add, 99),
            "print_median": statistics.median(prints), "print_msgs": statistics.median(msgs),
        }
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def main():
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # ipykernel's debugger notes
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--print-runs", type=int, default=5)
    ap.add_argument("--kernels", default="qwengo,python3")
    a = ap.parse_args()
    names = a.kernels.split(",")
    res = {n: bench(n, a.runs, a.print_runs) for n in names}
    rows = [
        ("1+1 round trip, median (ms)", "add_median", 1e3),
        ("1+1 round trip, p99 (ms)", "add_p99", 1e3),
        ("10k-line print, median (ms)", "print_median", 1e3),
        ("10k-line print, stream messages", "print_msgs", 1),
    ]
    label = {"qwengo": "qwengo", "python3": "ipykernel"}
    w = max(len(r[0]) for r in rows)
    print(f"{'':{w}}  " + "  ".join(f"{label.get(n, n):>10}" for n in names))
    for title, key, scale in rows:
        print(f"{title:{w}}  " + "  ".join(f"{res[n][key] * scale:>10.1f}" for n in names))
    print(f"({a.runs} runs of 1+1 after 10 warm-up runs; {a.print_runs} runs of the print cell; "
          f"time = execute_request sent until idle received)")


if __name__ == "__main__":
    sys.exit(main())
