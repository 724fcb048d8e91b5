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

// gemvTCPStepLoopFromEnv reports whether gemv_tcp's two-pass kernels (five to eight rows) run
// their per-step consume loop (QWENGO_CUDA_GEMV_STEPLOOP=1) instead of the tile-structured one
// (gemv_tcp.cuh TILED; session 15) — a measurement switch; one row always runs the per-step loop.
func gemvTCPStepLoopFromEnv() bool { return os.Getenv("QWENGO_CUDA_GEMV_STEPLOOP") == "1" }

// gemvTCPMerge0FromEnv reports whether the global-merge gemv_tcp launches that have a per-tile
// merge entry point (_m0: batch 1's SwiGLU + down, batch 8's plain products) take it
// (QWENGO_CUDA_GEMV_MERGE0=1) instead of the batched merge — a measurement switch (session 19).
func gemvTCPMerge0FromEnv() bool { return os.Getenv("QWENGO_CUDA_GEMV_MERGE0") == "1" }

// gemvTCPCSFromEnv reports whether gemv_tcp's one-row launches take their column-scale forms
// (gemv_tcp.cuh CS: the mma sums each lane's NVFP4 blocks apart and the block scales multiply
// those sums in f32, instead of every weight pair in half2 before the mma): on unless
// QWENGO_CUDA_GEMV_CS=0 (a measurement switch). Session 20, call 5 (one process, 36 layers,
// three runs): 54.3 → 52.5-53.8 µs a layer at context 512, 69.2 → 65.5-65.9 at 8192.
func gemvTCPCSFromEnv() bool { return os.Getenv("QWENGO_CUDA_GEMV_CS") != "0" }

// tcpOneRow returns the entry point a launch of name over T rows takes: at one row, name's
// column-scale form (name_cs) where it has one (the 8×4 kernels), else name.
func (b *Backend) tcpOneRow(name string, T int) string {
	if T != 1 || !b.gemvTCPCS {
		return name
	}
	if cs := name + "_cs"; b.fns[cs] != nil {
		b.gemvTCPCSLaunches++
		return cs
	}
	return name
}

// gemvTCPBlockMergeFromEnv reports whether one- to four-row gemv_tcp launches take the block
// merge (gemvTCPBlockMergePlan): on unless QWENGO_CUDA_GEMV_BM=0. Session 16, call 2 (one
// process, forms interleaved, 36 layers): batch-1 decode 57.87 / 59.26 → 55.29 / 56.01 µs a layer
// at context 512, 71.50 / 71.91 → 70.14 / 69.84 at 8192; bench ABAB 391-404 → 413-432 tok/s.
func gemvTCPBlockMergeFromEnv() bool { return os.Getenv("QWENGO_CUDA_GEMV_BM") != "0" }

// gemvTCPBMWarps is the block merge's block (the 8×4 kernels); gemvTCPBMSlice the longest K
// slice it prefers (one more step than gemvTCBSliceSteps: Qwen3's K = 2560 is 20 steps, four
// slices of five).
const gemvTCPBMWarps, gemvTCPBMSlice = 8, gemvTCBSliceSteps + 1

// gemvTCPBlockMergePlan returns the K slice (in 128-wide steps) and the slice count for a
// block-merge launch over K inputs: a block of gemvTCPBMWarps warps holds every slice of
// gemvTCPBMWarps/slices tiles, so the count must divide the block. The fewest slices of at most
// gemvTCPBMSlice steps, else the most that divide it (longer slices). Like gemvTCBSlice it
// depends on K alone, so a product sums the same in every launch that takes the block merge.
// ok is false when K is not whole steps.
func gemvTCPBlockMergePlan(K int) (slice, nslices int, ok bool) {
	steps := K / 128
	if steps < 1 || K%128 != 0 {
		return 0, 0, false
	}
	best := 0
	for s := 1; s <= gemvTCPBMWarps; s *= 2 {
		l := (steps + s - 1) / s
		if (steps+l-1)/l != s {
			continue // s slices of l steps would leave one empty
		}
		best = s
		if l <= gemvTCPBMSlice {
			break
		}
	}
	return (steps + best - 1) / best, best, true
}

