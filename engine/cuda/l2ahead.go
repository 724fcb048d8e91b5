package cuda

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// L2 look-ahead for the decode GEMVs (kernels/gemv_tcp.cu, l2_prefetch in common.cuh).
//
// Why: a batch-1 decode layer reads its 56.8 MB of NVFP4 weights in four GEMV launches, but
// DRAM is busy only while those launches stream: during each launch's fixed part (waiting for
// the previous kernel, staging x, merging K slices) and during the attention and q/k-norm
// kernels between them it idles — a layer takes ~58 µs where its bytes need ~16 (NOTES.md,
// session 14). A GEMV launch's weights do not depend on anything computed, so a launch can ask
// L2 to fetch the weights of the launch that follows it while it runs, and that launch then
// reads from L2.
//
// The backend sees single launches, not the model, so it learns the order: every gemv_tcp launch
// is keyed by its first weight's address, and l2Ahead remembers which launch (key and weight
// regions) followed each key the last time. A decode step repeats the previous step's launch
// sequence, so from the second step on each launch knows what comes next — including across
// the step boundary (the last layer's down projection is followed by the first layer's q/k/v).
// A changed order (another batch size, another model) is relearned as it happens; a wrong guess
// costs only bandwidth, never a wrong value.

// l2Region is a byte range of device memory to fetch into L2.
type l2Region struct {
	ptr   uint64
	bytes int64
}

// l2Next is what followed a launch: the next launch's key and the regions it read.
type l2Next struct {
	key     uint64
	regions []l2Region
}

// l2Ahead learns the decode GEMVs' launch order (owner goroutine). The zero value is off.
type l2Ahead struct {
	// dist are the distances looked ahead: {1} fetches the next launch's weights, {2} the one
	// after it, {1, 2} both.
	dist []int
	// max caps the bytes one launch asks for (0: off): L2 is 50 MB on the H100/H200 and the
	// launch's own weights pass through it too.
	max int64
	// evictLast marks the prefetched lines evict-last in L2.
	evictLast bool
	prev      uint64
	next      map[uint64]l2Next
}

// on reports whether launches look ahead.
func (a *l2Ahead) on() bool { return a.max > 0 && len(a.dist) > 0 }

// observe records a launch keyed key that reads regions and returns the regions to prefetch
// during it: for each distance in dist, what the launch that far ahead read the last time this
// sequence ran, all of it capped at max bytes (each region keeps the same fraction, from its
// start: a GEMV's warps begin with the first tiles of every product).
func (a *l2Ahead) observe(key uint64, regions []l2Region) []l2Region {
	if !a.on() || key == 0 {
		return nil
	}
	if a.next == nil {
		a.next = map[uint64]l2Next{}
	}
	if a.prev != 0 {
		a.next[a.prev] = l2Next{key, regions}
	}
	a.prev = key
	var out []l2Region
	seen := map[uint64]bool{key: true}
	for _, d := range a.dist {
		k := key
		var n l2Next
		ok := true
		for i := 0; i < d && ok; i++ {
			n, ok = a.next[k]
			k = n.key
		}
		if !ok || seen[k] {
			continue // unknown yet, or the launch itself / one already listed
		}
		seen[k] = true
		out = append(out, n.regions...)
	}
	return l2Cap(out, a.max)
}

// forget drops what was learned: weights were freed and their addresses may be reused.
func (a *l2Ahead) forget() {
	a.prev, a.next = 0, nil
}

// l2Regions is how many ranges one launch takes (L2_REGIONS in kernels/common.cuh).
const l2Regions = 6

// l2Line is the granularity of the prefetches (an L2 cache line).
const l2Line = 128

// l2Cap scales regions down to at most max bytes together, each keeping the same fraction of
// itself from its start, rounded down to whole lines; empty regions are dropped.
func l2Cap(rs []l2Region, max int64) []l2Region {
	var total int64
	for _, r := range rs {
		total += r.bytes
	}
	if total <= max {
		return rs
	}
	out := make([]l2Region, 0, len(rs))
	for _, r := range rs {
		n := r.bytes * max / total / l2Line * l2Line
		if n > 0 {
			out = append(out, l2Region{r.ptr, n})
		}
	}
	return out
}

// l2AheadDefault is the look-ahead used unless QWENGO_CUDA_L2_AHEAD says otherwise: off until
// measured (NOTES.md, session 15).
var l2AheadDefault = l2Ahead{}

// parseL2Ahead reads the look-ahead's settings: ahead is "off", "" (the default) or distances
// such as "1", "2" or "1,2"; mb caps the bytes a launch prefetches ("" keeps the default's cap,
// else 32 MB); evictLast "1" marks the prefetched lines evict-last.
func parseL2Ahead(ahead, mb, evictLast string) (l2Ahead, error) {
	a := l2AheadDefault
	a.dist = slices.Clone(a.dist)
	switch ahead {
	case "":
	case "off", "0":
		return l2Ahead{}, nil
	default:
		a.dist = nil
		for _, f := range strings.Split(ahead, ",") {
			d, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || d < 1 || d > 8 {
				return l2Ahead{}, fmt.Errorf("QWENGO_CUDA_L2_AHEAD=%q: want off or distances 1..8 such as 1 or 1,2", ahead)
			}
			a.dist = append(a.dist, d)
		}
		if a.max == 0 {
			a.max = 32 << 20
		}
	}
	if mb != "" {
		n, err := strconv.ParseFloat(mb, 64)
		if err != nil || n < 0 || n > 1024 {
			return l2Ahead{}, fmt.Errorf("QWENGO_CUDA_L2_MB=%q: want megabytes from 0 to 1024", mb)
		}
		a.max = int64(n * (1 << 20))
	}
	switch evictLast {
	case "", "0":
	case "1":
		a.evictLast = true
	default:
		return l2Ahead{}, fmt.Errorf("QWENGO_CUDA_L2_EVICT_LAST=%q: want 0 or 1", evictLast)
	}
	return a, nil
}
