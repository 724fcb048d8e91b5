package guard_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/guard"
)

// An allocator checks every allocation against the budget; an over-budget request is refused
// with the backend's typed error and nothing resident is lost.
func ExampleBudget_Check() {
	b, _ := guard.ResolveBudget(108*guard.GiB, nil, nil)
	err := b.Check(backend.KVCache, 20*guard.GiB, 100*guard.GiB)
	var ob *backend.OverBudget
	fmt.Println(errors.As(err, &ob), ob.Request == 20*guard.GiB)
	fmt.Println(err)
	// Output:
	// true true
	// out of memory budget: 20.00 GiB for kv_cache with 100.00 GiB of 108.00 GiB in use
}

// A watchdog cancels the running engine call when device memory stays over the limit.
func ExampleWatchdog() {
	dev := guard.NewFake(140*guard.GiB, 4*guard.GiB) // in a session: guard.OpenNVML(0)
	w, _ := guard.New(guard.Config{
		Source:  dev,
		Limit:   108 * guard.GiB,
		Release: func() (int64, error) { return 2 * guard.GiB, nil }, // drop caches
	})
	ctx, done := w.Watch(context.Background()) // the context an engine call runs under
	defer done()

	w.Poll() // Start() polls every PollInterval; here one poll at a time
	dev.SetUsed(120 * guard.GiB)
	w.Poll()

	fmt.Println(ctx.Err() != nil)
	fmt.Println(context.Cause(ctx))
	// Output:
	// true
	// memory guard: the device has 120.00 GiB in use (all processes), over the limit 108.00 GiB for 0s; cancelled 1 running call(s), released 2.00 GiB of caches
}