// gemvTCPBlockMergeSmem is a block-merge launch's dynamic shared memory: T rows of all K staged
// (hi and lo f16, 4 bytes an element) and the partials of its tiles (most a tile slot, 16·T
// floats for each of the block's warps).
func gemvTCPBlockMergeSmem(T, K, most int) int { return T*K*4 + most*gemvTCPBMWarps*T*16*4 }

// gemvTCPLongK and gemvTCPLongSlice: gemv_tcp's K slice for long rows (down_proj, K = 9728) is
// 8 steps, not gemvTCBSliceSteps. Session 8, run 3 (slices of 2 to 40 steps, every shape):
// 9728→2560 one row 11.5 → 9.5 µs, eight rows 20.2 → 18.3 µs; K = 2560 and 4096 stay at 4
// steps (one row 2560→4096 6.4 → 8.2 µs, 4096→2560 6.4 → 8.6 µs at 8). Run 4, decode bench,
// same binary: 376 / 304 / 1,763 tok/s against 375 / 299 / 1,712 (and 365 / 298 / 1,666 in a
// repeat). Like gemvTCBSlice, it depends on T and K only.
//
// One to four rows take 6 steps (gemvTCPLongSlice1) since session 17: down's 160 tiles in 13
// slices of 6 are 260 blocks of 8 warps, an even two on 128 of the 132 SMs, where 10 slices of
// 8 are 200 blocks that put two on 68 SMs and one on the rest, so the busiest SMs read 25 %
// more than with 6. TestFiguresDecodeForms (call 5, 36 layers, one process): 55.35 → 54.75 µs a
// layer at context 512, 70.56 → 69.51 at 8192 (5 steps: 57.37 / 72.50; 7: 55.35 / 70.46);
// decode bench ABAB 417 / 411 → 422 / 414 tok/s at context 512, 331 / 325 → 346 / 342 at 8192.
// Five to eight rows keep 8 (two rings of the tile-structured loop).
const gemvTCPLongK, gemvTCPLongSlice, gemvTCPLongSlice1 = 8192, 8, 6

// gemvTCPSlice is gemv_tcp's K slice for T rows of K inputs (force: QWENGO_CUDA_GEMV_SLICE).
// One pass (T ≤ 4) below gemvTCPLongK takes the block merge's slice (gemvTCPBlockMergePlan:
// Qwen3's K = 2560 in four slices of five steps, not five of four) wherever it fits the staged
// rows, so that a product's partials — and so its bits — are the same with either merge; the
// two-pass kernels keep four-step slices, whole rings of their tile-structured loop.
func gemvTCPSlice(T, K, force int) int {
	if force == 0 && K >= gemvTCPLongK {
		force = gemvTCPLongSlice
		if T <= 4 {
			force = gemvTCPLongSlice1
		}
	}
	if force == 0 && T <= 4 {
		if s, _, ok := gemvTCPBlockMergePlan(K); ok && s <= max(1, gemvTCBSmem/(512*T)) {
			return s
		}
	}
	return gemvTCBSlice(T, K, force)
}

// tcpSlice is gemv_tcp's K slice for T rows of K inputs on b: the forced slice
// (QWENGO_CUDA_GEMV_SLICE) for every product, else b.gemvLongSlice for one to four rows of long
// ones (QWENGO_CUDA_GEMV_LONG_SLICE; 0: gemvTCPLongSlice1), else the per-shape choice.
func (b *Backend) tcpSlice(T, K int) int {
	if b.gemvSlice == 0 && b.gemvLongSlice > 0 && K >= gemvTCPLongK && T <= 4 {
		return gemvTCPSlice(T, K, b.gemvLongSlice)
	}
	return gemvTCPSlice(T, K, b.gemvSlice)
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

// gemvTCPPerSM returns how many blocks of kernel name (threads threads, smem bytes of dynamic
// shared memory) an SM holds: the register cap (__launch_bounds__) allows 16 warps, the staged
// rows may allow fewer. The driver is asked once per kernel and size.
func (b *Backend) gemvTCPPerSM(name string, threads, smem int) (int, error) {
	key := fmt.Sprintf("%s/%d", name, smem)
	if n, ok := b.gemvTCPOccupancy[key]; ok {
		return n, nil
	}
	n, err := occupancy(b.fns[name], threads, smem)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("occupancy of %s: %d, %v", name, n, err)
	}
	if b.gemvTCPOccupancy == nil {
		b.gemvTCPOccupancy = map[string]int{}
	}
	b.gemvTCPOccupancy[key] = n
	return n, nil
}

