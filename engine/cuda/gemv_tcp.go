//go:build cuda

package cuda

import (
	"fmt"
	"os"
	"slices"
)

// The resident, pipelined tensor-core NVFP4 GEMV (kernels/gemv_tcp.cu): 1..8 token rows a
// launch, a grid of a few blocks per SM whose warps keep D weight steps in flight across tile
// boundaries. Same K slices and deterministic merge as gemv_tcb.cu, so its sums do not depend
// on the grid size or on which products share the launch.

// gemvTCPFromEnv returns the variant QWENGO_CUDA_GEMV_TCP names, or "".
func gemvTCPFromEnv() string {
	if v := os.Getenv("QWENGO_CUDA_GEMV_TCP"); slices.Contains(gemvTCPVariants, v) {
		return v
	}
	return ""
}

// gemvTCPPick returns the kernel for T rows: the forced variant, else 8 warps × 4 steps.
func (b *Backend) gemvTCPPick(T int) string {
	v := b.gemvTCPVariant
	if v == "" {
		v = "8x4"
	}
	return fmt.Sprintf("gemv_nvfp4_tcp%d_%s", (T+3)/4, v)
}

// gemvTCPShape reports whether the resident tensor-core GEMV takes T rows of K inputs (the
// staged slice of x within gemvTCBSmem, like gemv_tcb).
func (b *Backend) gemvTCPShape(T, K int) bool {
	return T >= 1 && T <= gemvTCBRows && K%128 == 0 && K/128 >= 1 && T*512 <= gemvTCBSmem && b.fns[b.gemvTCPPick(T)] != nil
}

// gemvTCPGrid returns the blocks on each K slice: enough for every tile to have a warp, no more
// than the resident blocks shared among the slices (at least one).
func gemvTCPGrid(resident, tiles, warps, nslices int) int {
	return max(1, min((tiles+warps-1)/warps, resident/nslices))
}

// gemvTCPMany launches the resident tensor-core GEMV for one to three NVFP4 products of the same
// T ≤ 8 rows (q/k/v, gate/up) in one launch; partial sums and arrival counters live in the
// grow-only GEMV workspace (owner goroutine; shapes checked by the caller).
func (b *Backend) gemvTCPMany(outs []*Tensor, a *Tensor, ws []*Weight) error {
	if len(ws) == 0 || len(ws) > 3 || len(outs) != len(ws) {
		return fmt.Errorf("gemv: %d products (1 to 3, one output each)", len(ws))
	}
	T, K := a.rows, a.cols
	if !b.gemvTCPShape(T, K) {
		return fmt.Errorf("gemv: %d rows of %d inputs do not fit the resident tensor-core GEMV", T, K)
	}
	name := b.gemvTCPPick(T)
	var warps, d int
	if _, err := fmt.Sscanf(name[len("gemv_nvfp4_tcp1_"):], "%dx%d", &warps, &d); err != nil {
		return fmt.Errorf("gemv: kernel name %q: %w", name, err)
	}
	slice := gemvTCBSlice(T, K, b.gemvSlice)
	nslices := (K/128 + slice - 1) / slice
	smem := T * slice * 512
	tiles := 0
	for _, w := range ws {
		tiles += (w.out + 15) / 16
	}
	if nslices > 1 {
		if err := b.gemvWorkspace(int64(4*tiles*nslices*T*16), tiles); err != nil {
			return err
		}
	}
	fn := b.fns[name]
	key := fmt.Sprintf("%s/%d", name, smem)
	per, ok := b.gemvTCPOccupancy[key]
	if !ok {
		// The register cap (__launch_bounds__) allows 16 warps an SM; the staged rows may allow
		// fewer: ask the driver once per kernel and staging size.
		n, err := occupancy(fn, 32*warps, smem)
		if err != nil || n < 1 {
			return fmt.Errorf("occupancy of %s: %d, %v", name, n, err)
		}
		if b.gemvTCPOccupancy == nil {
			b.gemvTCPOccupancy = map[string]int{}
		}
		b.gemvTCPOccupancy[key], per = n, n
	}
	bps := gemvTCPGrid(per*b.sms, tiles, warps, nslices)
	args := []arg{ptrArg(a.ptr), intArg(K), intArg(T), intArg(slice), intArg(bps), ptrArg(b.gemvPartial.ptr), ptrArg(b.gemvCounters.ptr), intArg(len(ws))}
	args = append(args, gemvJobArgs(outs, ws)...)
	return b.launchDep(fn, [3]int{nslices * bps, 1, 1}, [3]int{32 * warps, 1, 1}, smem, args...)
}
