package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/guard"
)

// The engine's memory guard (DESIGN.md principle 4): a budget applied to the backend's
// allocator, and a watchdog over device memory that cancels the running engine call.
//
// The budget is resolved when the backend opens (and again on ConfigureGuard or SetMemoryLimit):
// GuardOptions.Limit, else $QWENGO_GPU_LIMIT_GB, else the device size minus guard.Margin; the
// CPU backend has no device size, so it runs without a limit unless one is given. An allocation
// past the budget fails; the engine call returns a *MemoryError that unwraps to the backend's
// *backend.OverBudget and prints guard.Explain's report. Nothing resident is lost.
//
// The watchdog runs while a limit is set. It polls GuardOptions.Source, or else, in order: the
// backend's own view of the device (the CUDA backend's DeviceUsage, cuMemGetInfo), NVML (GPU 0)
// for a device backend without one, and the backend's accounting. When usage stays over the
// limit for GuardOptions.OverFor it cancels every engine call in flight (their contexts come
// from Watch; the call returns an error naming the guard and the numbers), releases the
// backend's caches (ReleaseCache) and reports the event (GuardOptions.Report, by default
// Event.Report on standard error, which the kernel routes to the running cell).

// GuardOptions configure the engine's memory guard.
type GuardOptions struct {
	// Limit is the budget in bytes, as guard.ResolveBudget's explicit limit: guard.Unset picks
	// $QWENGO_GPU_LIMIT_GB, else the device size minus guard.Margin; 0 means no limit.
	// DefaultGuardOptions sets guard.Unset.
	Limit int64
	// PollInterval is the watchdog's period (0 = guard.DefaultPollInterval, 0.5 s); a negative
	// value turns the watchdog off (the budget still applies).
	PollInterval time.Duration
	// OverFor is how long usage must stay over the limit before the watchdog acts (0 = the
	// first sample over).
	OverFor time.Duration
	// Source is the memory the watchdog polls; nil chooses (see the package notes in
	// memguard.go): the backend's device view, NVML, the backend's accounting.
	Source guard.MemorySource
	// SourceName describes Source for banners ("" = "custom").
	SourceName string
	// Report receives each watchdog event after its actions; nil writes Event.Report to
	// standard error.
	Report func(ev guard.Event)
}

// DefaultGuardOptions are the options in force before ConfigureGuard: limit from the
// environment or the device, poll every 0.5 s, act on the first sample over.
func DefaultGuardOptions() GuardOptions { return GuardOptions{Limit: guard.Unset} }

// GuardStatus describes the memory guard for banners and %mem.
type GuardStatus struct {
	// Budget is the limit in force and where it came from.
	Budget guard.Budget
	// Applied reports whether the backend enforces the budget (it has SetBudget).
	Applied bool
	// Watching reports whether the watchdog is polling; Source names what it polls.
	Watching     bool
	Source       string
	PollInterval time.Duration
	OverFor      time.Duration
	// Events is the number of watchdog interventions so far; Last the most recent one.
	Events int
	Last   *guard.Event
	// Note explains a fallback or a failure (the budget could not be resolved, NVML missing, …).
	Note string
}

// String formats the status on one line, as the kernel banner shows it.
func (s GuardStatus) String() string {
	var b strings.Builder
	b.WriteString("memory budget " + s.Budget.String())
	if !s.Applied && !s.Budget.Unlimited() {
		b.WriteString(" (not enforced: the backend takes no budget)")
	}
	if s.Watching {
		fmt.Fprintf(&b, "; watchdog on %s every %s, acts after %s over", s.Source, s.PollInterval, s.OverFor)
	} else {
		b.WriteString("; no watchdog")
	}
	if s.Events > 0 {
		fmt.Fprintf(&b, "; %d intervention(s)", s.Events)
	}
	if s.Note != "" {
		b.WriteString(" [" + s.Note + "]")
	}
	return b.String()
}

// Short formats the budget and the watchdog briefly, for banners: "memory budget 133.00 GiB
// (device total 140.00 GiB minus margin 7.00 GiB), watchdog every 500ms" or "no memory budget".
func (s GuardStatus) Short() string {
	if s.Budget.Unlimited() {
		return "no memory budget"
	}
	out := "memory budget " + s.Budget.String()
	if !s.Applied {
		out += " not enforced"
	}
	if s.Watching {
		out += ", watchdog every " + s.PollInterval.String()
		if s.OverFor > 0 {
			out += " acting after " + s.OverFor.String() + " over"
		}
	} else {
		out += ", no watchdog"
	}
	return out
}