// gemvTCPMany launches the resident tensor-core GEMV for one to three NVFP4 products of the same
// T ≤ 8 rows (q/k/v, gate/up) in one launch; partial sums and arrival counters live in the
// grow-only GEMV workspace (owner goroutine; shapes checked by the caller).
func (b *Backend) gemvTCPMany(outs []*Tensor, a *Tensor, ws []*Weight) error {
	return b.gemvTCPLaunch(tcpPlain, outs, a, nil, nil, 0, ws)
}

// tcpFusion is what a gemv_tcp launch folds in (the kernel's XM and ACC; fused.go's decode ops).
type tcpFusion int

const (
	tcpPlain     tcpFusion = iota // out = x·Wᵀ
	tcpNorm                       // out = RMSNorm(x; nw, eps)·Wᵀ
	tcpSwiGLUAcc                  // out += SwiGLU(x, x2)·Wᵀ
	tcpAcc                        // out += x·Wᵀ
	tcpFusionKinds
)

// tcpFusionSuffix names each fusion's entry points (gemv_tcp.cuh GP_ENTRY); the fused ones exist
// for the default 8×4 shape only.
var tcpFusionSuffix = [tcpFusionKinds]string{"", "_norm", "_swiacc", "_acc"}

// gemvTCPFusedShape reports whether a fused gemv_tcp launch takes T rows of K inputs: the plain
// shape, and for the norm a block of rmsnorm_f32's size for K (its sums and their order).
func (b *Backend) gemvTCPFusedShape(f tcpFusion, T, K int) bool {
	if !b.gemvTCPShape(T, K) || b.fns[fmt.Sprintf("gemv_nvfp4_tcp%d_8x4%s", (T+3)/4, tcpFusionSuffix[f])] == nil {
		return false
	}
	return f != tcpNorm || normThreads(K) == 8*32
}

