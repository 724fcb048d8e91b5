//go:build cuda

package cuda

import (
	"testing"
	"time"

	"github.com/qwengo/qwengo/engine/backend"
)

// TestDeviceUsage: DeviceUsage agrees with DeviceMemory, sees an allocation, and answers while
// the owner goroutine is busy (the memory watchdog reads it during long calls).
func TestDeviceUsage(t *testing.T) {
	g := openGPU(t)
	used, total, err := g.DeviceUsage()
	if err != nil {
		t.Fatal(err)
	}
	free, total2, err := g.DeviceMemory()
	if err != nil {
		t.Fatal(err)
	}
	if total != total2 || used <= 0 || used > total || abs64(used-(total-free)) > 256<<20 {
		t.Fatalf("DeviceUsage %d of %d; DeviceMemory %d free of %d", used, total, free, total2)
	}
	x, err := g.Alloc(backend.Activations, 256, 1<<20) // ≥ 512 MiB
	if err != nil {
		t.Fatal(err)
	}
	after, _, err := g.DeviceUsage()
	g.Free(x)
	g.ReleaseCache()
	if err != nil || after-used < 400<<20 {
		t.Fatalf("after allocating ≥ 512 MiB: %d in use (before %d), %v", after, used, err)
	}
	err = g.Run(func() error {
		ch := make(chan error, 1)
		go func() { _, _, err := g.DeviceUsage(); ch <- err }()
		select {
		case err := <-ch:
			return err
		case <-time.After(5 * time.Second):
			t.Error("DeviceUsage waited for the busy owner goroutine")
			return nil
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s in use of %s", backend.Human(used), backend.Human(total))
}

func abs64(x int64) int64 {
	if x < 0 {
		return -x
	}
	return x
}
