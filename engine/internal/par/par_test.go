package par

import (
	"runtime"
	"sync"
	"testing"
)

// TestFor: every index of [0, n) is visited exactly once, in ranges of at least minPer items
// (one range when there is room for no more), at most GOMAXPROCS of them.
func TestFor(t *testing.T) {
	for _, c := range []struct{ n, minPer int }{
		{0, 1}, {1, 1}, {7, 1}, {64, 1}, {1000, 10}, {1000, 600}, {1 << 20, 1 << 18}, {5, 0},
	} {
		seen := make([]int, c.n)
		var mu sync.Mutex
		ranges := 0
		For(c.n, c.minPer, func(lo, hi int) {
			mu.Lock()
			ranges++
			mu.Unlock()
			if lo > hi || (hi-lo < c.minPer && !(lo == 0 && hi == c.n)) {
				t.Errorf("n=%d minPer=%d: range [%d, %d)", c.n, c.minPer, lo, hi)
			}
			for i := lo; i < hi; i++ {
				seen[i]++ // ranges are disjoint: no two goroutines write one index
			}
		})
		for i, k := range seen {
			if k != 1 {
				t.Fatalf("n=%d minPer=%d: index %d visited %d times", c.n, c.minPer, i, k)
			}
		}
		if want := max(1, min(runtime.GOMAXPROCS(0), c.n/max(c.minPer, 1))); ranges != want {
			t.Errorf("n=%d minPer=%d: %d ranges, want %d", c.n, c.minPer, ranges, want)
		}
	}
}
