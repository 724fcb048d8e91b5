package guard

import (
	"errors"
	"sync"
)

// MemorySource reports a device's memory.
type MemorySource interface {
	// Used returns the bytes in use on the device, by all processes.
	Used() (int64, error)
	// Total returns the device's memory size in bytes.
	Total() (int64, error)
}

// Process is one process's usage of a device.
type Process struct {
	PID int
	// Used is the bytes the process holds on the device; -1 when the driver does not say
	// (NVML_VALUE_NOT_AVAILABLE).
	Used int64
}

// ProcessSource is a MemorySource that can also list per-process usage (optional: the Sampler
// checks for it with a type assertion).
type ProcessSource interface {
	MemorySource
	// Processes lists the compute processes on the device with their usage. An error wrapping
	// ErrPerProcessUnsupported means the device cannot say.
	Processes() ([]Process, error)
}

// ErrPerProcessUnsupported is wrapped by ProcessSource.Processes when the device or driver has
// no per-process figures.
var ErrPerProcessUnsupported = errors.New("per-process GPU memory not supported")

// Fake is an in-memory MemorySource and ProcessSource for tests: set its numbers, errors and
// process list at any time, from any goroutine.
type Fake struct {
	mu       sync.Mutex
	used     int64
	total    int64
	procs    []Process
	procsErr error
	err      error
	reads    int
}

// NewFake returns a fake device of total bytes with used bytes in use.
func NewFake(total, used int64) *Fake { return &Fake{total: total, used: used} }

// SetUsed sets the bytes in use.
func (f *Fake) SetUsed(n int64) {
	f.mu.Lock()
	f.used = n
	f.mu.Unlock()
}

// SetTotal sets the device size.
func (f *Fake) SetTotal(n int64) {
	f.mu.Lock()
	f.total = n
	f.mu.Unlock()
}

// SetProcesses sets the per-process list and the error Processes returns with it (nil for
// none; ErrPerProcessUnsupported to mimic a device without per-process figures).
func (f *Fake) SetProcesses(ps []Process, err error) {
	f.mu.Lock()
	f.procs = append([]Process(nil), ps...)
	f.procsErr = err
	f.mu.Unlock()
}

// SetError makes Used and Total fail with err (nil clears it).
func (f *Fake) SetError(err error) {
	f.mu.Lock()
	f.err = err
	f.mu.Unlock()
}

// Reads returns how many times Used has been called.
func (f *Fake) Reads() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reads
}

// Used returns the bytes set with SetUsed.
func (f *Fake) Used() (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reads++
	if f.err != nil {
		return 0, f.err
	}
	return f.used, nil
}

// Total returns the bytes set with SetTotal.
func (f *Fake) Total() (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return 0, f.err
	}
	return f.total, nil
}

// Processes returns the list set with SetProcesses.
func (f *Fake) Processes() ([]Process, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.procsErr != nil {
		return nil, f.procsErr
	}
	return append([]Process(nil), f.procs...), nil
}

// ErrNVMLUnavailable is wrapped by OpenNVML when the NVIDIA Management Library cannot be used:
// libnvidia-ml.so.1 is not installed (no NVIDIA driver), too old, or fails to initialise.
var ErrNVMLUnavailable = errors.New("NVML not available")
