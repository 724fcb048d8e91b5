//go:build cuda

package cuda

import (
	"fmt"
	"os"
	"slices"
	"strconv"

	"github.com/qwengo/qwengo/engine/backend"
)

// The multi-row tensor-core NVFP4 GEMV (kernels/gemv_tcb.cu): 1..8 token rows, K sliced so the
// staged rows fit the default shared memory and small matrices still fill the GPU. It serves
// batched decode (qwen3.DecodeBatch, ForwardBatch: 2-8 rows a product) and, forced with
// QWENGO_CUDA_GEMV=tcb, single rows too.

// gemvTCBRows is the most token rows one launch takes (two mma passes of four rows).
const gemvTCBRows = 8

// gemvTCBSmem bounds the dynamic shared memory of a launch (x's rows as hi/lo f16 over one
// slice) within the 48 KB a block gets without opting in.
const gemvTCBSmem = 44 << 10

// gemvTCBSliceSteps is the default K slice, in 128-wide steps: 512 inputs a block. Measured
// at eight rows on the H200 (device run 21, 8 warps × 2 steps in flight; 2560→9728, 9728→2560,
// 2560→4096, 4096→2560): slices of 4 steps 16.9 / 18.2 / 15.0 / 14.7 µs against 23.4 / 25.8 /
// 21.6 / 23.5 with 8 — more blocks in flight and less x staged per block.
const gemvTCBSliceSteps = 4

// gemvTCBShape reports whether the multi-row tensor-core GEMV takes T rows of K inputs.
func (b *Backend) gemvTCBShape(T, K int) bool {
	return T >= 1 && T <= gemvTCBRows && K%128 == 0 && K/128 >= 1 && T*512 <= gemvTCBSmem && b.fns[b.gemvTCBPick(T)] != nil
}

// gemvTCBPick returns the kernel for T rows: QWENGO_CUDA_GEMV_TCB ("4x4") picks the shape,
// else 8 warps × 2 steps in flight (device run 21: the fastest in total over the four Qwen3-4B
// shapes at eight rows with 4-step slices; 8x4 wins the 2560-output ones, 12.3 against 14.7 µs,
// and loses the 9728-output one, 21.4 against 16.9).
func (b *Backend) gemvTCBPick(T int) string {
	v := b.gemvTCBVariant
	if v == "" {
		v = "8x2"
	}
	return fmt.Sprintf("gemv_nvfp4_tcb%d_%s", (T+3)/4, v)
}

// gemvTCBFromEnv returns the variant QWENGO_CUDA_GEMV_TCB names, or "".
func gemvTCBFromEnv() string {
	if v := os.Getenv("QWENGO_CUDA_GEMV_TCB"); slices.Contains(gemvTCBVariants, v) {
		return v
	}
	return ""
}

// gemvSliceFromEnv returns the k steps per slice QWENGO_CUDA_GEMV_SLICE forces, or 0.
func gemvSliceFromEnv() int { return positiveEnv("QWENGO_CUDA_GEMV_SLICE") }

// gemvLongSliceFromEnv returns QWENGO_CUDA_GEMV_LONG_SLICE (Backend.tcpSlice), 0 if unset.
func gemvLongSliceFromEnv() int { return positiveEnv("QWENGO_CUDA_GEMV_LONG_SLICE") }

// positiveEnv returns the positive integer the environment variable holds, else 0.
func positiveEnv(name string) int {
	n, err := strconv.Atoi(os.Getenv(name))
	if err != nil || n < 1 {
		return 0
	}
	return n
}

// gemvTCBSlice picks the 128-wide k steps per block for T rows of K inputs: about
// gemvTCBSliceSteps (or the forced length), no more than the staged rows' shared memory allows,
// and slices of equal length. It depends on T and K only, so a product sums in the same order
// whether it is launched alone or with others (MatMulMany).
func gemvTCBSlice(T, K, force int) int {
	steps := K / 128
	limit := max(1, gemvTCBSmem/(512*T))
	want := gemvTCBSliceSteps
	if force > 0 {
		want = force
	}
	slices := (steps + min(want, limit) - 1) / min(want, limit)
	return (steps + slices - 1) / slices
}

