package kernel

import (
	"context"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/qwengo/qwengo/kernel/wire"
)

func TestKernelInfo(t *testing.T) {
	old := DeviceName
	DeviceName = func() string { return "NVIDIA H200 (139 GiB)" }
	defer func() { DeviceName = old }()
	h := start(t, nil)
	for _, sock := range []struct {
		name string
		s    zmq4.Socket
		ch   chan *wire.Message
	}{{"shell", h.c.shell, h.c.shellCh}, {"control", h.c.control, h.c.controlCh}} {
		t.Run(sock.name, func(t *testing.T) {
			req := h.c.send(sock.s, "kernel_info_request", nil)
			rep := h.c.reply(req, sock.ch, 5*time.Second)
			c := content(rep)
			li := c["language_info"].(map[string]any)
			want := map[string]any{"name": "go", "mimetype": "text/x-go", "file_extension": ".go",
				"pygments_lexer": "go", "codemirror_mode": "go", "version": strings.TrimPrefix(runtime.Version(), "go")}
			for k, v := range want {
				if li[k] != v {
					t.Errorf("language_info.%s = %v, want %v", k, li[k], v)
				}
			}
			if c["status"] != "ok" || c["implementation"] != "qwengo" || c["implementation_version"] != Version ||
				c["protocol_version"] != wire.ProtocolVersion {
				t.Errorf("kernel_info %v", c)
			}
			if !strings.Contains(c["banner"].(string), "NVIDIA H200 (139 GiB)") {
				t.Errorf("banner %q does not name the device", c["banner"])
			}
			if rep.Header.Session != h.k.SessionID() || rep.Header.Version != "5.4" {
				t.Errorf("header %+v", rep.Header)
			}
			io := h.c.untilIdle(req, 5*time.Second)
			if got := types(io); !reflect.DeepEqual(got, []string{"status:busy", "status:idle"}) {
				t.Errorf("iopub %v", got)
			}
		})
	}
}

func TestExecuteOrderAndCount(t *testing.T) {
	h := start(t, nil)
	rep, io := h.c.execute(map[string]any{"code": "print hello\neprint warn\nresult 42"})
	if got, want := types(io), []string{"status:busy", "execute_input", "stream", "stream", "execute_result", "status:idle"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("iopub %v, want %v", got, want)
	}
	c := content(rep)
	if c["status"] != "ok" || c["execution_count"] != 1.0 {
		t.Fatalf("reply %v", c)
	}
	if r := content(io[4]); r["execution_count"] != 1.0 || r["data"].(map[string]any)["text/plain"] != "42" {
		t.Errorf("execute_result %v", r)
	}
	if in := content(io[1]); in["code"] != "print hello\neprint warn\nresult 42" || in["execution_count"] != 1.0 {
		t.Errorf("execute_input %v", in)
	}
	if out, _ := streamText(io, "stdout"); out != "hello\n" {
		t.Errorf("stdout %q", out)
	}
	if md := metadata(rep); md["status"] != "ok" || md["wall_time"] == nil || md["started"] == nil {
		t.Errorf("metadata %v", md)
	}
	// silent: nothing published but status, no count; store_history false: no count.
	rep, io = h.c.execute(map[string]any{"code": "print quiet\nresult 1", "silent": true})
	if got := types(io); !reflect.DeepEqual(got, []string{"status:busy", "status:idle"}) {
		t.Errorf("silent iopub %v", got)
	}
	if content(rep)["execution_count"] != 1.0 {
		t.Errorf("silent advanced the count: %v", content(rep))
	}
	rep, _ = h.c.execute(map[string]any{"code": "print x", "store_history": false})
	if content(rep)["execution_count"] != 1.0 {
		t.Errorf("store_history false advanced the count: %v", content(rep))
	}
	h.fake.mu.Lock()
	opts := append([]ExecOptions(nil), h.fake.opts...)
	h.fake.mu.Unlock()
	if want := []ExecOptions{{true}, {false}, {false}}; !reflect.DeepEqual(opts[len(opts)-3:], want) {
		t.Errorf("ExecOptions %v, want %v", opts[len(opts)-3:], want)
	}
	rep, _ = h.c.execute(map[string]any{"code": "peak 12345"})
	if content(rep)["execution_count"] != 2.0 || metadata(rep)["peak_device_memory"] != 12345.0 {
		t.Errorf("reply %v metadata %v", content(rep), metadata(rep))
	}
}

