package backend

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// KernelTime is one kernel's launches within a timed profiling range: how many, and their
// device time summed (each launch timed alone, so overlapped launches count in full).
type KernelTime struct {
	Name  string
	Count int
	Total time.Duration
}

// Profiler is implemented by backends that can delimit a profiling range (CUDA: the
// cuProfilerStart/Stop capture range external profilers honour) and time each kernel launched
// inside it.
type Profiler interface {
	// ProfileRange opens (on) or closes the range.
	ProfileRange(on bool) error
	// SetKernelTiming makes the ranges opened from now on time every kernel (CUDA: also
	// QWENGO_CUDA_KERNEL_TIMES=1), or stops doing so.
	SetKernelTiming(on bool)
	// KernelTimes returns the last closed range's kernels, longest total first; nil when the
	// range was not timed.
	KernelTimes() []KernelTime
}

// Profile runs f in a timed profiling range of b and returns the kernels it launched, longest
// total first — in a notebook cell, `backend.Profile(b, func() error { … })` for one decode
// step or training step. It fails for backends without a kernel timer (the CPU).
func Profile(b Backend, f func() error) ([]KernelTime, error) {
	p, ok := b.(Profiler)
	if !ok {
		return nil, fmt.Errorf("profile: the %s backend has no kernel timer (the CUDA backend has)", b.Name())
	}
	p.SetKernelTiming(true)
	defer p.SetKernelTiming(false)
	if err := p.ProfileRange(true); err != nil {
		return nil, fmt.Errorf("profile: %w", err)
	}
	ferr := f()
	if err := p.ProfileRange(false); err != nil {
		return nil, errors.Join(ferr, fmt.Errorf("profile: %w", err))
	}
	return p.KernelTimes(), ferr
}

// FormatKernelTimes renders kernel times as a table, longest first as given: the top kernels
// with their launches, total, share and time per launch, then what the rest add up to.
func FormatKernelTimes(times []KernelTime, top int) string {
	if len(times) == 0 {
		return ""
	}
	var total time.Duration
	for _, t := range times {
		total += t.Total
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d kernels, %.3f ms (each launch timed alone)\n", len(times), total.Seconds()*1e3)
	for i, t := range times {
		if i == top {
			var rest time.Duration
			for _, u := range times[i:] {
				rest += u.Total
			}
			fmt.Fprintf(&b, "  ... %d more: %.3f ms\n", len(times)-i, rest.Seconds()*1e3)
			break
		}
		fmt.Fprintf(&b, "  %-40s %6d× %10.3f ms %5.1f%%  %8.2f µs each\n", t.Name, t.Count, t.Total.Seconds()*1e3,
			100*t.Total.Seconds()/total.Seconds(), t.Total.Seconds()*1e6/float64(t.Count))
	}
	return b.String()
}