// gemvTCBMany launches the multi-row tensor-core GEMV for one to three NVFP4 products of the
// same T ≤ 8 rows (q/k/v, gate/up) in one launch; partial sums and arrival counters live in the
// grow-only GEMV workspace (owner goroutine; shapes checked by the caller).
func (b *Backend) gemvTCBMany(outs []*Tensor, a *Tensor, ws []*Weight) error {
	if len(ws) == 0 || len(ws) > 3 || len(outs) != len(ws) {
		return fmt.Errorf("gemv: %d products (1 to 3, one output each)", len(ws))
	}
	T, K := a.rows, a.cols
	if !b.gemvTCBShape(T, K) {
		return fmt.Errorf("gemv: %d rows of %d inputs do not fit the tensor-core GEMV", T, K)
	}
	name := b.gemvTCBPick(T)
	var warps, d int
	if _, err := fmt.Sscanf(name[len("gemv_nvfp4_tcb1_"):], "%dx%d", &warps, &d); err != nil {
		return fmt.Errorf("gemv: kernel name %q: %w", name, err)
	}
	slice := gemvTCBSlice(T, K, b.gemvSlice)
	nslices := (K/128 + slice - 1) / slice
	tiles, groups := 0, 0
	for _, w := range ws {
		tiles += (w.out + 15) / 16
		groups += ((w.out+15)/16 + warps - 1) / warps
	}
	if nslices > 1 {
		if err := b.gemvWorkspace(int64(4*tiles*nslices*T*16), tiles); err != nil {
			return err
		}
	}
	args := []arg{ptrArg(a.ptr), intArg(K), intArg(T), intArg(slice), ptrArg(b.gemvPartial.ptr), ptrArg(b.gemvCounters.ptr), intArg(len(ws))}
	args = append(args, gemvJobArgs(outs, ws)...)
	return b.launchDep(b.fns[name], [3]int{groups * nslices, 1, 1}, [3]int{32 * warps, 1, 1}, T*slice*512, args...)
}

// gemvRowChunks runs an NVFP4 product of T rows with a multi-row GEMV launcher (gemvTCBMany,
// gemvTCPMany) as consecutive launches of up to eight rows each (row views of x and out): each
// launch reads the weights once, instead of the tiled SIMT kernel re-reading them per 64×64
// tile (owner goroutine; shapes checked by the caller).
func (b *Backend) gemvRowChunks(o, a *Tensor, w *Weight, launch func([]*Tensor, *Tensor, []*Weight) error) error {
	for r0 := 0; r0 < a.rows; r0 += gemvTCBRows {
		n := min(gemvTCBRows, a.rows-r0)
		av := &Tensor{rows: n, cols: a.cols, ptr: a.ptr + devPtr(4*r0*a.cols), cat: a.cat, owner: b, view: true}
		ov := &Tensor{rows: n, cols: o.cols, ptr: o.ptr + devPtr(4*r0*o.cols), cat: o.cat, owner: b, view: true}
		if err := launch([]*Tensor{ov}, av, []*Weight{w}); err != nil {
			return err
		}
	}
	return nil
}

// gemvWorkspace makes the GEMV partial-sum buffer at least partialBytes and the arrival
// counters at least `counters` ints, the counters zero (every launch leaves them zero).
func (b *Backend) gemvWorkspace(partialBytes int64, counters int) error {
	if err := b.grow(&b.gemvPartial, backend.Workspace, partialBytes, "GEMV partial sums"); err != nil {
		return err
	}
	if b.gemvCounters.bytes < int64(4*counters) {
		if err := b.grow(&b.gemvCounters, backend.Workspace, int64(4*counters), "GEMV counters"); err != nil {
			return err
		}
		if err := memsetD8(b.gemvCounters.ptr, 0, b.gemvCounters.bytes); err != nil {
			return err
		}
	}
	return nil
}
