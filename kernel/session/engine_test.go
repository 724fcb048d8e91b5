package session

import (
	"context"
	"strings"
	"testing"
	"time"
)

// The engine is pre-imported, its packages importable, and the session wires its hooks:
// the cell's context, per-cell peak memory, %mem.
func TestEngine(t *testing.T) {
	if !engineHooks.mem.IsValid() {
		t.Skip("engine façade not compiled in")
	}
	s := newSession(t, Options{})
	runCases(t, s, []cellCase{
		{code: "strings.HasPrefix(strings.ToLower(engine.Device()), \"cpu\")", text: "true"},
		{code: "import \"github.com/qwengo/qwengo/engine/backend\"\nstrings.HasSuffix(backend.Human(2048), \"KiB\")", text: "true"},
		{code: "engine.CurrentContext() == display.Context()", text: "true"},
	})
	_, res := mustRun(t, s, "tt, err := engine.Backend().Alloc(backend.Activations, 32, 32)\nfmt.Println(err)\nengine.Backend().Free(tt)")
	if res.PeakDeviceBytes < 32*32*4 {
		t.Errorf("PeakDeviceBytes %d after allocating 4 KiB", res.PeakDeviceBytes)
	}
	_, res = mustRun(t, s, "1")
	if res.PeakDeviceBytes != 0 {
		t.Errorf("peak not reset per cell: %d", res.PeakDeviceBytes)
	}
	f, _ := mustRun(t, s, "%mem")
	if !strings.Contains(f.out(), "cpu") || !strings.Contains(f.out(), "Go heap") {
		t.Errorf("%%mem: %q", f.out())
	}
	if engineHooks.report != nil {
		for _, want := range []string{"memory budget", "device: ", "peak"} {
			if !strings.Contains(f.out(), want) {
				t.Errorf("%%mem lacks %q: %q", want, f.out())
			}
		}
	}
	// Engine calls see the cell's context: cancelled by an interrupt.
	f = &fakeIO{}
	go func() {
		for s.cur.Load() == nil {
			time.Sleep(time.Millisecond)
		}
		time.Sleep(20 * time.Millisecond)
		s.Interrupt()
	}()
	_, err := s.Execute(context.Background(), "<-engine.CurrentContext().Done()\nfmt.Println(\"cancelled\")", f)
	if err == nil || !strings.Contains(err.Error(), "Interrupted") {
		t.Errorf("engine context not cancelled by interrupt: %v", err)
	}
}
