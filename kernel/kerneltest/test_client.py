"""Client-level behaviour of the qwengo kernel beyond the conformance suite:
streaming while a cell runs, interrupts, stdin, forged messages, panics in
goroutines, captured file-descriptor output, stop_on_error, notebooks run by
nbclient / jupyter-execute, and jupyter-console."""
import json
import os
import signal
import subprocess
import sys
import time
from queue import Empty

import nbformat
import pytest
import zmq
from jupyter_client.session import Session

from conftest import KERNEL_NAME, execute, flush


def test_kernel_info(kernel):
    km, kc = kernel
    flush(kc)
    kc.kernel_info()
    reply = kc.get_shell_msg(timeout=10)
    c = reply["content"]
    assert c["status"] == "ok"
    assert c["implementation"] == "qwengo"
    assert c["implementation_version"]
    li = c["language_info"]
    assert li["name"] == "go"
    assert li["mimetype"] == "text/x-go"
    assert li["file_extension"] == ".go"
    assert li["pygments_lexer"] == "go"
    assert li["codemirror_mode"] == "go"
    assert li["version"][0].isdigit()
    # The banner names the engine's device: the CPU without a GPU.
    banner = c["banner"].lower()
    assert "cpu" in banner or "gpu" in banner or "nvidia" in banner, c["banner"]
    assert reply["header"]["version"] >= "5.3"


def test_heartbeat(kernel):
    km, kc = kernel
    assert km.is_alive()
    time.sleep(1.5)
    assert kc.hb_channel.is_beating()


def test_state_persists_across_cells(kernel):
    km, kc = kernel
    flush(kc)
    assert execute(kc, "persisted := 20").status == "ok"
    assert execute(kc, "func twice(v int) int { return 2 * v }").status == "ok"
    r = execute(kc, "twice(persisted) + 2")
    assert r.status == "ok"
    assert r.result_text() == "42"
    assert r.reply["content"]["execution_count"] == r.of_type("execute_result")[0]["content"]["execution_count"]


def test_history_lines_follow_execution_count(kernel):
    km, kc = kernel
    flush(kc)
    n = execute(kc, "hx := 1").reply["content"]["execution_count"]
    assert execute(kc, "hx = 2", silent=True).reply["content"]["execution_count"] == n
    assert execute(kc, "hx = 3", store_history=False).reply["content"]["execution_count"] == n
    r = execute(kc, "hx + 1")
    assert r.reply["content"]["execution_count"] == n + 1
    assert r.result_text() == "4"  # the unrecorded cells ran
    kc.history(hist_access_type="tail", n=2, output=False, raw=True)
    h = kc.get_shell_msg(timeout=10)["content"]["history"]
    assert [(line, src) for _, line, src in h] == [(n, "hx := 1"), (n + 1, "hx + 1")]


def test_execute_reply_metadata_has_wall_time(kernel):
    km, kc = kernel
    r = execute(kc, "time.Sleep(200 * time.Millisecond)")
    assert r.status == "ok"
    md = r.reply["metadata"]
    assert md["wall_time"] >= 0.19, md


def test_output_arrives_before_slow_cell_ends(kernel):
    km, kc = kernel
    flush(kc)
    code = 'for i := 0; i < 3; i++ { fmt.Println("tick", i); time.Sleep(700 * time.Millisecond) }'
    r = execute(kc, code)
    assert r.status == "ok"
    streams = [(t, m) for t, m in r.iopub if m["msg_type"] == "stream"]
    assert streams, "no stream output"
    first_t, first = streams[0]
    assert "tick 0" in first["content"]["text"]
    # The first line was on the client long before the cell finished.
    assert first_t - r.sent < 1.0, first_t - r.sent
    assert r.reply_at - first_t > 1.0
    assert r.stream() == "tick 0\ntick 1\ntick 2\n"


@pytest.mark.parametrize("pr", ['fmt.Println("%s")', 'os.Stdout.WriteString("%s\\n")'], ids=["interpreted", "fd1"])
def test_output_order_print_display_print(kernel, pr):
    km, kc = kernel
    r = execute(kc, (pr % "a") + '\ndisplay.HTML("<b>b</b>")\n' + (pr % "c"))
    assert r.status == "ok", r.reply["content"]
    seq = [m["content"].get("text", "<display>") for _, m in r.iopub if m["msg_type"] in ("stream", "display_data")]
    assert seq == ["a\n", "<display>", "c\n"], seq


def test_interpreted_and_fd_output_keep_order(kernel):
    km, kc = kernel
    flush(kc)
    r = execute(kc, 'for i := 0; i < 300; i++ {\n'
                    '  fmt.Println("interp", i)\n'
                    '  os.Stdout.WriteString(fmt.Sprintf("fd %d\\n", i))\n'
                    '}')
    assert r.status == "ok", r.reply["content"]
    assert r.stream() == "".join(f"interp {i}\nfd {i}\n" for i in range(300))