// MemoryError is returned by engine calls when an allocation would cross the memory budget:
// it unwraps to the backend's *backend.OverBudget, and its message is guard.Explain's report
// (request, bytes in use per category, budget, largest consumers). Nothing was lost: the model
// and its caches stay usable, and the call may be retried after freeing memory or raising the
// limit (SetMemoryLimit).
type MemoryError struct {
	// Err is the failure as the call saw it (wrapping *backend.OverBudget).
	Err error
	// Stats is the backend's accounting when the call returned.
	Stats backend.MemStats
}

// Error is guard.Explain's report, with the failing operation when it adds something.
func (e *MemoryError) Error() string {
	s := "engine: " + guard.Explain(e.Err, e.Stats)
	var ob *backend.OverBudget
	if errors.As(e.Err, &ob) && e.Err.Error() != ob.Error() {
		s += "\n  failed in: " + e.Err.Error()
	}
	return s
}

// Unwrap returns the call's error.
func (e *MemoryError) Unwrap() error { return e.Err }

// budgeter is implemented by backends whose allocator enforces a budget (engine/cpu,
// engine/cuda).
type budgeter interface{ SetBudget(bytes int64) }

// cacheReleaser is implemented by backends that keep freed blocks for reuse (engine/cuda).
type cacheReleaser interface{ ReleaseCache() error }

// deviceUser is implemented by backends that can read their device's memory from any goroutine,
// while a call runs (engine/cuda: cuMemGetInfo).
type deviceUser interface {
	DeviceUsage() (used, total int64, err error)
}

var memGuard struct {
	mu      sync.Mutex
	opt     GuardOptions
	b       backend.Backend // the backend the guard was applied to (nil before Backend opens)
	budget  guard.Budget
	applied bool
	wd      *guard.Watchdog
	src     guard.MemorySource
	srcName string
	srcErr  error
	closers []func()
	note    string
}

// applyMu serialises applyGuard.
var applyMu sync.Mutex

// inFlight counts engine calls running under Watch.
var inFlight atomic.Int64

func init() { memGuard.opt = DefaultGuardOptions() }

// ConfigureGuard sets the memory guard's options (qwenkernel and qwenrepl call it from
// --gpu-limit-gb, --gpu-poll-secs and --gpu-over-secs before anything else). When the backend is
// already open the budget is resolved and applied and the watchdog restarted now; otherwise
// when Backend first opens it. A malformed $QWENGO_GPU_LIMIT_GB is reported here.
func ConfigureGuard(opt GuardOptions) error {
	if opt.Limit < 0 && opt.Limit != guard.Unset {
		return fmt.Errorf("engine: memory limit %d bytes: want ≥ 0 (or guard.Unset)", opt.Limit)
	}
	if opt.OverFor < 0 {
		return fmt.Errorf("engine: watchdog over-limit time %s: want ≥ 0", opt.OverFor)
	}
	if opt.Limit == guard.Unset {
		if _, err := guard.ResolveBudget(guard.Unset, nil, nil); err != nil && !errors.Is(err, guard.ErrNoBudget) {
			return fmt.Errorf("engine: %w", err)
		}
	}
	memGuard.mu.Lock()
	memGuard.opt = opt
	b := memGuard.b
	memGuard.mu.Unlock()
	if b != nil {
		return applyGuard(b)
	}
	return nil
}

// SetMemoryLimit sets the budget to bytes (0 = no limit) on the backend and restarts the
// watchdog with it; guard.Unset goes back to the environment or device default. Cells use it
// to lower the limit for an experiment or to raise it after a *MemoryError.
func SetMemoryLimit(bytes int64) error {
	memGuard.mu.Lock()
	opt := memGuard.opt
	memGuard.mu.Unlock()
	opt.Limit = bytes
	if err := ConfigureGuard(opt); err != nil {
		return err
	}
	Backend() // opens the backend, which applies the guard, if nobody has yet
	return nil
}

// MemoryGuard returns the memory guard's status (opening the backend if needed).
func MemoryGuard() GuardStatus {
	Backend()
	memGuard.mu.Lock()
	defer memGuard.mu.Unlock()
	st := GuardStatus{Budget: memGuard.budget, Applied: memGuard.applied, Note: memGuard.note,
		PollInterval: memGuard.opt.PollInterval, OverFor: memGuard.opt.OverFor}
	if st.PollInterval == 0 {
		st.PollInterval = guard.DefaultPollInterval
	}
	if w := memGuard.wd; w != nil {
		st.Watching = w.Running()
		st.Source = memGuard.srcName
		if evs := w.Events(); len(evs) > 0 {
			st.Events = len(evs)
			last := evs[len(evs)-1]
			st.Last = &last
		}
	}
	return st
}

