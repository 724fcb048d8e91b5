package guard

import (
	"errors"
	"os"
	"strings"
	"testing"
)

// TestNVML reads the GPU through NVML where libnvidia-ml.so.1 is present, and checks the
// error where it is not.
func TestNVML(t *testing.T) {
	n, err := OpenNVML(0)
	if err != nil {
		if !errors.Is(err, ErrNVMLUnavailable) {
			t.Fatalf("OpenNVML: %v (does not wrap ErrNVMLUnavailable)", err)
		}
		if strings.Contains(err.Error(), "not found") && !strings.Contains(err.Error(), "NVML not available: libnvidia-ml.so.1 not found") {
			t.Fatalf("unclear error: %v", err)
		}
		if os.Getenv("QWENGO_GPU_TESTS") != "" {
			t.Fatalf("QWENGO_GPU_TESTS is set but NVML failed: %v", err)
		}
		t.Skipf("no NVML here: %v", err)
	}
	defer n.Close()
	total, _ := n.Total()
	used, err := n.Used()
	if err != nil {
		t.Fatal(err)
	}
	if total <= 0 || used < 0 || used > total {
		t.Fatalf("GPU %d %s: used %d of total %d", n.Index(), n.Name(), used, total)
	}
	procs, perr := n.Processes()
	t.Logf("GPU %d %s: total %d bytes (%.2f GiB), used %d bytes (%.2f GiB); %s: %d processes %v, err %v",
		n.Index(), n.Name(), total, float64(total)/float64(GiB), used, float64(used)/float64(GiB), n.ProcessAPI(), len(procs), procs, perr)
	for _, p := range procs {
		if p.PID <= 0 || p.Used > total {
			t.Errorf("implausible process entry %+v (struct layout?)", p)
		}
	}
	b, err := ResolveBudget(Unset, func(string) string { return "" }, n.Total)
	if err != nil || b.Limit != total-Margin(total) {
		t.Fatalf("budget from the device: %v, %v", b, err)
	}
	t.Logf("default budget: %s", b)
	if _, err := OpenNVML(1 << 20); err == nil {
		t.Fatal("GPU 1048576 opened")
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Used(); err == nil {
		t.Fatal("Used after Close succeeded")
	}
}

func TestOpenNVMLBadIndex(t *testing.T) {
	if _, err := OpenNVML(-1); err == nil {
		t.Fatal("index -1 accepted")
	}
}
