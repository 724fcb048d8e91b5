//go:build cuda

package cuda

import "os"

// The streaming NVFP4 GEMV (kernels/gemv.cu) replaces matmul.cu's gemv_nvfp4_t* for decode
// when K is a multiple of 256 (all Qwen3 projection shapes): it keeps the next weight chunks in
// flight through cp.async while decoding the current ones. QWENGO_CUDA_GEMV=v2 selects the
// older kernel (for comparisons).

// gemvStreamOK reports whether an NVFP4 product of T ≤ 4 rows takes the streaming kernel.
func (b *Backend) gemvStreamOK(T, K int) bool {
	return !b.gemvV2 && T >= 1 && T <= gemvMaxRows && K%256 == 0
}

// gemvStreamGeometry picks ksplit (warps sharing a group of 4 rows, each a slice of K) and the
// slice length in 32-element chunks (a multiple of 8): enough warps to keep ~32 resident on
// every SM, but slices of at least 64 chunks.
func gemvStreamGeometry(sms, N, K int) (ksplit, slice int) {
	chunks := K / 32
	groups := (N + gemvRows - 1) / gemvRows
	ksplit = 1
	for ksplit < gemvWarps && groups*ksplit < 32*sms && chunks/(2*ksplit) >= 64 {
		ksplit *= 2
	}
	slice = (chunks + ksplit - 1) / ksplit
	slice = (slice + 7) / 8 * 8
	return ksplit, slice
}

// gemvStream launches gemv_nvfp4s_t{T} (owner goroutine).
func (b *Backend) gemvStream(o, a *Tensor, w *Weight) error {
	T, K, N := a.rows, a.cols, w.out
	ksplit, slice := gemvStreamGeometry(b.sms, N, K)
	rowsPerBlock := gemvRows * gemvWarps / ksplit
	g, bl := [3]int{(N + rowsPerBlock - 1) / rowsPerBlock, 1, 1}, [3]int{32 * gemvWarps, 1, 1}
	return launch(b.fns[gemvStreamKernels[T-1]], g, bl, 0, ptrArg(o.ptr), ptrArg(a.ptr), ptrArg(w.ptr), ptrArg(w.scales),
		f32Arg(w.global*16384), intArg(N), intArg(K), intArg(ksplit), intArg(slice))
}

func gemvV2FromEnv() bool { return os.Getenv("QWENGO_CUDA_GEMV") == "v2" }