// GuardEvents returns the watchdog's interventions since the guard was last (re)configured.
func GuardEvents() []guard.Event {
	memGuard.mu.Lock()
	w := memGuard.wd
	memGuard.mu.Unlock()
	if w == nil {
		return nil
	}
	return w.Events()
}

// StopGuard stops the watchdog (the budget stays). ConfigureGuard or SetMemoryLimit start it
// again.
func StopGuard() {
	memGuard.mu.Lock()
	w := memGuard.wd
	memGuard.wd = nil
	closers := memGuard.closers
	memGuard.closers = nil
	memGuard.mu.Unlock()
	if w != nil {
		w.Stop()
	}
	for _, c := range closers {
		c()
	}
}

// DeviceMemory reads the device's bytes in use (all processes) and its size from the memory
// source the watchdog polls (the backend's device view, NVML or the backend's accounting).
func DeviceMemory() (used, total int64, err error) {
	b := Backend()
	memGuard.mu.Lock()
	src, name, serr := memGuard.src, memGuard.srcName, memGuard.srcErr
	memGuard.mu.Unlock()
	if src == nil {
		if serr != nil {
			return 0, 0, serr
		}
		src, name = chooseSource(b)
	}
	if used, err = src.Used(); err != nil {
		return 0, 0, fmt.Errorf("engine: device memory (%s): %w", name, err)
	}
	total, err = src.Total()
	if err != nil {
		return used, 0, fmt.Errorf("engine: device memory (%s): %w", name, err)
	}
	return used, total, nil
}

// MemoryReport is the %mem report: the backend's accounting by category with the peak, the
// budget and where it came from, the device's bytes in use and size, and the watchdog.
func MemoryReport() string {
	var b strings.Builder
	b.WriteString(Memory().String())
	st := MemoryGuard()
	b.WriteString("\n" + st.String())
	if used, total, err := DeviceMemory(); err != nil {
		b.WriteString("\ndevice memory: " + err.Error())
	} else if total > 0 {
		fmt.Fprintf(&b, "\ndevice: %s in use of %s (all processes; %s)", backend.Human(used), backend.Human(total), sourceOr(st.Source))
	} else {
		fmt.Fprintf(&b, "\ndevice: %s in use (%s)", backend.Human(used), sourceOr(st.Source))
	}
	if st.Last != nil {
		b.WriteString("\nlast intervention: " + st.Last.Error())
	}
	return b.String()
}

func sourceOr(s string) string {
	if s == "" {
		return "backend accounting"
	}
	return s
}

// Watch returns a context derived from parent that the memory watchdog cancels (with the
// *guard.Event as its cause) when it acts, and done, to call when the work ends. Engine calls
// use it; long work outside the façade (a training loop in a cell) may too:
//
//	ctx, done := engine.Watch(engine.CurrentContext())
//	defer done()
func Watch(parent context.Context) (context.Context, func()) {
	memGuard.mu.Lock()
	w := memGuard.wd
	memGuard.mu.Unlock()
	inFlight.Add(1)
	if w == nil {
		return parent, func() { inFlight.Add(-1) }
	}
	ctx, done := w.Watch(parent)
	return ctx, func() { done(); inFlight.Add(-1) }
}

// call starts an engine call: its context (CurrentContext under the watchdog) and the function
// that ends it, turning the call's error into a *MemoryError or a guard cancellation.
func call() (context.Context, func(err error) error) {
	ctx, done := Watch(CurrentContext())
	return ctx, func(err error) error {
		defer done()
		return guardError(ctx, err)
	}
}

// guardError names the guard in err: an over-budget allocation becomes a *MemoryError, a call
// the watchdog cancelled gets the event (errors.As finds the *guard.Event).
func guardError(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	var me *MemoryError
	if errors.As(err, &me) {
		return err
	}
	var ob *backend.OverBudget
	if errors.As(err, &ob) {
		return &MemoryError{Err: err, Stats: Memory()}
	}
	var ev *guard.Event
	if ctx.Err() != nil && errors.As(context.Cause(ctx), &ev) && !errors.As(err, new(*guard.Event)) {
		return fmt.Errorf("engine: stopped by the %w (%w)", ev, err)
	}
	return err
}

