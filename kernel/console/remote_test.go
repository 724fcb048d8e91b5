package console

import (
	"context"
	"errors"
	"log"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qwengo/qwengo/kernel"
	"github.com/qwengo/qwengo/kernel/wire"
)

// kernelFake is a kernel.Interpreter with the same tiny language as fakeInterp.
type kernelFake struct{ fakeInterp }

func (k *kernelFake) Execute(ctx context.Context, code string, io kernel.IO) (*kernel.Result, error) {
	res, err := k.fakeInterp.Execute(ctx, code, io)
	var ce *CellError
	if errors.As(err, &ce) {
		return nil, &kernel.CellError{Name: ce.Name, Value: ce.Value, Traceback: ce.Traceback}
	}
	if err != nil {
		return nil, err
	}
	return &kernel.Result{Data: res.Data}, nil
}
func (k *kernelFake) Complete(code string, cursor int) kernel.Completion {
	c := k.fakeInterp.Complete(code, cursor)
	return kernel.Completion{Matches: c.Matches, Start: c.Start, End: c.End}
}
func (k *kernelFake) Inspect(string, int, int) (map[string]string, bool) { return nil, false }
func (k *kernelFake) History() kernel.History                            { return nil }

// recIO records what a remote cell sends.
type recIO struct {
	mu      sync.Mutex
	streams []string
	display []map[string]any
	answer  string
	prompts []string
}

func (r *recIO) Stream(name, text string) {
	r.mu.Lock()
	r.streams = append(r.streams, name+":"+text)
	r.mu.Unlock()
}
func (r *recIO) Display(data, md map[string]any, id string, update bool) {
	r.mu.Lock()
	r.display = append(r.display, data)
	r.mu.Unlock()
}
func (r *recIO) ClearOutput(bool) {}
func (r *recIO) Input(p string, pw bool) (string, error) {
	r.mu.Lock()
	r.prompts = append(r.prompts, p)
	r.mu.Unlock()
	return r.answer, nil
}

func startKernel(t *testing.T, key string) (*wire.ConnectionInfo, *kernelFake) {
	ci, f, _ := startStoppableKernel(t, key)
	return ci, f
}