@pytest.mark.parametrize("printer", ["fmt.Println(i)", "os.Stdout.WriteString(strconv.Itoa(i) + \"\\n\")"],
                         ids=["interpreted", "fd1"])
def test_many_lines_neither_flood_nor_lose(kernel, printer):
    km, kc = kernel
    flush(kc)
    code = 'import "strconv"\nfor i := 0; i < 100000; i++ { ' + printer + ' }'
    r = execute(kc, code, timeout=120)
    assert r.status == "ok"
    out = r.stream()
    lines = out.split("\n")
    assert lines[-1] == ""
    assert lines[:-1] == [str(i) for i in range(100000)]
    n = len(r.of_type("stream"))
    assert n < 2000, f"{n} stream messages for 100k lines"


def test_output_written_to_fd_by_compiled_code(kernel):
    km, kc = kernel
    # os.Stdout/os.Stderr are the process's descriptors 1 and 2 (the
    # session routes only fmt.Print* and log to the cell's IO directly).
    r = execute(kc, 'os.Stdout.WriteString("raw fd one\\n")\nos.Stderr.Write([]byte("raw fd two\\n"))')
    assert r.status == "ok", r.reply["content"]
    assert "raw fd one\n" in r.stream("stdout")
    assert "raw fd two\n" in r.stream("stderr")
    # A child process inheriting the descriptors.
    r = execute(kc, 'import "os/exec"\ncmd := exec.Command("sh", "-c", "echo from child")\ncmd.Stdout = os.Stdout\ncmd.Run()')
    assert r.status == "ok", r.reply["content"]
    assert "from child\n" in r.stream("stdout")


def test_error_has_traceback(kernel):
    km, kc = kernel
    r = execute(kc, "undefinedName + 1")
    assert r.status == "error"
    errs = r.of_type("error")
    assert len(errs) == 1
    tb = errs[0]["content"]["traceback"]
    assert isinstance(tb, list) and tb and all(isinstance(x, str) for x in tb)
    assert r.reply["content"]["traceback"] == tb
    # the kernel is fine afterwards
    assert execute(kc, "1 + 1").result_text() == "2"


def test_panic_in_cell(kernel):
    km, kc = kernel
    r = execute(kc, 'panic("cell panic")')
    assert r.status == "error"
    assert "cell panic" in r.reply["content"]["evalue"] + "".join(r.reply["content"]["traceback"])
    assert execute(kc, "1 + 2").result_text() == "3"


def test_panicking_goroutine_survives(kernel):
    km, kc = kernel
    flush(kc)
    execute(kc, "survivor := 7")
    r = execute(kc, 'go func() { panic("boom in goroutine") }()\ntime.Sleep(300 * time.Millisecond)')
    time.sleep(0.5)
    assert km.is_alive()
    r2 = execute(kc, "survivor * 6")
    assert r2.status == "ok"
    assert r2.result_text() == "42"
    # The panic was reported with its message (in that cell or the next).
    assert "boom in goroutine" in r.stream("stderr") + r2.stream("stderr")


def _interrupt_then_continue(kernel, code, how):
    km, kc = kernel
    flush(kc)
    assert execute(kc, "counter := 0").status == "ok"
    msg_id = kc.execute(code)
    time.sleep(1.0)  # let it get going
    t0 = time.monotonic()
    if how == "message":
        km.interrupt_kernel()
    else:
        km.signal_kernel(signal.SIGINT)
    deadline = t0 + 10
    reply = None
    while reply is None:
        m = kc.get_shell_msg(timeout=max(0.01, deadline - time.monotonic()))
        if m["parent_header"].get("msg_id") == msg_id:
            reply = m
    took = time.monotonic() - t0
    assert took < 2.0, f"interrupt took {took:.2f}s"
    assert reply["content"]["status"] == "error"
    flush(kc)
    r = execute(kc, "counter >= 0")
    assert r.status == "ok" and r.result_text() == "true", r.reply["content"]
    return took


@pytest.mark.parametrize("how", ["message", "signal"])
def test_interrupt_busy_loop(kernel, how):
    _interrupt_then_continue(kernel, "for { counter++ }", how)


@pytest.mark.parametrize("how", ["message", "signal"])
def test_interrupt_sleep(kernel, how):
    _interrupt_then_continue(kernel, "time.Sleep(time.Hour)", how)


def test_stdin_round_trip(kernel):
    km, kc = kernel
    flush(kc)
    prompts = []

    def answer(m):
        assert m["msg_type"] == "input_request"
        prompts.append(m["content"])
        kc.input("gopher")

    r = execute(kc, 'var name string\nfmt.Print("name? ")\nfmt.Scanln(&name)\nfmt.Println("hello", name)',
                stdin_handler=answer, allow_stdin=True)
    assert r.status == "ok", r.reply["content"]
    assert prompts, "no input_request"
    assert "hello gopher" in r.stream()