// applyGuard resolves the budget for b, applies it and (re)starts the watchdog.
func applyGuard(b backend.Backend) (rerr error) {
	applyMu.Lock()
	defer applyMu.Unlock()
	StopGuard()
	memGuard.mu.Lock()
	defer memGuard.mu.Unlock()
	defer func() {
		if rerr != nil {
			memGuard.note = rerr.Error()
		}
	}()
	opt := memGuard.opt
	memGuard.b = b
	memGuard.note, memGuard.src, memGuard.srcName, memGuard.srcErr = "", nil, "", nil
	total := func() (int64, error) {
		if t := b.Memory().Total; t > 0 {
			return t, nil
		}
		return 0, fmt.Errorf("%s has no device size (host memory)", b.Name())
	}
	budget, err := guard.ResolveBudget(opt.Limit, nil, total)
	if err != nil {
		if !errors.Is(err, guard.ErrNoBudget) {
			rerr = fmt.Errorf("engine: %w", err)
		}
		budget = guard.Budget{Source: "none given; " + b.Name() + " has no device size"}
		if rerr != nil {
			budget.Source = err.Error()
		}
	}
	memGuard.budget = budget
	bg, ok := b.(budgeter)
	memGuard.applied = ok
	if ok {
		bg.SetBudget(max(budget.Limit, 0))
	}
	src, name := opt.Source, opt.SourceName
	if src != nil && name == "" {
		name = "custom"
	}
	if src == nil {
		var closer func()
		src, name, closer = chooseSourceClosing(b)
		if closer != nil {
			memGuard.closers = append(memGuard.closers, closer)
		}
	}
	memGuard.src, memGuard.srcName = src, name
	if budget.Unlimited() || opt.PollInterval < 0 {
		return rerr
	}
	report := opt.Report
	if report == nil {
		report = func(ev guard.Event) { writeReport(os.Stderr, ev) }
	}
	cfg := guard.Config{
		Source:       src,
		Limit:        budget.Limit,
		PollInterval: opt.PollInterval,
		OverFor:      opt.OverFor,
		Accounting:   b.Memory,
		OnEvent:      report,
	}
	if rc, ok := b.(cacheReleaser); ok {
		cfg.Release = func() (int64, error) {
			before := b.Memory().Used()
			err := rc.ReleaseCache()
			return max(0, before-b.Memory().Used()), err
		}
	}
	var saidErr atomic.Bool
	cfg.OnError = func(err error) {
		if saidErr.CompareAndSwap(false, true) {
			fmt.Fprintf(os.Stderr, "memory guard: reading device memory (%s) failed; the watchdog keeps polling: %v\n", name, err)
		}
	}
	w, err := guard.New(cfg)
	if err != nil {
		return errors.Join(rerr, fmt.Errorf("engine: memory watchdog: %w", err))
	}
	if err := w.Start(); err != nil {
		return errors.Join(rerr, fmt.Errorf("engine: memory watchdog: %w", err))
	}
	memGuard.wd = w
	return rerr
}

// writeReport prints a watchdog event for the user.
func writeReport(w io.Writer, ev guard.Event) {
	fmt.Fprintf(w, "%s\n", ev.Report())
}

// chooseSourceClosing picks the watchdog's memory source for b (see the package notes) and
// returns a closer for sources that hold a library handle.
func chooseSourceClosing(b backend.Backend) (guard.MemorySource, string, func()) {
	if d, ok := b.(deviceUser); ok {
		return deviceSource{d}, "cuMemGetInfo", nil
	}
	if b.Memory().Total > 0 {
		if n, err := guard.OpenNVML(0); err == nil {
			return n, "NVML GPU 0 " + n.Name(), func() { n.Close() }
		}
	}
	return accountingSource{b}, "backend accounting", nil
}

// chooseSource is chooseSourceClosing for a one-off read (NVML is not opened for it).
func chooseSource(b backend.Backend) (guard.MemorySource, string) {
	if d, ok := b.(deviceUser); ok {
		return deviceSource{d}, "cuMemGetInfo"
	}
	return accountingSource{b}, "backend accounting"
}

// deviceSource adapts a backend's DeviceUsage to guard.MemorySource.
type deviceSource struct{ d deviceUser }

func (s deviceSource) Used() (int64, error) {
	u, _, err := s.d.DeviceUsage()
	return u, err
}

func (s deviceSource) Total() (int64, error) {
	_, t, err := s.d.DeviceUsage()
	return t, err
}

// accountingSource reads the backend's own accounting: what the engine allocated.
type accountingSource struct{ b backend.Backend }

func (s accountingSource) Used() (int64, error) { return s.b.Memory().Used(), nil }

func (s accountingSource) Total() (int64, error) { return s.b.Memory().Total, nil }
