package backend

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// fakeProfiler records the profiling calls a Profile makes; only Name and the Profiler methods
// of the embedded Backend are used.
type fakeProfiler struct {
	Backend
	calls    []string
	timing   bool
	times    []KernelTime
	rangeErr error
}

func (f *fakeProfiler) Name() string { return "fake" }
func (f *fakeProfiler) ProfileRange(on bool) error {
	f.calls = append(f.calls, map[bool]string{true: "open", false: "close"}[on])
	if !on && f.rangeErr != nil {
		return f.rangeErr
	}
	return nil
}
func (f *fakeProfiler) SetKernelTiming(on bool) {
	f.timing = on
	f.calls = append(f.calls, map[bool]string{true: "timing on", false: "timing off"}[on])
}
func (f *fakeProfiler) KernelTimes() []KernelTime { return f.times }

type plainBackend struct{ Backend }

func (plainBackend) Name() string { return "plain" }

// TestProfile: the timed range opens with timing on, f runs inside it, the times come back and
// timing is off again; f's error and a failing close are both reported; a backend without a
// kernel timer is an error naming it.
func TestProfile(t *testing.T) {
	want := []KernelTime{{Name: "gemv", Count: 2, Total: time.Millisecond}}
	for _, c := range []struct {
		name     string
		ferr     error
		rangeErr error
	}{{"ok", nil, nil}, {"f fails", errors.New("boom"), nil}, {"close fails", nil, errors.New("stop failed")}} {
		f := &fakeProfiler{times: want, rangeErr: c.rangeErr}
		ran := false
		got, err := Profile(f, func() error {
			ran = true
			if !f.timing || len(f.calls) != 2 || f.calls[1] != "open" {
				t.Errorf("%s: f ran with timing %v after %v", c.name, f.timing, f.calls)
			}
			return c.ferr
		})
		if !ran || f.timing || strings.Join(f.calls, ",") != "timing on,open,close,timing off" {
			t.Errorf("%s: calls %v, timing left %v", c.name, f.calls, f.timing)
		}
		switch {
		case c.ferr != nil && !errors.Is(err, c.ferr):
			t.Errorf("%s: error %v, want f's", c.name, err)
		case c.rangeErr != nil && (err == nil || !strings.Contains(err.Error(), "stop failed")):
			t.Errorf("%s: error %v, want the close's", c.name, err)
		case c.ferr == nil && c.rangeErr == nil && (err != nil || len(got) != 1 || got[0] != want[0]):
			t.Errorf("%s: %v, %v; want the kernel times", c.name, got, err)
		}
	}
	if _, err := Profile(plainBackend{}, func() error { return nil }); err == nil || !strings.Contains(err.Error(), "plain") {
		t.Errorf("a backend without a timer: %v, want an error naming it", err)
	}
}

// TestFormatKernelTimes: a header with the count and total, one line per kernel up to top,
// then what the rest add up to; nothing for no kernels.
func TestFormatKernelTimes(t *testing.T) {
	if s := FormatKernelTimes(nil, 5); s != "" {
		t.Errorf("no kernels: %q", s)
	}
	times := []KernelTime{
		{Name: "a", Count: 4, Total: 400 * time.Microsecond},
		{Name: "b", Count: 1, Total: 300 * time.Microsecond},
		{Name: "c", Count: 2, Total: 200 * time.Microsecond},
		{Name: "d", Count: 1, Total: 100 * time.Microsecond},
	}
	s := FormatKernelTimes(times, 2)
	for _, w := range []string{"4 kernels, 1.000 ms", "40.0%", "100.00 µs each", "... 2 more: 0.300 ms"} {
		if !strings.Contains(s, w) {
			t.Errorf("no %q in\n%s", w, s)
		}
	}
	if strings.Count(s, "\n") != 4 || strings.Contains(s, "  c ") {
		t.Errorf("want a header, two kernels and the rest:\n%s", s)
	}
}