func startStoppableKernel(t *testing.T, key string) (*wire.ConnectionInfo, *kernelFake, context.CancelFunc) {
	t.Helper()
	ci := &wire.ConnectionInfo{Transport: "ipc", IP: filepath.Join(t.TempDir(), "k"),
		ShellPort: 1, IOPubPort: 2, StdinPort: 3, ControlPort: 4, HBPort: 5,
		SignatureScheme: "hmac-sha256", Key: key}
	f := &kernelFake{fakeInterp{running: make(chan struct{}, 1)}}
	k, err := kernel.New(kernel.Config{Conn: ci, Interp: f, Coalesce: 10 * time.Millisecond,
		InterruptGrace: 300 * time.Millisecond, Log: log.New(testWriter{t}, "kernel: ", 0)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go k.Run(ctx)
	t.Cleanup(cancel)
	return ci, f, cancel
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func TestRemote(t *testing.T) {
	ci, f := startKernel(t, "secret")
	cci := *ci
	r, err := DialInfo(&cci, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.Banner() == "" {
		t.Errorf("no banner in kernel_info_reply: %v", r.KernelInfo)
	}
	ctx := context.Background()

	io := &recIO{}
	res, err := r.Execute(ctx, "say hi\n", io)
	if err != nil || res == nil {
		t.Fatalf("say: %v", err)
	}
	joined := strings.Join(io.streams, "|")
	if !strings.Contains(joined, "stdout:hi") || !strings.Contains(joined, "stderr:warn") {
		t.Errorf("streams %q", io.streams)
	}

	res, err = r.Execute(ctx, "6*7", &recIO{})
	if err != nil || res.Data["text/plain"] != "6*7" {
		t.Fatalf("result: %v %v", res, err)
	}

	_, err = r.Execute(ctx, "boom", &recIO{})
	var ce *CellError
	if !errors.As(err, &ce) || ce.Name != "panic" || ce.Value != "boom" || len(ce.Traceback) != 2 {
		t.Fatalf("boom: %#v", err)
	}

	io = &recIO{answer: "gopher"}
	res, err = r.Execute(ctx, "input", io)
	if err != nil || res.Data["text/plain"] != "hello gopher" || len(io.prompts) != 1 || io.prompts[0] != "name? " {
		t.Fatalf("input: %v %v prompts %q", res, err, io.prompts)
	}

	io = &recIO{}
	if _, err = r.Execute(ctx, "png", io); err != nil || len(io.display) != 1 || RenderBundle(io.display[0]) != "[image/png 12 KB]" {
		t.Fatalf("display: %v %v", err, io.display)
	}

	// Cancelling the context interrupts the cell in the kernel.
	cctx, cancel := context.WithCancel(ctx)
	go func() {
		<-f.running
		cancel()
	}()
	start := time.Now()
	_, err = r.Execute(cctx, "loop", &recIO{})
	if !errors.As(err, &ce) || ce.Name != "Interrupted" || time.Since(start) > 5*time.Second {
		t.Fatalf("loop: %v after %v", err, time.Since(start))
	}
	// The console calls Interrupt and cancels the context: one interrupt_request.
	cctx, cancel = context.WithCancel(ctx)
	go func() {
		<-f.running
		r.Interrupt()
		cancel()
	}()
	_, err = r.Execute(cctx, "loop", &recIO{})
	if !errors.As(err, &ce) || ce.Name != "Interrupted" {
		t.Fatalf("second loop: %v", err)
	}
	time.Sleep(300 * time.Millisecond) // a duplicate request would arrive by now
	f.mu.Lock()
	n := f.interrupted
	f.mu.Unlock()
	if n != 2 {
		t.Errorf("interpreter interrupted %d times for two interrupted cells, want 2", n)
	}
	if res, err := r.Execute(ctx, "after", &recIO{}); err != nil || res.Data["text/plain"] != "after" {
		t.Fatalf("after interrupt: %v %v", res, err)
	}

	code := `s := "日本"; fmt.P`
	c := r.Complete(code, len(code))
	if len(c.Matches) != 2 || code[c.Start:c.End] != "P" {
		t.Errorf("complete: %+v (byte offsets over %q)", c, code)
	}
	if st, ind := r.IsComplete("func f() {"); st != "incomplete" || ind != "\t" {
		t.Errorf("is_complete: %q %q", st, ind)
	}
}

func TestRemoteWrongKey(t *testing.T) {
	ci, _ := startKernel(t, "right")
	bad := *ci
	bad.Key = "wrong"
	start := time.Now()
	_, err := DialInfo(&bad, 1500*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "did not answer kernel_info_request") {
		t.Fatalf("dial with a wrong key: %v", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatalf("took %v", time.Since(start))
	}
}

func TestByteOffset(t *testing.T) {
	s := "a日b"
	for cp, want := range map[int]int{-1: 0, 0: 0, 1: 1, 2: 4, 3: 5, 9: 5} {
		if got := byteOffset(s, cp); got != want {
			t.Errorf("byteOffset(%q,%d)=%d want %d", s, cp, got, want)
		}
	}
}

func TestRemoteKernelDies(t *testing.T) {
	defer func(i time.Duration) { heartbeatInterval = i }(heartbeatInterval)
	heartbeatInterval = 100 * time.Millisecond
	ci, f, stop := startStoppableKernel(t, "k")
	r, err := DialInfo(ci, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	go func() {
		<-f.running
		stop()
	}()
	start := time.Now()
	_, err = r.Execute(context.Background(), "loop", &recIO{})
	if !errors.Is(err, ErrKernelDied) {
		t.Fatalf("Execute after the kernel stopped: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v to notice", d)
	}
	if _, err := r.Execute(context.Background(), "1", &recIO{}); !errors.Is(err, ErrKernelDied) {
		t.Errorf("next Execute: %v", err)
	}

	// The console stops on a dead kernel instead of failing every cell.
	fl := &fakeLines{inputs: lines("1", "2")}
	var out, errb strings.Builder
	c := New(Options{Interp: r, Lines: fl, Out: &out, Err: &errb})
	if err := c.Run(); err != nil {
		t.Fatal(err)
	}
	if len(fl.inputs) != 1 || !strings.Contains(errb.String(), "kernel died") {
		t.Errorf("console went on after the kernel died: inputs left %d, stderr %q", len(fl.inputs), errb.String())
	}
}
