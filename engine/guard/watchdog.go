package guard

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/qwengo/qwengo/engine/backend"
)

// DefaultPollInterval is the watchdog's poll interval when Config.PollInterval is 0 (the seed's
// --gpu-poll-secs default).
const DefaultPollInterval = 500 * time.Millisecond

// Config configures a Watchdog. Source and Limit are required; every callback is optional.
type Config struct {
	// Source is polled for device memory.
	Source MemorySource
	// Limit is the limit in bytes (> 0).
	Limit int64
	// PollInterval is the time between samples (0 = DefaultPollInterval).
	PollInterval time.Duration
	// OverFor is how long usage must stay over the limit, sample after sample, before the
	// watchdog acts; 0 acts on the first sample over.
	OverFor time.Duration

	// Root, Baseline and Tree attribute memory to a process tree (see Sampler); Root 0 watches
	// the device alone.
	Root     int
	Baseline int64
	Tree     func(root int) ([]int, error)

	// Cancel stops the runaway work: cancel the running engine call's context, or kill a
	// wrapped command. Every context from Watch is cancelled as well, with the *Event as cause.
	Cancel func(ev *Event)
	// Release frees caches and returns the bytes it freed.
	Release func() (freed int64, err error)
	// Accounting returns the engine's per-category accounting for the event's report.
	Accounting func() backend.MemStats
	// OnEvent is called after the actions with the recorded event.
	OnEvent func(ev Event)
	// OnError is called when a sample fails (the watchdog keeps polling).
	OnError func(err error)
	// Logf receives notices, once each: the unified-memory fallback, missing per-process
	// figures.
	Logf func(format string, args ...any)
	// Now is the clock (nil = time.Now); tests pass a fake clock and call Poll.
	Now func() time.Time
}

// Event records one intervention: the reading that triggered it and what was done.
type Event struct {
	Time      time.Time // when the watchdog acted
	OverSince time.Time // first sample of the over-limit episode
	Limit     int64
	Reading   Reading // the sample that triggered it
	Why       string  // which quantity was over, with the numbers
	// Cancelled is the number of contexts from Watch that were cancelled.
	Cancelled int
	// Freed is what Release reported; ReleaseErr its error.
	Freed      int64
	ReleaseErr error
	// Accounting is the engine's accounting at the time, when Config.Accounting is set.
	Accounting *backend.MemStats
	// ActionErrors holds panics recovered from the callbacks.
	ActionErrors []string
}

// OverFor is how long usage had been over the limit when the watchdog acted.
func (e *Event) OverFor() time.Duration { return e.Time.Sub(e.OverSince) }

// Error summarises the event on one line; *Event is the cause of the contexts the watchdog
// cancels (context.Cause).
func (e *Event) Error() string {
	s := fmt.Sprintf("memory guard: %s for %s", e.Why, e.OverFor().Round(time.Millisecond))
	var acts []string
	if e.Cancelled > 0 {
		acts = append(acts, fmt.Sprintf("cancelled %d running call(s)", e.Cancelled))
	}
	if e.Freed > 0 {
		acts = append(acts, "released "+backend.Human(e.Freed)+" of caches")
	}
	if e.ReleaseErr != nil {
		acts = append(acts, "releasing caches failed: "+e.ReleaseErr.Error())
	}
	if len(acts) > 0 {
		s += "; " + strings.Join(acts, ", ")
	}
	return s
}

// Report formats the event with the reading and the engine's accounting, over several lines.
func (e *Event) Report() string {
	var b strings.Builder
	b.WriteString(e.Error())
	r := e.Reading
	fmt.Fprintf(&b, "\n  device in use %s", backend.Human(r.DeviceUsed))
	if r.DeviceTotal > 0 {
		fmt.Fprintf(&b, " of %s", backend.Human(r.DeviceTotal))
	}
	fmt.Fprintf(&b, ", limit %s", backend.Human(e.Limit))
	if r.Tree > 0 || len(r.PIDs) > 0 {
		fmt.Fprintf(&b, "\n  watched processes %v: %s", r.PIDs, backend.Human(r.Tree))
	}
	if r.Note != "" {
		b.WriteString("\n  note: " + r.Note)
	}
	if e.Accounting != nil {
		b.WriteString("\n  engine accounting: " + strings.ReplaceAll(e.Accounting.String(), "\n", "\n  "))
	}
	for _, a := range e.ActionErrors {
		b.WriteString("\n  action failed: " + a)
	}
	return b.String()
}

