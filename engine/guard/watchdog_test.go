package guard

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qwengo/qwengo/engine/backend"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock { return &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// TestWatchdogPolls drives Poll with a fake clock through sequences of usage (GiB per poll,
// polls 500 ms apart) and checks at which polls the watchdog acts.
func TestWatchdogPolls(t *testing.T) {
	cases := []struct {
		name    string
		overFor time.Duration
		usage   []int64 // GiB, limit 10
		fires   []int   // poll indices where it acts
	}{
		{name: "over immediately", overFor: 0, usage: []int64{11}, fires: []int{0}},
		{name: "at the limit is not over", overFor: 0, usage: []int64{10, 10}, fires: nil},
		{name: "once per episode", overFor: 0, usage: []int64{11, 12, 13, 9, 11}, fires: []int{0, 4}},
		{name: "over for N polls", overFor: time.Second, usage: []int64{11, 11, 11, 11}, fires: []int{2}},
		{name: "dip resets the timer", overFor: time.Second, usage: []int64{11, 11, 9, 11, 11, 11}, fires: []int{5}},
		{name: "never long enough", overFor: time.Second, usage: []int64{11, 11, 5, 11, 11, 5}, fires: nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			clk := newClock()
			f := NewFake(80*GiB, 0)
			var cancels atomic.Int32
			w, err := New(Config{Source: f, Limit: 10 * GiB, OverFor: c.overFor, Now: clk.Now,
				Cancel: func(*Event) { cancels.Add(1) }})
			if err != nil {
				t.Fatal(err)
			}
			var fired []int
			for i, u := range c.usage {
				f.SetUsed(u * GiB)
				ev, err := w.Poll()
				if err != nil {
					t.Fatal(err)
				}
				if ev != nil {
					fired = append(fired, i)
					if ev.Reading.DeviceUsed != u*GiB || ev.Limit != 10*GiB || ev.OverFor() < c.overFor {
						t.Errorf("poll %d: event numbers %+v", i, ev)
					}
				}
				clk.Advance(500 * time.Millisecond)
			}
			if !equalInts(fired, c.fires) {
				t.Fatalf("acted at polls %v, want %v", fired, c.fires)
			}
			if int(cancels.Load()) != len(c.fires) || len(w.Events()) != len(c.fires) || w.Stats().Events != len(c.fires) {
				t.Fatalf("cancel called %d times, %d events recorded, want %d", cancels.Load(), len(w.Events()), len(c.fires))
			}
			if w.Stats().Samples != len(c.usage) {
				t.Fatalf("samples %d", w.Stats().Samples)
			}
		})
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestWatchdogActions(t *testing.T) {
	clk := newClock()
	f := NewFake(80*GiB, 12*GiB)
	var st backend.MemStats
	st.InUse[backend.KVCache] = 3 * GiB
	var got []Event
	var logs []string
	w, err := New(Config{
		Source: f, Limit: 10 * GiB, Now: clk.Now, Root: 42, Baseline: GiB,
		Tree:       func(int) ([]int, error) { return []int{42}, nil },
		Release:    func() (int64, error) { return 3 * GiB, nil },
		Accounting: func() backend.MemStats { return st },
		Cancel:     func(*Event) { panic("boom") },
		OnEvent:    func(ev Event) { got = append(got, ev) },
		Logf:       func(format string, a ...any) { logs = append(logs, format) },
	})
	if err != nil {
		t.Fatal(err)
	}
	f.SetProcesses([]Process{{PID: 42, Used: 0}}, nil)
	ctx, done := w.Watch(context.Background())
	defer done()
	ctx2, done2 := w.Watch(context.Background())
	done2()
	ev, err := w.Poll()
	if err != nil || ev == nil {
		t.Fatalf("no event: %v", err)
	}
	if ctx.Err() == nil {
		t.Fatal("watched context not cancelled")
	}
	var cause *Event
	if !errors.As(context.Cause(ctx), &cause) || cause.Reading.DeviceUsed != 12*GiB {
		t.Fatalf("cause = %v", context.Cause(ctx))
	}
	if !errors.Is(context.Cause(ctx2), context.Canceled) {
		t.Fatalf("unregistered context has cause %v", context.Cause(ctx2))
	}
	if ev.Cancelled != 1 || ev.Freed != 3*GiB || ev.Accounting == nil || len(ev.ActionErrors) != 1 || !strings.Contains(ev.ActionErrors[0], "boom") {
		t.Fatalf("event %+v", ev)
	}
	if len(got) != 1 || !ev.Reading.TreeFromTotal {
		t.Fatalf("OnEvent %d, reading %+v", len(got), ev.Reading)
	}
	rep := ev.Report()
	for _, want := range []string{"over the limit 10.00 GiB", "cancelled 1 running call", "released 3.00 GiB", "kv_cache", "unified-memory", "cancel panicked: boom"} {
		if !strings.Contains(rep, want) {
			t.Errorf("report lacks %q:\n%s", want, rep)
		}
	}
	// the fallback notice is said once
	w.Poll()
	w.Poll()
	if len(logs) != 1 {
		t.Fatalf("notices %v", logs)
	}
}

func TestWatchdogConfigErrors(t *testing.T) {
	f := NewFake(GiB, 0)
	for _, cfg := range []Config{
		{Limit: GiB},
		{Source: f},
		{Source: f, Limit: GiB, PollInterval: -1},
		{Source: f, Limit: GiB, OverFor: -time.Second},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
}

func TestWatchdogSampleError(t *testing.T) {
	f := NewFake(GiB, 0)
	f.SetError(errors.New("NVML gone"))
	var errs atomic.Int32
	w, _ := New(Config{Source: f, Limit: GiB, OnError: func(error) { errs.Add(1) }})
	if _, err := w.Poll(); err == nil {
		t.Fatal("no error")
	}
	if errs.Load() != 1 || w.Stats().Errors != 1 || w.Stats().LastErr == nil {
		t.Fatalf("stats %+v", w.Stats())
	}
}

// TestWatchdogStartStop runs the polling goroutine with a short interval.
func TestWatchdogStartStop(t *testing.T) {
	f := NewFake(80*GiB, GiB)
	evs := make(chan Event, 4)
	w, err := New(Config{Source: f, Limit: 10 * GiB, PollInterval: 5 * time.Millisecond, OverFor: 20 * time.Millisecond,
		OnEvent: func(ev Event) { evs <- ev }})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	if err := w.Start(); err == nil {
		t.Fatal("second Start accepted")
	}
	ctx, done := w.Watch(context.Background())
	defer done()
	time.Sleep(30 * time.Millisecond)
	select {
	case ev := <-evs:
		t.Fatalf("acted under the limit: %v", ev.Error())
	default:
	}
	start := time.Now()
	f.SetUsed(11 * GiB)
	select {
	case ev := <-evs:
		if ev.OverFor() < 20*time.Millisecond {
			t.Fatalf("acted after %s over, want ≥ 20ms", ev.OverFor())
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("acted after %s", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("watchdog did not act")
	}
	<-ctx.Done()
	w.Stop()
	if w.Running() {
		t.Fatal("still running after Stop")
	}
	n := f.Reads()
	time.Sleep(30 * time.Millisecond)
	if f.Reads() != n {
		t.Fatalf("polled after Stop: %d → %d reads", n, f.Reads())
	}
	w.Stop() // idempotent
	if err := w.Start(); err != nil {
		t.Fatalf("restart: %v", err)
	}
	w.Stop()
}

// TestWatchdogConcurrent calls Poll, Watch, Events and Stats from several goroutines while the
// loop runs (run with -race).
func TestWatchdogConcurrent(t *testing.T) {
	f := NewFake(80*GiB, GiB)
	w, _ := New(Config{Source: f, Limit: 10 * GiB, PollInterval: time.Millisecond})
	w.Start()
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				f.SetUsed(int64(5+(i+g)%10) * GiB)
				_, done := w.Watch(context.Background())
				w.Poll()
				_ = w.Events()
				_ = w.Stats()
				done()
			}
		}(g)
	}
	wg.Wait()
	w.Stop()
	if w.Stats().Samples < 200 {
		t.Fatalf("samples %d", w.Stats().Samples)
	}
}
