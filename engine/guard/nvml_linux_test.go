//go:build linux && cgo

package guard

import (
	"errors"
	"strings"
	"testing"
)

// TestNVMLLibraryMissing takes the real loading path with a library name that does not exist.
func TestNVMLLibraryMissing(t *testing.T) {
	nvmlLoad.Lock()
	if nvmlLoad.loaded {
		nvmlLoad.Unlock()
		t.Skip("NVML already loaded in this process")
	}
	saved := nvmlLoad.lib
	nvmlLoad.lib = "libqwengo-no-such-nvml.so.1"
	nvmlLoad.Unlock()
	defer func() {
		nvmlLoad.Lock()
		nvmlLoad.lib = saved
		nvmlLoad.Unlock()
	}()
	_, err := OpenNVML(0)
	if !errors.Is(err, ErrNVMLUnavailable) || !strings.Contains(err.Error(), "NVML not available: libqwengo-no-such-nvml.so.1 not found (") {
		t.Fatalf("err = %v", err)
	}
}
