// Package par splits a loop over [0, n) into contiguous ranges run on several goroutines: the
// engine's CPU code (tensor's conversions, grad's per-row ops) shares this one form instead of a
// copy each.
package par

import (
	"runtime"
	"sync"
)

// For runs fn over [0, n) as contiguous ranges, each on its own goroutine: at most GOMAXPROCS
// ranges of at least minPer items, as even as integer division makes them. With room for only
// one range (n < 2·minPer, or one core) fn runs on the caller. fn must not depend on where the
// ranges split.
func For(n, minPer int, fn func(lo, hi int)) {
	workers := min(runtime.GOMAXPROCS(0), n/max(minPer, 1))
	if workers <= 1 {
		fn(0, n)
		return
	}
	var wg sync.WaitGroup
	for k := range workers {
		lo, hi := n*k/workers, n*(k+1)/workers
		wg.Go(func() { fn(lo, hi) })
	}
	wg.Wait()
}
