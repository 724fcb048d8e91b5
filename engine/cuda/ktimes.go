//go:build cuda

package cuda

import (
	"cmp"
	"slices"
	"time"

	"github.com/qwengo/qwengo/engine/backend"
)

// The kernel timer behind Backend.ProfileRange with QWENGO_CUDA_KERNEL_TIMES=1: every launch in
// the range (our kernels by their PTX entry names, cuBLASLt matmuls by shape, "cublasLt TN
// mxnxk") is bracketed by two events on the kernel stream, and the elapsed times are summed by
// name when the range closes. It needs no profiler (ncu replays each kernel many times: a whole training step did
// not finish in 400 s, session 5 run 6), at the price of serialising launches.

// kernelNames maps loaded kernel handles to their entry names (filled by loadModules; owner
// goroutine).
var kernelNames = map[function]string{}

// activeKernelTimer is the open timed range, nil outside one (owner goroutine).
var activeKernelTimer *kernelTimer

type timedLaunch struct {
	name       string
	start, end event
}

type kernelTimer struct {
	pending []timedLaunch
	pool    []event
	totals  map[string]*backend.KernelTime
	err     error
}

// timerFlushAt bounds the launches whose events are outstanding before they are read back.
const timerFlushAt = 2048

func newKernelTimer() *kernelTimer { return &kernelTimer{totals: map[string]*backend.KernelTime{}} }

// around records the start event of a launch of f and returns the function that records its
// end (deferred by the launcher).
func (kt *kernelTimer) around(f function) func() {
	name, ok := kernelNames[f]
	if !ok {
		name = "unnamed kernel"
	}
	return kt.aroundNamed(name)
}

func (kt *kernelTimer) aroundNamed(name string) func() {
	start, err1 := kt.event()
	end, err2 := kt.event()
	if err := cmp.Or(err1, err2); err != nil {
		kt.err = cmp.Or(kt.err, err)
		return func() {}
	}
	if err := eventRecordStream(start); err != nil {
		kt.err = cmp.Or(kt.err, err)
		return func() {}
	}
	return func() {
		if err := eventRecordStream(end); err != nil {
			kt.err = cmp.Or(kt.err, err)
			return
		}
		kt.pending = append(kt.pending, timedLaunch{name, start, end})
		if len(kt.pending) >= timerFlushAt {
			kt.flush()
		}
	}
}

func (kt *kernelTimer) event() (event, error) {
	if n := len(kt.pool); n > 0 {
		e := kt.pool[n-1]
		kt.pool = kt.pool[:n-1]
		return e, nil
	}
	return eventCreate()
}

// flush waits for the pending launches and adds their times.
func (kt *kernelTimer) flush() {
	if len(kt.pending) == 0 {
		return
	}
	if err := eventSynchronize(kt.pending[len(kt.pending)-1].end); err != nil {
		kt.err = cmp.Or(kt.err, err)
	}
	for _, l := range kt.pending {
		if ms, err := eventElapsed(l.start, l.end); err == nil {
			t := kt.totals[l.name]
			if t == nil {
				t = &backend.KernelTime{Name: l.name}
				kt.totals[l.name] = t
			}
			t.Count++
			t.Total += time.Duration(ms * float64(time.Millisecond))
		} else {
			kt.err = cmp.Or(kt.err, err)
		}
		kt.pool = append(kt.pool, l.start, l.end)
	}
	kt.pending = kt.pending[:0]
}

// finish reads the outstanding launches, frees the events and returns the totals, longest
// first.
func (kt *kernelTimer) finish() ([]backend.KernelTime, error) {
	kt.flush()
	for _, e := range kt.pool {
		eventDestroy(e)
	}
	kt.pool = nil
	out := make([]backend.KernelTime, 0, len(kt.totals))
	for _, t := range kt.totals {
		out = append(out, *t)
	}
	slices.SortFunc(out, func(a, b backend.KernelTime) int {
		return cmp.Or(cmp.Compare(b.Total, a.Total), cmp.Compare(a.Name, b.Name))
	})
	return out, kt.err
}