func TestExecuteErrors(t *testing.T) {
	h := start(t, nil)
	tests := []struct {
		code, ename string
		tbFirst     string
	}{
		{"error undefined: x", "CompileError", "cell:1:1: undefined: x"},
		{"plainerror", "Error", "plain failure"},
		{"panic", "panic", "panic in the interpreter: fake interpreter bug"},
		{"nan", "", ""}, // unencodable result: stderr note, status ok
	}
	for _, tt := range tests {
		t.Run(tt.code, func(t *testing.T) {
			rep, io := h.c.execute(map[string]any{"code": tt.code})
			c := content(rep)
			if tt.ename == "" {
				if errText, _ := streamText(io, "stderr"); c["status"] != "ok" || !strings.Contains(errText, "could not be encoded") {
					t.Fatalf("reply %v stderr %q", c, errText)
				}
				return
			}
			if c["status"] != "error" || c["ename"] != tt.ename {
				t.Fatalf("reply %v", c)
			}
			var errMsg map[string]any
			for _, m := range io {
				if m.Header.MsgType == "error" {
					errMsg = content(m)
				}
			}
			if errMsg == nil {
				t.Fatalf("no error message in %v", types(io))
			}
			tb, ok := errMsg["traceback"].([]any)
			if !ok || len(tb) == 0 || tb[0] != tt.tbFirst {
				t.Fatalf("traceback %v", errMsg["traceback"])
			}
			if md := metadata(rep); md["status"] != "error" {
				t.Errorf("metadata %v", md)
			}
		})
	}
	// The kernel survived all of it.
	rep, _ := h.c.execute(map[string]any{"code": "print alive"})
	if content(rep)["status"] != "ok" {
		t.Fatal("kernel not usable after errors")
	}
}

func TestStopOnError(t *testing.T) {
	for _, stop := range []bool{true, false} {
		t.Run(map[bool]string{true: "stop", false: "continue"}[stop], func(t *testing.T) {
			h := start(t, nil)
			r1 := h.c.send(h.c.shell, "execute_request", map[string]any{"code": "sleep 100ms\nerror boom", "stop_on_error": stop})
			r2 := h.c.send(h.c.shell, "execute_request", map[string]any{"code": "print second"})
			r3 := h.c.send(h.c.shell, "kernel_info_request", nil)
			r4 := h.c.send(h.c.shell, "execute_request", map[string]any{"code": "print third"})
			if s := content(h.c.reply(r1, h.c.shellCh, 5*time.Second))["status"]; s != "error" {
				t.Fatalf("first %v", s)
			}
			want := "ok"
			if stop {
				want = "aborted"
			}
			if s := content(h.c.reply(r2, h.c.shellCh, 5*time.Second))["status"]; s != want {
				t.Errorf("second %v, want %v", s, want)
			}
			if s := content(h.c.reply(r3, h.c.shellCh, 5*time.Second))["status"]; s != "ok" {
				t.Errorf("kernel_info while aborting: %v", s)
			}
			if s := content(h.c.reply(r4, h.c.shellCh, 5*time.Second))["status"]; s != want {
				t.Errorf("third %v, want %v", s, want)
			}
			// After the queue drained, executes run again.
			time.Sleep(20 * time.Millisecond)
			rep, _ := h.c.execute(map[string]any{"code": "print later"})
			if content(rep)["status"] != "ok" {
				t.Errorf("after abort: %v", content(rep))
			}
		})
	}
}

func TestInterrupt(t *testing.T) {
	h := start(t, nil)
	req := h.c.send(h.c.shell, "execute_request", map[string]any{"code": "print before\nsleep 1h"})
	<-h.fake.executing
	// Control is answered while the cell runs.
	ki := h.c.send(h.c.control, "kernel_info_request", nil)
	h.c.reply(ki, h.c.controlCh, 2*time.Second)
	t0 := time.Now()
	ir := h.c.send(h.c.control, "interrupt_request", nil)
	if c := content(h.c.reply(ir, h.c.controlCh, 2*time.Second)); c["status"] != "ok" {
		t.Fatalf("interrupt_reply %v", c)
	}
	rep := h.c.reply(req, h.c.shellCh, 2*time.Second)
	if d := time.Since(t0); d > 2*time.Second {
		t.Errorf("interrupt took %v", d)
	}
	if c := content(rep); c["status"] != "error" || c["ename"] != "Interrupted" {
		t.Errorf("reply %v", c)
	}
	if h.fake.interrupts != 1 {
		t.Errorf("Interpreter.Interrupt called %d times", h.fake.interrupts)
	}
	io := h.c.untilIdle(req, 2*time.Second)
	if out, _ := streamText(io, "stdout"); out != "before\n" {
		t.Errorf("stdout %q", out)
	}
	rep, _ = h.c.execute(map[string]any{"code": "print after"})
	if content(rep)["status"] != "ok" {
		t.Errorf("next cell %v", content(rep))
	}
	// An interrupt with no cell running is harmless.
	ir = h.c.send(h.c.control, "interrupt_request", nil)
	h.c.reply(ir, h.c.controlCh, 2*time.Second)
	rep, _ = h.c.execute(map[string]any{"code": "print fine"})
	if content(rep)["status"] != "ok" {
		t.Errorf("cell after idle interrupt %v", content(rep))
	}
}

