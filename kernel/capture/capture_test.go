//go:build unix

package capture

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

type recorder struct {
	mu  sync.Mutex
	out map[string]*bytes.Buffer
	n   map[string]int // sink calls
}

func newRecorder() *recorder {
	return &recorder{out: map[string]*bytes.Buffer{"stdout": {}, "stderr": {}}, n: map[string]int{}}
}

func (r *recorder) sink(name string, data []byte) {
	r.mu.Lock()
	r.out[name].Write(data)
	r.n[name]++
	r.mu.Unlock()
}

func (r *recorder) get(name string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.out[name].String()
}

// capture runs f with descriptors 1 and 2 captured; the test must not use
// t.Fatal inside f (the testing package reports on stdout).
func capture(t *testing.T, f func(c *Capture)) *recorder {
	t.Helper()
	rec := newRecorder()
	c, err := Start(rec.sink)
	if err != nil {
		t.Fatal(err)
	}
	f(c)
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	return rec
}

func TestCaptureSources(t *testing.T) {
	var childErr error
	rec := capture(t, func(c *Capture) {
		fmt.Println("from fmt")
		fmt.Fprintln(os.Stderr, "from os.Stderr")
		syscall.Write(1, []byte("raw fd 1\n"))
		syscall.Write(2, []byte("raw fd 2\n"))
		cmd := exec.Command("sh", "-c", "echo child out; echo child err >&2")
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		childErr = cmd.Run()
		c.Flush()
	})
	if childErr != nil {
		t.Fatal(childErr)
	}
	out, errs := rec.get("stdout"), rec.get("stderr")
	for _, want := range []string{"from fmt\n", "raw fd 1\n", "child out\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout %q lacks %q", out, want)
		}
	}
	for _, want := range []string{"from os.Stderr\n", "raw fd 2\n", "child err\n"} {
		if !strings.Contains(errs, want) {
			t.Errorf("stderr %q lacks %q", errs, want)
		}
	}
	if strings.Contains(out+errs, "qwengo-capture-flush") {
		t.Error("flush marker leaked into output")
	}
}

func TestFlushOrdersOutput(t *testing.T) {
	var got []string
	rec := newRecorder()
	c, err := Start(rec.sink)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 50; i++ {
		fmt.Printf("line %d\n", i)
		c.Flush()
		// After Flush everything printed so far must have arrived.
		got = append(got, rec.get("stdout"))
	}
	c.Stop()
	for i, g := range got {
		if !strings.HasSuffix(g, fmt.Sprintf("line %d\n", i)) {
			t.Fatalf("after flush %d: output ends %q", i, g[max(0, len(g)-20):])
		}
	}
}

func TestManyLinesNeitherLostNorFlooding(t *testing.T) {
	const lines = 100000
	var want bytes.Buffer
	rec := capture(t, func(c *Capture) {
		for i := 0; i < lines; i++ {
			fmt.Fprintf(&want, "line %06d\n", i)
			fmt.Printf("line %06d\n", i)
		}
		c.Flush()
	})
	if got := rec.get("stdout"); got != want.String() {
		t.Fatalf("got %d bytes, want %d", len(got), want.Len())
	}
	// 100k writes must arrive in far fewer sink calls (the reader batches
	// whatever the pipe holds), which is what keeps iopub from flooding.
	if rec.n["stdout"] >= lines {
		t.Errorf("%d sink calls for %d lines: no batching", rec.n["stdout"], lines)
	}
	t.Logf("%d lines in %d sink calls", lines, rec.n["stdout"])
}

// TestRepairClosedStdout closes os.Stdout, which would break the test
// binary's own reporting, so the scenario runs in a child process.
func TestRepairClosedStdout(t *testing.T) {
	if out := os.Getenv("QWENGO_CAPTURE_REPAIR_OUT"); out != "" {
		rec := newRecorder()
		c, err := Start(rec.sink)
		if err != nil {
			os.WriteFile(out, []byte("start: "+err.Error()), 0o600)
			return
		}
		os.Stdout.Close() // what a careless cell might do
		c.Flush()         // re-attaches descriptor 1
		syscall.Write(1, []byte("after repair\n"))
		c.Stop()
		os.WriteFile(out, []byte(rec.get("stdout")), 0o600)
		return
	}
	out := filepath.Join(t.TempDir(), "out")
	cmd := exec.Command(os.Args[0], "-test.run=^TestRepairClosedStdout$")
	cmd.Env = append(os.Environ(), "QWENGO_CAPTURE_REPAIR_OUT="+out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("child: %v\n%s", err, b)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "after repair\n" {
		t.Fatalf("captured %q, want %q", got, "after repair\n")
	}
}

func TestPartialMarker(t *testing.T) {
	tests := []struct {
		data string
		want int
	}{
		{"abc", 0},
		{"abc\x00", 1},
		{"abc\x00qwengo", 7},
		{string(marker[:len(marker)-1]), len(marker) - 1},
		{"\x00q\x00", 1},
		{"", 0},
	}
	for _, tt := range tests {
		if got := partialMarker([]byte(tt.data)); got != tt.want {
			t.Errorf("partialMarker(%q) = %d, want %d", tt.data, got, tt.want)
		}
	}
}

func TestMarkerSplitAcrossReads(t *testing.T) {
	// Write a marker in two halves with data around it: the reader must
	// strip it even when it straddles two reads.
	rec := capture(t, func(c *Capture) {
		w := c.streams[0].w
		w.Write([]byte("before"))
		w.Write(marker[:5])
		c.streams[0].mu.Lock()
		c.streams[0].sent++
		c.streams[0].mu.Unlock()
		w.Write(marker[5:])
		w.Write([]byte("after\n"))
		c.Flush()
	})
	if got := rec.get("stdout"); got != "beforeafter\n" {
		t.Fatalf("stdout %q", got)
	}
}

func TestCStdioStreamsWithoutFlush(t *testing.T) {
	if !hasCStdio {
		t.Skip("built without cgo")
	}
	rec := newRecorder()
	c, err := Start(rec.sink)
	if err != nil {
		t.Fatal(err)
	}
	cPuts("from C\n")
	// Line buffering means the line reaches the pipe at once; no Flush
	// (which would fflush) is called while waiting.
	arrived := false
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); {
		if strings.Contains(rec.get("stdout"), "from C\n") {
			arrived = true
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	c.Stop()
	if !arrived {
		t.Fatal("C output did not arrive without fflush")
	}
}

func TestWriteStreamKeepsOrderWithDescriptorWrites(t *testing.T) {
	var want strings.Builder
	rec := capture(t, func(c *Capture) {
		for i := 0; i < 1000; i++ {
			syscall.Write(1, []byte(fmt.Sprintf("fd %d\n", i)))
			c.WriteStream("stdout", []byte(fmt.Sprintf("io %d\n", i)))
			c.WriteStream("stderr", []byte("e"))
		}
		c.Flush()
	})
	for i := 0; i < 1000; i++ {
		fmt.Fprintf(&want, "fd %d\nio %d\n", i, i)
	}
	if got := rec.get("stdout"); got != want.String() {
		t.Fatalf("stdout out of order or incomplete: %d bytes, want %d", len(got), want.Len())
	}
	if got := rec.get("stderr"); got != strings.Repeat("e", 1000) {
		t.Fatalf("stderr %q", got)
	}
}

func TestWriteStreamAfterStop(t *testing.T) {
	c, err := Start(func(string, []byte) {})
	if err != nil {
		t.Fatal(err)
	}
	c.Stop()
	if err := c.WriteStream("stdout", []byte("x")); err == nil {
		t.Fatal("WriteStream after Stop succeeded")
	}
}
