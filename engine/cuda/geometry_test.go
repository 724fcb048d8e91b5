//go:build cuda

package cuda

import "testing"

// TestGEMVTCBSlice checks the multi-row GEMV's K slices: equal lengths that cover K's 128-wide
// steps, within the staged rows' shared memory, the forced length honoured where it fits, and
// independent of anything but T and K (so fused and separate launches sum alike).
func TestGEMVTCBSlice(t *testing.T) {
	for _, c := range []struct{ T, K, force, want int }{
		{1, 2560, 0, 4}, {8, 2560, 0, 4}, {8, 9728, 0, 4}, {8, 4096, 0, 4}, {1, 128, 0, 1},
		{8, 2560, 8, 7}, {8, 25600, 20, 11}, {1, 25600, 100, 67}, {3, 1152, 0, 3},
	} {
		got := gemvTCBSlice(c.T, c.K, c.force)
		steps := c.K / 128
		slices := (steps + got - 1) / got
		switch {
		case got != c.want:
			t.Errorf("T=%d K=%d force=%d: slice %d steps, want %d", c.T, c.K, c.force, got, c.want)
		case c.T*got*512 > gemvTCBSmem:
			t.Errorf("T=%d K=%d: slice %d needs %d bytes of shared memory (limit %d)", c.T, c.K, got, c.T*got*512, gemvTCBSmem)
		case (slices-1)*got >= steps:
			t.Errorf("T=%d K=%d: %d slices of %d steps leave an empty slice for %d steps", c.T, c.K, slices, got, steps)
		}
	}
}

// TestGEMVTCPSlice checks the resident GEMV's K slices: 8 steps for K ≥ gemvTCPLongK, the
// block merge's for one pass (one to four rows) below it, the multi-row GEMV's for two passes,
// the forced length over all.
func TestGEMVTCPSlice(t *testing.T) {
	for _, c := range []struct{ T, K, force, want int }{
		{1, 9728, 0, 6}, {4, 9728, 0, 6}, {5, 9728, 0, 8}, {8, 9728, 0, 8}, {1, 8192, 0, 6}, {1, 2560, 0, 5}, {4, 2560, 0, 5}, {5, 2560, 0, 4},
		{8, 2560, 0, 4}, {1, 4096, 0, 4}, {8, 4096, 0, 4}, {1, 9728, 2, 2}, {1, 2560, 4, 4}, {8, 25600, 0, 8},
	} {
		if got := gemvTCPSlice(c.T, c.K, c.force); got != c.want {
			t.Errorf("T=%d K=%d force=%d: slice %d steps, want %d", c.T, c.K, c.force, got, c.want)
		}
	}
}

// TestAttentionDecodeSplit checks the decode attention's key splits: whole 32-key tiles that
// cover every key, at most 64 splits, none empty, and more splits where few (row, KV head)
// pairs share the GPU.
func TestAttentionDecodeSplit(t *testing.T) {
	const sms = 132
	for _, c := range []struct{ perSM, heads, keys, wantSplits int }{
		{8, 8, 1, 1}, {8, 8, 512, 16}, {8, 8, 8192, 64}, {8, 64, 1024, 16}, {8, 64, 1088, 17}, {8, 8, 100, 4}, {8, 256, 4096, 5},
		// the default target: batch 1's eight KV heads still reach the cap, batch 8's 64 rows
		// take half the splits
		{decodeAttnBlocksPerSM, 8, 8192, 64}, {decodeAttnBlocksPerSM, 8, 512, 16}, {decodeAttnBlocksPerSM, 64, 1024, 8},
		{decodeAttnBlocksPerSM, 64, 1025, 9}, {decodeAttnBlocksPerSM, 256, 4096, 3},
	} {
		s, chunk := attentionDecodeSplit(c.perSM*sms, c.heads, c.keys)
		switch {
		case s != c.wantSplits:
			t.Errorf("%d blocks an SM, %d heads, %d keys: %d splits, want %d", c.perSM, c.heads, c.keys, s, c.wantSplits)
		case chunk%attDecodeKeys != 0 || s*chunk < c.keys || (s-1)*chunk >= c.keys || s > 64:
			t.Errorf("%d blocks an SM, %d heads, %d keys: %d splits of %d keys", c.perSM, c.heads, c.keys, s, chunk)
		}
	}
}