func TestInterruptStuckCompiledCall(t *testing.T) {
	h := start(t, nil)
	req := h.c.send(h.c.shell, "execute_request", map[string]any{"code": "stuck"})
	<-h.fake.executing
	// The first interrupt is the interpreter's business; the kernel waits.
	h.c.send(h.c.control, "interrupt_request", nil)
	select {
	case r := <-h.c.shellCh:
		t.Fatalf("cell given up after one interrupt: %v", content(r))
	case <-time.After(2 * h.k.cfg.InterruptGrace):
	}
	// After a second interrupt and the grace period the kernel abandons it.
	t0 := time.Now()
	h.c.send(h.c.control, "interrupt_request", nil)
	rep := h.c.reply(req, h.c.shellCh, 2*time.Second)
	if c := content(rep); c["status"] != "error" || !strings.Contains(c["evalue"].(string), "abandoned") {
		t.Fatalf("reply %v", c)
	}
	if d := time.Since(t0); d < h.k.cfg.InterruptGrace {
		t.Errorf("abandoned after %v, before the grace period", d)
	}
	io := h.c.untilIdle(req, 2*time.Second)
	if errText, _ := streamText(io, "stderr"); !strings.Contains(errText, "ignoring cancellation") {
		t.Errorf("stderr %q", errText)
	}
	if h.fake.interrupts != 2 {
		t.Errorf("Interpreter.Interrupt called %d times", h.fake.interrupts)
	}
}

func TestStdin(t *testing.T) {
	h := start(t, nil)
	req := h.c.send(h.c.shell, "execute_request", map[string]any{"code": "print asking\npassword secret?", "allow_stdin": true})
	ir := h.c.get(h.c.stdinCh, 5*time.Second)
	if ir.Header.MsgType != "input_request" || content(ir)["prompt"] != "secret?" || content(ir)["password"] != true {
		t.Fatalf("input_request %s %v", ir.Header.MsgType, content(ir))
	}
	if ir.ParentHeader().MsgID != req.Header.MsgID {
		t.Error("input_request parent is not the execute_request")
	}
	rm, _ := h.c.sess.NewMessage("input_reply", ir, map[string]any{"value": "hunter2"}, nil)
	h.c.stdin.SendMulti(zmq4.NewMsgFrom(h.c.sess.Encode(rm)...))
	rep := h.c.reply(req, h.c.shellCh, 5*time.Second)
	io := h.c.untilIdle(req, 5*time.Second)
	if out, _ := streamText(io, "stdout"); out != "asking\ngot hunter2\n" || content(rep)["status"] != "ok" {
		t.Fatalf("stdout %q reply %v", out, content(rep))
	}
	// Output before the prompt was flushed before input_request.
	rep, _ = h.c.execute(map[string]any{"code": "input name?", "allow_stdin": false})
	if c := content(rep); c["status"] != "error" || !strings.Contains(c["evalue"].(string), "allow_stdin false") {
		t.Fatalf("allow_stdin false: %v", c)
	}
	// Interrupt while waiting for input.
	req = h.c.send(h.c.shell, "execute_request", map[string]any{"code": "input waiting?"})
	h.c.get(h.c.stdinCh, 5*time.Second)
	h.c.send(h.c.control, "interrupt_request", nil)
	if c := content(h.c.reply(req, h.c.shellCh, 2*time.Second)); c["status"] != "error" {
		t.Fatalf("interrupted input %v", c)
	}
}

