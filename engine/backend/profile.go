package backend

import "time"

// KernelTime is one kernel's launches within a timed profiling range: how many, and their
// device time summed (each launch timed alone, so overlapped launches count in full).
type KernelTime struct {
	Name  string
	Count int
	Total time.Duration
}

// Profiler is implemented by backends that can delimit a profiling range (CUDA: the
// cuProfilerStart/Stop capture range external profilers honour) and, when asked for in their
// own way (CUDA: QWENGO_CUDA_KERNEL_TIMES=1), time each kernel launched inside it.
type Profiler interface {
	// ProfileRange opens (on) or closes the range.
	ProfileRange(on bool) error
	// KernelTimes returns the last closed range's kernels, longest total first; nil when the
	// range was not timed.
	KernelTimes() []KernelTime
}