// TestDecodeAttnPrefetchRows checks the decode attention's L2 prefetch choice: automatic (a
// block's whole range when it is one round of the walk, none beyond), or the environment's rows.
func TestDecodeAttnPrefetchRows(t *testing.T) {
	for _, c := range []struct {
		env         string
		chunk, want int
	}{
		{"", 32, 32}, {"", 64, 0}, {"", 128, 0}, {"junk", 32, 32}, {"-3", 64, 0},
		{"0", 32, 0}, {"16", 128, 16}, {"1000000", 128, 1000000},
	} {
		t.Setenv("QWENGO_CUDA_DECODE_ATTN_PREFETCH", c.env)
		b := &Backend{decodeAttnPrefetch: decodeAttnPrefetchFromEnv()}
		if got := b.decodeAttnPrefetchRows(c.chunk); got != c.want {
			t.Errorf("QWENGO_CUDA_DECODE_ATTN_PREFETCH=%q, chunk %d: %d rows, want %d", c.env, c.chunk, got, c.want)
		}
	}
}

// TestGEMVTCPGrid checks the resident GEMV's blocks per K slice: within the resident blocks
// shared among the slices, no more than the tiles need, at least one however many slices.
func TestGEMVTCPGrid(t *testing.T) {
	for _, c := range []struct{ resident, tiles, warps, nslices, want int }{
		{264, 1216, 8, 5, 52},  // gate/up, one row: 264 resident blocks over 5 slices
		{264, 160, 8, 19, 13},  // down: 19 slices of 4 steps
		{264, 160, 8, 1, 20},   // one slice: a warp per tile is enough
		{264, 7, 8, 1, 1},      // a tiny product
		{528, 160, 4, 8, 40},   // o, 4-warp blocks
		{264, 1216, 8, 300, 1}, // more slices than resident blocks: one each
	} {
		got := gemvTCPGrid(c.resident, c.tiles, c.warps, c.nslices)
		if got != c.want {
			t.Errorf("resident %d, %d tiles, %d warps, %d slices: %d blocks a slice, want %d", c.resident, c.tiles, c.warps, c.nslices, got, c.want)
		}
		if got*c.nslices > max(c.resident, c.nslices) {
			t.Errorf("resident %d, %d slices: %d blocks exceed the resident ones", c.resident, c.nslices, got*c.nslices)
		}
	}
}

// TestGEMVTCPBlockMergePlan checks the block merge's K slices: the slice count divides the
// 8-warp block, the slices cover K's steps with none empty, the fewest slices of at most five
// steps where some count allows it (Qwen3-4B: 2560 → 4 × 5, 4096 → 8 × 4, 9728 → 8 × 10).
func TestGEMVTCPBlockMergePlan(t *testing.T) {
	for _, c := range []struct{ K, slice, n int }{
		{2560, 5, 4}, {4096, 4, 8}, {9728, 10, 8}, {128, 1, 1}, {640, 5, 1}, {768, 3, 2},
		{21 * 128, 6, 4}, {7 * 128, 4, 2}, {1152, 5, 2}, {12800, 13, 8},
	} {
		slice, n, ok := gemvTCPBlockMergePlan(c.K)
		steps := c.K / 128
		switch {
		case !ok:
			t.Errorf("K=%d: no plan", c.K)
		case slice != c.slice || n != c.n:
			t.Errorf("K=%d: %d slices of %d steps, want %d of %d", c.K, n, slice, c.n, c.slice)
		case gemvTCPBMWarps%n != 0 || (steps+slice-1)/slice != n || slice*(n-1) >= steps:
			t.Errorf("K=%d: %d slices of %d steps do not tile %d steps in a block of %d warps", c.K, n, slice, steps, gemvTCPBMWarps)
		}
	}
	for _, K := range []int{0, 100, 2561} {
		if _, _, ok := gemvTCPBlockMergePlan(K); ok {
			t.Errorf("K=%d: a plan for a K that is not whole steps", K)
		}
	}
}
