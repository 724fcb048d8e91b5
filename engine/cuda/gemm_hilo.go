//go:build cuda

package cuda

import (
	"fmt"
	"os"

	"github.com/qwengo/qwengo/engine/backend"
)

// A few rows (2..8) times a large bf16 weight — the lm_head of a batched decode step — on
// cuBLASLt with x split into two bf16 parts: hi = bf16(x), lo = bf16(x − hi) as 2T rows of one
// product (the weight is read once), then out = (hi product) + (lo product). x keeps ~16
// significant bits (|x − hi − lo| ≤ 2^-17·|x|) against the 8 of gemmMatMul's bf16 x, and the
// sums are cuBLASLt's float32 ones.
//
// Why: the CUDA-core gemv_bf16_t8 took 431-434 µs for 8 rows of Qwen3's 778 MB lm_head (1.8
// TB/s; NOTES.md, sessions 7 and 9) against 183 µs for one row at 4.2 TB/s, ~10 % of a batch-8
// decode step; a tensor-core GEMV of our own (branch wip/gemv-bf16-tc) reached 387 µs.

// gemmHiLoMinN is the fewest weight rows for which the split product replaces the GEMV (the
// vocabulary-sized lm_head; the layers' bf16 weights, if any, keep the GEMV).
const gemmHiLoMinN = 32768

// gemmHiLoOff keeps 2..8 rows of a large bf16 weight on the GEMV (QWENGO_CUDA_LMHEAD_HILO=0,
// for A/B runs).
var gemmHiLoOff = os.Getenv("QWENGO_CUDA_LMHEAD_HILO") == "0"

// gemmHiLoTakes reports whether out = x·Wᵀ of T rows goes through gemmMatMulHiLo.
func (b *Backend) gemmHiLoTakes(T, K int, w *Weight) bool {
	return !gemmHiLoOff && !b.trainSIMT && w.kind == kindBF16 && T >= 2 && T <= 8 && w.out >= gemmHiLoMinN &&
		gemmShapeOK(K, w.out) && b.gemmReady()
}

// gemmMatMulHiLo runs out = x·Wᵀ as described at the top of the file and reports whether it
// did; false means nothing was launched (owner goroutine).
func (b *Backend) gemmMatMulHiLo(o, a *Tensor, w *Weight) (bool, error) {
	T, K, N := a.rows, a.cols, w.out
	if err := b.gemmScratch(2*int64(T)*int64(K), 0, 0); err != nil {
		return false, nil // errGEMMUnsupported: the GEMV takes it
	}
	if err := b.grow(&b.gemm.hilo, backend.Workspace, 4*2*int64(T)*int64(N), "hi and lo products of the lm_head"); err != nil {
		return false, nil
	}
	buf := gemmBuffers{w: w, act: b.gemm.act.ptr, out: b.gemm.hilo.ptr, alpha: weightAlpha(w)}
	l, err := b.gemmPrepare(planForward(2*T, K, N, N), buf)
	if err != nil {
		return false, nil
	}
	n := int64(T) * int64(K)
	if err := launch(b.fns["f32_to_bf16_hilo"], [3]int{b.blocks(int(min(n, 1<<30))), 1, 1}, [3]int{256, 1, 1}, 0,
		ptrArg(buf.act), ptrArg(a.ptr), sizeArg(n)); err != nil {
		return true, fmt.Errorf("splitting x into bf16 hi and lo: %w", err)
	}
	if err := b.gemmRunLaunches(l, buf, false); err != nil {
		return true, err
	}
	m := int64(T) * int64(N)
	return true, launch(b.fns["add_halves_f32"], [3]int{b.blocks(int(min(m, 1<<30))), 1, 1}, [3]int{256, 1, 1}, 0,
		ptrArg(o.ptr), ptrArg(buf.out), sizeArg(m))
}
