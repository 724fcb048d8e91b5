//go:build cuda

package cuda

import (
	"fmt"
	"runtime"
)

// DeviceUsage reads the device's bytes in use (all processes: total minus cuMemGetInfo's free)
// and its size. Unlike DeviceMemory it does not go through the owner goroutine: the engine's
// memory watchdog calls it from its own goroutine while a long call holds the owner. It retains
// the device's primary context for the duration of the read, makes it current on a locked
// thread, and leaves the thread without a current context.
func (b *Backend) DeviceUsage() (used, total int64, err error) {
	if b.closed.Load() {
		return 0, 0, ErrClosed
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	// b.dev is written by setup before Open returns and never again.
	ctx, err := retainPrimaryContext(b.dev)
	if err != nil {
		return 0, 0, fmt.Errorf("cuda: device memory: %w", err)
	}
	defer releasePrimaryContext(b.dev)
	if err := setCurrent(ctx); err != nil {
		return 0, 0, fmt.Errorf("cuda: device memory: %w", err)
	}
	defer setCurrent(nil)
	free, total, err := memGetInfo()
	if err != nil {
		return 0, 0, fmt.Errorf("cuda: device memory: %w", err)
	}
	return total - free, total, nil
}