def test_stdin_not_allowed_fails_cleanly(kernel):
    km, kc = kernel
    flush(kc)
    r = execute(kc, 'var s string\n_, err := fmt.Scanln(&s)\nfmt.Println("err:", err)', allow_stdin=False)
    # The read fails with the kernel's explanation; no input_request, no hang.
    assert r.status == "ok", r.reply["content"]
    assert "allow_stdin false" in r.stream(), r.stream()


def test_forged_and_unsigned_messages_ignored(kernel):
    km, kc = kernel
    flush(kc)
    info = km.get_connection_info()
    ctx = zmq.Context.instance()
    url = f"{info['transport']}://{info['ip']}:{info['shell_port']}"
    for key in (b"not-the-key", b""):
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(url)
        forger = Session(key=key)
        msg = forger.msg("execute_request", {"code": 'forgedVar := 1\nfmt.Println("FORGED")', "silent": False,
                                             "store_history": True, "user_expressions": {},
                                             "allow_stdin": False, "stop_on_error": True})
        forger.send(sock, msg)
        # also plain garbage frames
        sock.send_multipart([b"<IDS|MSG>", b"", b"{", b"{}", b"{}", b"{}"])
        sock.send_multipart([b"junk"])
        assert sock.poll(1000) == 0, "kernel replied to a forged message"
        sock.close()
    # Nothing was executed, nothing printed, the kernel still answers.
    r = execute(kc, "fmt.Println(forgedVar)")
    assert r.status == "error"
    assert "FORGED" not in r.stream()
    assert execute(kc, "1 + 1").result_text() == "2"


def test_stop_on_error_aborts_queued(kernel):
    km, kc = kernel
    flush(kc)
    first = kc.execute('time.Sleep(500 * time.Millisecond)\npanic("first fails")')
    second = kc.execute('fmt.Println("second ran")')
    replies = {}
    deadline = time.monotonic() + 20
    while len(replies) < 2 and time.monotonic() < deadline:
        m = kc.get_shell_msg(timeout=20)
        pid = m["parent_header"].get("msg_id")
        if pid in (first, second):
            replies[pid] = m["content"]
    assert replies[first]["status"] == "error"
    assert replies[second]["status"] == "aborted"
    flush(kc)
    assert execute(kc, "1 + 1").result_text() == "2"


def _notebook(path, cells):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "Go (qwengo)", "language": "go"}
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, str(path))
    return nb


def test_nbclient_runs_notebook(tmp_path):
    from nbclient import NotebookClient

    nb = _notebook(tmp_path / "nb.ipynb", ['x := 21', 'x * 2', 'fmt.Println("hi from a notebook")'])
    NotebookClient(nb, timeout=60, kernel_name=KERNEL_NAME).execute()
    assert nb.cells[1].outputs[0]["output_type"] == "execute_result"
    assert nb.cells[1].outputs[0]["data"]["text/plain"] == "42"
    assert nb.cells[1].execution_count == 2
    assert nb.cells[2].outputs[0]["text"] == "hi from a notebook\n"


def test_jupyter_execute(tmp_path):
    ok = tmp_path / "ok.ipynb"
    _notebook(ok, ['s := "go"', 'strings.ToUpper(s)', 'fmt.Println(len(s))'])
    p = subprocess.run(["jupyter-execute", "--kernel_name=" + KERNEL_NAME, str(ok)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    bad = tmp_path / "bad.ipynb"
    _notebook(bad, ['y := 1', 'y +* 2'])
    p = subprocess.run(["jupyter-execute", "--kernel_name=" + KERNEL_NAME, str(bad)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0


def test_jupyter_console():
    p = subprocess.run(["jupyter-console", "--kernel", KERNEL_NAME, "--simple-prompt"],
                       input='x := 6\nx * 7\nfmt.Println("from console")\n',
                       capture_output=True, text=True, timeout=120)
    assert "Out[2]: 42" in p.stdout, p.stdout + p.stderr
    assert "from console" in p.stdout
    assert "shut down" in p.stderr  # the kernel's log: a clean shutdown_request


def test_model_load_shows_progress_and_stays_resident(kernel):
    km, kc = kernel
    tiny = os.path.join(os.path.dirname(__file__), "..", "..", "engine", "qwen3", "testdata", "tiny-tied")
    r = execute(kc, 'tinyModel, loadErr := engine.Load(%s)\nfmt.Println(loadErr)' % json.dumps(os.path.abspath(tiny)))
    assert r.status == "ok", r.reply
    bars = [m for _, m in r.iopub if m["msg_type"] in ("display_data", "update_display_data")]
    assert bars, "no progress display"
    assert all("transient" in m["content"] and m["content"]["transient"].get("display_id") for m in bars)
    assert "100%" in bars[-1]["content"]["data"]["text/plain"]
    assert "<progress" in bars[-1]["content"]["data"]["text/html"]
    # the model stays loaded for the next cell
    r = execute(kc, "g, _ := tinyModel.GenerateIDs([]int{1, 2, 3}, engine.GenerateOptions{MaxTokens: 4})\nlen(g.IDs)")
    assert r.status == "ok", r.reply
    assert r.result_text() == "4"
