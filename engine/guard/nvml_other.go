//go:build !linux || !cgo

package guard

import "fmt"

// NVML is a MemorySource and ProcessSource for one GPU. This build has no cgo (or is not
// Linux), so it cannot load libnvidia-ml.so.1 and OpenNVML always fails.
type NVML struct{}

// OpenNVML fails: NVML is loaded through cgo on Linux only.
func OpenNVML(index int) (*NVML, error) {
	return nil, fmt.Errorf("%w: libnvidia-ml.so.1 not loaded (built without cgo or not on Linux)", ErrNVMLUnavailable)
}

// Index returns 0.
func (n *NVML) Index() int { return 0 }

// Name returns "".
func (n *NVML) Name() string { return "" }

// ProcessAPI returns "".
func (n *NVML) ProcessAPI() string { return "" }

// Used fails.
func (n *NVML) Used() (int64, error) { return 0, ErrNVMLUnavailable }

// Total fails.
func (n *NVML) Total() (int64, error) { return 0, ErrNVMLUnavailable }

// Processes fails.
func (n *NVML) Processes() ([]Process, error) { return nil, ErrNVMLUnavailable }

// Close does nothing.
func (n *NVML) Close() error { return nil }