// Stats summarises the watchdog's samples.
type Stats struct {
	Samples    int     // successful samples
	Errors     int     // failed samples
	LastErr    error   // the last sample error
	PeakDevice Reading // the sample with the most device bytes in use
	PeakTree   Reading // the sample with the most bytes attributed to the process tree
	Events     int     // interventions
}

// Watchdog polls device memory and acts when it stays over the limit. Its methods are safe for
// concurrent use. It never kills the hosting process; what it does is up to Config's callbacks.
type Watchdog struct {
	cfg     Config
	sampler *Sampler

	pollMu sync.Mutex // serialises Poll

	mu        sync.Mutex
	overSince time.Time
	fired     bool
	events    []Event
	stats     Stats
	saidTotal bool
	saidNote  bool
	watched   map[int]context.CancelCauseFunc
	nextID    int
	stop      chan struct{}
	done      chan struct{}
}

// New checks cfg and returns a stopped watchdog.
func New(cfg Config) (*Watchdog, error) {
	if cfg.Source == nil {
		return nil, errors.New("guard.New: Config.Source is nil")
	}
	if cfg.Limit <= 0 {
		return nil, fmt.Errorf("guard.New: Config.Limit is %d bytes, want > 0", cfg.Limit)
	}
	if cfg.PollInterval < 0 || cfg.OverFor < 0 {
		return nil, fmt.Errorf("guard.New: negative PollInterval %s or OverFor %s", cfg.PollInterval, cfg.OverFor)
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = DefaultPollInterval
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Sampler{Source: cfg.Source, Root: cfg.Root, Baseline: cfg.Baseline, Tree: cfg.Tree, Now: cfg.Now}
	return &Watchdog{cfg: cfg, sampler: s, watched: map[int]context.CancelCauseFunc{}}, nil
}

// Limit returns the configured limit in bytes.
func (w *Watchdog) Limit() int64 { return w.cfg.Limit }

// Watch returns a context the watchdog cancels, with the *Event as its cause, when it acts
// while the context is registered; done unregisters it and cancels it (call it when the
// engine call returns).
func (w *Watchdog) Watch(parent context.Context) (ctx context.Context, done func()) {
	ctx, cancel := context.WithCancelCause(parent)
	w.mu.Lock()
	id := w.nextID
	w.nextID++
	w.watched[id] = cancel
	w.mu.Unlock()
	return ctx, func() {
		w.mu.Lock()
		delete(w.watched, id)
		w.mu.Unlock()
		cancel(context.Canceled)
	}
}

// Poll takes one sample and acts if usage has been over the limit for OverFor. It returns the
// event when it acted, and the sample's error when the sample failed. Start calls it every
// PollInterval; tests may call it directly with a fake clock.
func (w *Watchdog) Poll() (*Event, error) {
	w.pollMu.Lock()
	defer w.pollMu.Unlock()
	r, err := w.sampler.Sample()
	w.mu.Lock()
	if err != nil {
		w.stats.Errors++
		w.stats.LastErr = err
		w.mu.Unlock()
		if w.cfg.OnError != nil {
			w.cfg.OnError(err)
		}
		return nil, err
	}
	w.stats.Samples++
	if r.DeviceUsed > w.stats.PeakDevice.DeviceUsed || w.stats.Samples == 1 {
		w.stats.PeakDevice = r
	}
	if r.Tree > w.stats.PeakTree.Tree || w.stats.Samples == 1 {
		w.stats.PeakTree = r
	}
	var notice string
	switch {
	case r.TreeFromTotal && !w.saidTotal:
		w.saidTotal, notice = true, r.Note
	case r.Note != "" && !r.TreeFromTotal && !w.saidNote:
		w.saidNote, notice = true, r.Note
	}
	over, why := r.Over(w.cfg.Limit)
	if !over {
		w.overSince, w.fired = time.Time{}, false
		w.mu.Unlock()
		w.logf(notice)
		return nil, nil
	}
	if w.overSince.IsZero() {
		w.overSince = r.Time
	}
	if w.fired || r.Time.Sub(w.overSince) < w.cfg.OverFor {
		w.mu.Unlock()
		w.logf(notice)
		return nil, nil
	}
	w.fired = true
	ev := &Event{Time: r.Time, OverSince: w.overSince, Limit: w.cfg.Limit, Reading: r, Why: why}
	cancels := make([]context.CancelCauseFunc, 0, len(w.watched))
	for id, c := range w.watched {
		cancels = append(cancels, c)
		delete(w.watched, id)
	}
	w.mu.Unlock()
	w.logf(notice)

	for _, c := range cancels {
		c(ev)
	}
	ev.Cancelled = len(cancels)
	if w.cfg.Cancel != nil {
		w.guarded(ev, "cancel", func() { w.cfg.Cancel(ev) })
	}
	if w.cfg.Release != nil {
		w.guarded(ev, "release", func() { ev.Freed, ev.ReleaseErr = w.cfg.Release() })
	}
	if w.cfg.Accounting != nil {
		w.guarded(ev, "accounting", func() {
			st := w.cfg.Accounting()
			ev.Accounting = &st
		})
	}
	w.mu.Lock()
	w.events = append(w.events, *ev)
	w.stats.Events++
	w.mu.Unlock()
	if w.cfg.OnEvent != nil {
		w.guarded(ev, "on-event", func() { w.cfg.OnEvent(*ev) })
	}
	return ev, nil
}

func (w *Watchdog) logf(notice string) {
	if notice != "" && w.cfg.Logf != nil {
		w.cfg.Logf("%s", notice)
	}
}

// guarded runs an action, recording a panic in the event instead of crashing the host.
func (w *Watchdog) guarded(ev *Event, name string, f func()) {
	defer func() {
		if p := recover(); p != nil {
			ev.ActionErrors = append(ev.ActionErrors, fmt.Sprintf("%s panicked: %v", name, p))
		}
	}()
	f()
}

// Start polls in a goroutine: a first sample at once, then one every PollInterval, until Stop.
// Starting a running watchdog is an error.
func (w *Watchdog) Start() error {
	w.mu.Lock()
	if w.stop != nil {
		w.mu.Unlock()
		return errors.New("guard: watchdog already running")
	}
	stop, done := make(chan struct{}), make(chan struct{})
	w.stop, w.done = stop, done
	w.mu.Unlock()
	go func() {
		defer close(done)
		t := time.NewTicker(w.cfg.PollInterval)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			default:
			}
			w.Poll()
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	return nil
}

// Stop ends polling and waits for the polling goroutine, so no callback runs after it returns.
// Stopping a stopped watchdog does nothing; a stopped watchdog may be started again. Stop must
// not be called from the watchdog's own callbacks (it would wait for itself).
func (w *Watchdog) Stop() {
	w.mu.Lock()
	stop, done := w.stop, w.done
	w.stop, w.done = nil, nil
	w.mu.Unlock()
	if stop == nil {
		return
	}
	close(stop)
	<-done
}

// Running reports whether the polling goroutine is started.
func (w *Watchdog) Running() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.stop != nil
}

// Events returns the recorded interventions, oldest first.
func (w *Watchdog) Events() []Event {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]Event(nil), w.events...)
}

// Stats returns the sample counts and peaks so far.
func (w *Watchdog) Stats() Stats {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.stats
}