func TestForgedAndMalformedMessagesDropped(t *testing.T) {
	h := start(t, nil)
	forger := wire.NewSession("wrong-key")
	m, _ := forger.NewMessage("execute_request", nil, map[string]any{"code": "print pwned"}, nil)
	h.c.shell.SendMulti(zmq4.NewMsgFrom(forger.Encode(m)...))
	unsigned := wire.NewSession("")
	m2, _ := unsigned.NewMessage("execute_request", nil, map[string]any{"code": "print pwned"}, nil)
	h.c.shell.SendMulti(zmq4.NewMsgFrom(unsigned.Encode(m2)...))
	for _, frames := range [][][]byte{
		{[]byte("garbage")},
		{[]byte(wire.Delimiter)},
		{[]byte(wire.Delimiter), []byte("sig"), []byte("{"), []byte("{}"), []byte("{}"), []byte("{}")},
	} {
		h.c.shell.SendMulti(zmq4.NewMsgFrom(frames...))
		h.c.control.SendMulti(zmq4.NewMsgFrom(frames...))
	}
	select {
	case r := <-h.c.shellCh:
		t.Fatalf("kernel answered a forged message: %s", r.Header.MsgType)
	case <-time.After(300 * time.Millisecond):
	}
	rep, io := h.c.execute(map[string]any{"code": "print real"})
	if content(rep)["status"] != "ok" || content(rep)["execution_count"] != 1.0 {
		t.Fatalf("after forgeries: %v", content(rep))
	}
	if out, _ := streamText(io, "stdout"); out != "real\n" {
		t.Errorf("stdout %q", out)
	}
}

func TestManyLinesCoalesced(t *testing.T) {
	h := start(t, nil)
	const n = 100000
	_, io := h.c.execute(map[string]any{"code": "lines 100000"})
	out, msgs := streamText(io, "stdout")
	var want strings.Builder
	for i := 0; i < n; i++ {
		want.WriteString("line " + strconv.Itoa(i) + "\n")
	}
	if out != want.String() {
		t.Fatalf("got %d bytes, want %d", len(out), want.Len())
	}
	if msgs > 200 {
		t.Errorf("%d stream messages for %d lines: not coalesced", msgs, n)
	}
	t.Logf("%d lines in %d stream messages", n, msgs)
}

func TestDisplayOrderingAndLateOutput(t *testing.T) {
	h := start(t, nil)
	_, io := h.c.execute(map[string]any{"code": "print a\ndisplay\ncaptured from fd\ndisplayid d1\nupdate d1\nprint b\nclear\nlate"})
	got := types(io)
	want := []string{"status:busy", "execute_input", "stream", "display_data", "stream", "display_data", "update_display_data", "stream", "clear_output", "status:idle"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("iopub %v\nwant %v", got, want)
	}
	if c := content(io[4]); c["text"] != "from fd\n" {
		t.Errorf("captured output %v", c)
	}
	if tr := content(io[6])["transient"].(map[string]any); tr["display_id"] != "d1" {
		t.Errorf("update transient %v", tr)
	}
	// Output of a goroutine the cell started arrives after idle, attributed
	// to that cell.
	deadline := time.After(2 * time.Second)
	for {
		select {
		case m := <-h.c.iopubCh:
			if m.Header.MsgType == "stream" && content(m)["text"] == "late output\n" {
				if m.ParentHeader().MsgID != io[0].ParentHeader().MsgID {
					t.Error("late output not attributed to its cell")
				}
				return
			}
		case <-deadline:
			t.Fatal("late output lost")
		}
	}
}

func TestCompleteInspectIsComplete(t *testing.T) {
	h := start(t, nil)
	// "é" is two bytes but one code point: the kernel converts.
	code := "é := fmt.Print"
	req := h.c.send(h.c.shell, "complete_request", map[string]any{"code": code, "cursor_pos": 14})
	c := content(h.c.reply(req, h.c.shellCh, 2*time.Second))
	if c["status"] != "ok" || c["cursor_start"] != 9.0 || c["cursor_end"] != 14.0 ||
		!reflect.DeepEqual(c["matches"], []any{"Println", "Printf"}) {
		t.Errorf("complete_reply %v", c)
	}
	req = h.c.send(h.c.shell, "complete_request", map[string]any{"code": "boom", "cursor_pos": 4})
	if c := content(h.c.reply(req, h.c.shellCh, 2*time.Second)); c["status"] != "error" {
		t.Errorf("panicking completion: %v", c)
	}
	req = h.c.send(h.c.shell, "inspect_request", map[string]any{"code": "é fmt.Println", "cursor_pos": 5, "detail_level": 1})
	c = content(h.c.reply(req, h.c.shellCh, 2*time.Second))
	if c["found"] != true || c["data"].(map[string]any)["text/plain"] != "func Println(a ...any) (detail 1, cursor 6)" {
		t.Errorf("inspect_reply %v", c)
	}
	req = h.c.send(h.c.shell, "inspect_request", map[string]any{"code": "x", "cursor_pos": 1})
	if c := content(h.c.reply(req, h.c.shellCh, 2*time.Second)); c["found"] != false || c["status"] != "ok" {
		t.Errorf("inspect not found %v", c)
	}
	for code, want := range map[string][2]any{
		"x := 1":     {"complete", nil},
		"func f() {": {"incomplete", "\t"},
		") x":        {"invalid", nil},
		"weird":      {"unknown", nil},
	} {
		req := h.c.send(h.c.shell, "is_complete_request", map[string]any{"code": code})
		c := content(h.c.reply(req, h.c.shellCh, 2*time.Second))
		if c["status"] != want[0] || c["indent"] != want[1] {
			t.Errorf("is_complete %q: %v", code, c)
		}
	}
}

