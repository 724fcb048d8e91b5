"""Shared helpers for the qwengo kernel's Jupyter client tests.

The tests talk to a real `qwenkernel` through Debian's jupyter_client; run.sh
builds the binary, installs the kernelspec into a temporary JUPYTER_PATH and
runs pytest with /usr/bin/python3.
"""
import time
from queue import Empty

import pytest
from jupyter_client.manager import start_new_kernel

KERNEL_NAME = "qwengo"


@pytest.fixture(scope="module")
def kernel():
    km, kc = start_new_kernel(kernel_name=KERNEL_NAME, startup_timeout=60)
    try:
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def flush(kc, quiet=0.2):
    """Drop whatever is pending on shell and iopub."""
    for get in (kc.get_shell_msg, kc.get_iopub_msg):
        while True:
            try:
                get(timeout=quiet)
            except Empty:
                break


class Run:
    """The messages of one execute_request, with arrival times."""

    def __init__(self, msg_id, sent):
        self.msg_id = msg_id
        self.sent = sent
        self.reply = None
        self.reply_at = None
        self.iopub = []  # (time, msg)

    def of_type(self, msg_type):
        return [m for _, m in self.iopub if m["msg_type"] == msg_type]

    def stream(self, name="stdout"):
        return "".join(m["content"]["text"] for m in self.of_type("stream") if m["content"]["name"] == name)

    @property
    def status(self):
        return self.reply["content"]["status"]

    def result_text(self):
        res = self.of_type("execute_result")
        return res[0]["content"]["data"]["text/plain"] if res else None


def execute(kc, code, timeout=30, stdin_handler=None, **kwargs):
    """Send code and collect the reply and this request's iopub messages up
    to its idle status. stdin_handler(msg) answers input requests."""
    sent = time.monotonic()
    msg_id = kc.execute(code, **kwargs)
    run = Run(msg_id, sent)
    deadline = sent + timeout
    idle = False
    while not (idle and run.reply is not None):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no reply/idle within {timeout}s for {code!r}")
        if stdin_handler is not None:
            try:
                m = kc.get_stdin_msg(timeout=0.01)
                stdin_handler(m)
            except Empty:
                pass
        if run.reply is None:
            try:
                m = kc.get_shell_msg(timeout=0.01)
                if m["parent_header"].get("msg_id") == msg_id:
                    run.reply, run.reply_at = m, time.monotonic()
            except Empty:
                pass
        try:
            m = kc.get_iopub_msg(timeout=0.01)
        except Empty:
            continue
        if m["parent_header"].get("msg_id") != msg_id:
            continue
        run.iopub.append((time.monotonic(), m))
        if m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
            idle = True
    return run