// gemvTCPLaunch launches gemv_tcp with fusion f: a2 is SwiGLU's up rows, nw and eps the norm's
// weight and epsilon (owner goroutine; shapes checked by the caller).
func (b *Backend) gemvTCPLaunch(f tcpFusion, outs []*Tensor, a, a2, nw *Tensor, eps float32, ws []*Weight) error {
	if len(ws) == 0 || len(ws) > 3 || len(outs) != len(ws) {
		return fmt.Errorf("gemv: %d products (1 to 3, one output each)", len(ws))
	}
	T, K := a.rows, a.cols
	if !b.gemvTCPShape(T, K) {
		return fmt.Errorf("gemv: %d rows of %d inputs do not fit the resident tensor-core GEMV", T, K)
	}
	name := b.gemvTCPPick(T)
	if f != tcpPlain {
		if !b.gemvTCPFusedShape(f, T, K) {
			return fmt.Errorf("gemv: no fused (%s) resident GEMV for %d rows of %d inputs", tcpFusionSuffix[f], T, K)
		}
		name = fmt.Sprintf("gemv_nvfp4_tcp%d_8x4%s", (T+3)/4, tcpFusionSuffix[f])
	}
	if b.gemvTCPStepLoop && b.fns[name+"_v0"] != nil {
		name += "_v0"
	}
	if b.gemvTCPMerge0 && b.fns[name+"_m0"] != nil {
		name += "_m0"
		b.gemvTCPMerge0Launches++
	}
	if b.gemvTCPBlockMerge && T <= 4 && (b.gemvTCPVariant == "" || b.gemvTCPVariant == "8x4") {
		if bm := "gemv_nvfp4_tcp1_8x4" + tcpFusionSuffix[f] + "_bm"; b.fns[bm] != nil { // none for SwiGLU
			if ok, err := b.gemvTCPBlockMergeLaunch(bm, outs, a, nw, eps, ws); ok || err != nil {
				return err
			}
		}
	}
	name = b.tcpOneRow(name, T)
	var warps, d int
	if _, err := fmt.Sscanf(name[len("gemv_nvfp4_tcp1_"):], "%dx%d", &warps, &d); err != nil {
		return fmt.Errorf("gemv: kernel name %q: %w", name, err)
	}
	slice := b.tcpSlice(T, K)
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
	per, err := b.gemvTCPPerSM(name, 32*warps, smem)
	if err != nil {
		return err
	}
	var x2, nwp devPtr
	if a2 != nil {
		x2 = a2.ptr
	}
	if nw != nil {
		nwp = nw.ptr
	}
	bps := gemvTCPGrid(per*b.sms, tiles, warps, nslices)
	args := []arg{ptrArg(a.ptr), intArg(K), intArg(T), intArg(slice), intArg(bps), ptrArg(b.gemvPartial.ptr), ptrArg(b.gemvCounters.ptr),
		ptrArg(x2), ptrArg(nwp), f32Arg(eps), intArg(len(ws))}
	args = append(args, gemvJobArgs(outs, ws)...)
	fn, args = b.tcpStamped(name, fn, nslices*bps, args)
	return b.launchDep(fn, [3]int{nslices * bps, 1, 1}, [3]int{32 * warps, 1, 1}, smem, args...)
}

// gemvTCPBlockMergeLaunch launches the block-merge entry point bm (gemv_tcp.cuh BM) when the
// shape allows it: T·K staged within gemvTCBSmem with the partials, and a block of
// rmsnorm_f32's size for a norm (always 256 threads here: gemvTCPFusedShape checked it). ok is
// false, with no error, when it does not apply and the caller should launch the global merge.
func (b *Backend) gemvTCPBlockMergeLaunch(bm string, outs []*Tensor, a, nw *Tensor, eps float32, ws []*Weight) (ok bool, err error) {
	T, K := a.rows, a.cols
	slice, nslices, fits := gemvTCPBlockMergePlan(K)
	if !fits || slice != b.tcpSlice(T, K) {
		return false, nil // other slices than the global merge's would sum differently
	}
	tiles := 0
	for _, w := range ws {
		tiles += (w.out + 15) / 16
	}
	tpb := gemvTCPBMWarps / nslices
	groups := (tiles + tpb - 1) / tpb
	bm = b.tcpOneRow(bm, T)
	fn := b.fns[bm]
	// The occupancy for the staged rows with one tile a slot; the partials of more are small.
	base := gemvTCPBlockMergeSmem(T, K, 1)
	if base > gemvTCBSmem {
		return false, nil
	}
	per, err := b.gemvTCPPerSM(bm, 32*gemvTCPBMWarps, base)
	if err != nil {
		return false, err
	}
	blocks := max(1, min(groups, per*b.sms))
	most := (groups + blocks - 1) / blocks
	smem := gemvTCPBlockMergeSmem(T, K, most)
	if smem > gemvTCBSmem {
		return false, nil
	}
	var nwp devPtr
	if nw != nil {
		nwp = nw.ptr
	}
	args := []arg{ptrArg(a.ptr), intArg(K), intArg(T), intArg(slice), intArg(0), ptrArg(0), ptrArg(0),
		ptrArg(0), ptrArg(nwp), f32Arg(eps), intArg(len(ws))}
	args = append(args, gemvJobArgs(outs, ws)...)
	b.gemvTCPBMLaunches++
	fn, args = b.tcpStamped(bm, fn, blocks, args)
	return true, b.launchDep(fn, [3]int{blocks, 1, 1}, [3]int{32 * gemvTCPBMWarps, 1, 1}, smem, args...)
}