func TestHistoryAndMisc(t *testing.T) {
	h := start(t, nil)
	for _, code := range []string{"print a", "print b", "print a"} {
		h.c.execute(map[string]any{"code": code})
	}
	hist := func(c map[string]any) []any {
		c["raw"] = true
		req := h.c.send(h.c.shell, "history_request", c)
		r := content(h.c.reply(req, h.c.shellCh, 2*time.Second))
		if r["status"] != "ok" {
			t.Fatalf("history_reply %v", r)
		}
		return r["history"].([]any)
	}
	if got := hist(map[string]any{"hist_access_type": "tail", "n": 2, "output": false}); len(got) != 2 ||
		!reflect.DeepEqual(got[1], []any{1.0, 3.0, "print a"}) {
		t.Errorf("tail %v", got)
	}
	if got := hist(map[string]any{"hist_access_type": "tail", "n": 1, "output": true}); len(got) != 1 ||
		!reflect.DeepEqual(got[0], []any{1.0, 3.0, []any{"print a", nil}}) {
		t.Errorf("tail with output %v", got)
	}
	if got := hist(map[string]any{"hist_access_type": "range", "session": 1, "start": 2, "stop": 3, "output": false}); len(got) != 1 ||
		!reflect.DeepEqual(got[0], []any{1.0, 2.0, "print b"}) {
		t.Errorf("range %v", got)
	}
	if got := hist(map[string]any{"hist_access_type": "search", "pattern": "*b*", "output": false}); len(got) != 1 {
		t.Errorf("search %v", got)
	}
	req := h.c.send(h.c.shell, "history_request", map[string]any{"hist_access_type": "nope", "output": false, "raw": true})
	if c := content(h.c.reply(req, h.c.shellCh, 2*time.Second)); c["status"] != "error" {
		t.Errorf("bad hist_access_type %v", c)
	}

	req = h.c.send(h.c.shell, "comm_info_request", nil)
	if c := content(h.c.reply(req, h.c.shellCh, 2*time.Second)); c["status"] != "ok" || len(c["comms"].(map[string]any)) != 0 {
		t.Errorf("comm_info %v", c)
	}
	open := h.c.send(h.c.shell, "comm_open", map[string]any{"comm_id": "c1", "target_name": "jupyter.widget", "data": map[string]any{}})
	if io := h.c.untilIdle(open, 2*time.Second); !reflect.DeepEqual(types(io), []string{"status:busy", "comm_close", "status:idle"}) {
		t.Errorf("comm_open iopub %v", types(io))
	}
	req = h.c.send(h.c.control, "debug_request", map[string]any{"seq": 7, "type": "request", "command": "initialize"})
	if c := content(h.c.reply(req, h.c.controlCh, 2*time.Second)); c["success"] != false || c["request_seq"] != 7.0 {
		t.Errorf("debug_reply %v", c)
	}
	req = h.c.send(h.c.control, "execute_request", map[string]any{"code": "print x"})
	if c := content(h.c.reply(req, h.c.controlCh, 2*time.Second)); c["status"] != "error" {
		t.Errorf("execute on control %v", c)
	}
	h.c.send(h.c.shell, "no_such_request", nil)
	req = h.c.send(h.c.shell, "connect_request", nil)
	if c := content(h.c.reply(req, h.c.shellCh, 2*time.Second)); c["shell_port"] != 1.0 {
		t.Errorf("connect_reply %v", c)
	}
}

func TestShutdown(t *testing.T) {
	h := start(t, nil)
	req := h.c.send(h.c.control, "shutdown_request", map[string]any{"restart": true})
	if c := content(h.c.reply(req, h.c.controlCh, 2*time.Second)); c["status"] != "ok" || c["restart"] != true {
		t.Fatalf("shutdown_reply %v", c)
	}
	io := h.c.untilIdle(req, 2*time.Second)
	found := false
	for _, m := range io {
		found = found || m.Header.MsgType == "shutdown_reply"
	}
	if !found {
		t.Errorf("shutdown_reply not broadcast: %v", types(io))
	}
	select {
	case err := <-h.runErr:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Run did not return after shutdown")
	}
}

func TestTCPUnsignedAndHeartbeat(t *testing.T) {
	ci := &wire.ConnectionInfo{Transport: "tcp", IP: "127.0.0.1", SignatureScheme: "hmac-sha256"}
	k, err := New(Config{Conn: ci, Interp: newFake(), Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go k.Run(ctx)
	select {
	case <-k.Ready():
	case <-time.After(5 * time.Second):
		t.Fatal("not listening")
	}
	hb := zmq4.NewReq(ctx)
	defer hb.Close()
	if err := hb.Dial(ci.Endpoint(ci.HBPort)); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		hb.Send(zmq4.NewMsg([]byte("ping")))
		if m, err := hb.Recv(); err != nil || string(m.Frames[0]) != "ping" {
			t.Fatalf("heartbeat %v %v", m, err)
		}
	}
	c := dial(t, ci)
	defer c.close()
	c.waitReady()
	rep, io := c.execute(map[string]any{"code": "print over tcp"})
	if content(rep)["status"] != "ok" {
		t.Fatalf("reply %v", content(rep))
	}
	if out, _ := streamText(io, "stdout"); out != "over tcp\n" {
		t.Errorf("stdout %q", out)
	}
	if len(rep.Identities) != 0 {
		t.Errorf("client saw routing frames %q", rep.Identities)
	}
}

func TestSilentCellCapturedOutputDropped(t *testing.T) {
	h := start(t, nil)
	visible := h.c.send(h.c.shell, "execute_request", map[string]any{"code": "print v"})
	h.c.reply(visible, h.c.shellCh, 5*time.Second)
	h.c.untilIdle(visible, 5*time.Second)
	_, io := h.c.execute(map[string]any{"code": "captured hidden", "silent": true})
	if out, _ := streamText(io, "stdout"); out != "" {
		t.Fatalf("silent cell published %q", out)
	}
	// Output captured afterwards (a background goroutine) goes to the last
	// visible cell, not to the silent one.
	h.k.CapturedOutput("stdout", []byte("background\n"))
	deadline := time.After(2 * time.Second)
	for {
		select {
		case m := <-h.c.iopubCh:
			if m.Header.MsgType != "stream" {
				continue
			}
			if content(m)["text"] == "hidden\n" {
				t.Fatal("silent output leaked")
			}
			if content(m)["text"] == "background\n" {
				if m.ParentHeader().MsgID != visible.Header.MsgID {
					t.Fatalf("background output attributed to %s", m.ParentHeader().MsgType)
				}
				return
			}
		case <-deadline:
			t.Fatal("background output lost")
		}
	}
}

// pipeCapture stands in for kernel/capture: WriteStream text and
// CapturedOutput share one ordered path, as with the real pipes.
type pipeCapture struct {
	k      *Kernel
	mu     sync.Mutex
	writes int
}

func (p *pipeCapture) Flush() {}

func (p *pipeCapture) WriteStream(name string, b []byte) error {
	p.mu.Lock()
	p.writes++
	p.mu.Unlock()
	p.k.CapturedOutput(name, b)
	return nil
}

func TestStreamGoesThroughCapture(t *testing.T) {
	h := start(t, nil)
	pc := &pipeCapture{k: h.k}
	h.k.AttachCapture(pc)
	_, io := h.c.execute(map[string]any{"code": "print a\ncaptured b\nprint c"})
	if out, _ := streamText(io, "stdout"); out != "a\nb\nc\n" {
		t.Fatalf("stdout %q", out)
	}
	if pc.writes != 2 {
		t.Errorf("%d stream writes through the capture, want 2", pc.writes)
	}
	// A silent cell's Stream text is dropped, not sent through the capture.
	h.c.execute(map[string]any{"code": "print hidden", "silent": true})
	if pc.writes != 2 {
		t.Errorf("silent cell wrote through the capture")
	}
}
