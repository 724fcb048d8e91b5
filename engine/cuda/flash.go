//go:build cuda

package cuda

import (
	"math"
	"os"

	"github.com/qwengo/qwengo/engine/backend"
)

// Flash attention (kernels/flash.cu): prefill attention on tensor cores, FlashAttention-2
// style, for head_dim 128 and at least flashMinRows query rows. Decode (a few rows) stays on the
// split fp32 kernel, which is memory-bound there anyway; QWENGO_CUDA_ATTN=simt and trainSIMT
// (the fp32 reference path of parity tests) keep prefill on the fp32 kernel too.
//
// The kernel reads bf16 keys and values, so each call first rounds rows [0, pos0+T) of the
// cache to bf16 in a workspace buffer (6 bytes moved per element: ~6 µs for 2048 keys of 8 KV
// heads at 4B shapes, against ~0.2 ms of attention).

const (
	flashHeadDim = 128 // FA_D
	flashRows    = 64  // FA_M: query rows per block
	flashThreads = 128 // FA_WARPS * 32
	// flashMinRows is the smallest query chunk sent to the flash kernel: below it the rows
	// cannot fill a block's 4 warps and the fp32 kernel is as fast (and exact to 1e-6).
	flashMinRows = 16
)

func attnSIMTFromEnv() bool { return os.Getenv("QWENGO_CUDA_ATTN") == "simt" }

// useFlash reports whether an attention of T query rows goes to the flash kernel.
func (b *Backend) useFlash(T, headDim int) bool {
	return headDim == flashHeadDim && T >= flashMinRows && !b.attnSIMT && !b.trainSIMT && b.fns["flash_attn_fwd"] != nil
}

// flashAttention runs the flash kernel on checked arguments (owner goroutine). lse, when not
// nil, receives the natural-log softmax normaliser per (head, row) as [nHeads, T] floats.
func (b *Backend) flashAttention(o, qt, kt, vt, lse *Tensor, pos0, nHeads, nKV int) error {
	T := qt.rows
	keys := int64(pos0+T) * int64(nKV*flashHeadDim)
	if err := b.grow(&b.flashKV, backend.Workspace, 2*2*keys, "flash attention bf16 keys and values"); err != nil {
		return err
	}
	kb, vb := b.flashKV.ptr, b.flashKV.ptr+devPtr(2*keys)
	if err := b.toBF16(kb, kt.ptr, keys); err != nil {
		return err
	}
	if err := b.toBF16(vb, vt.ptr, keys); err != nil {
		return err
	}
	var lsePtr devPtr
	if lse != nil {
		lsePtr = lse.ptr
	}
	scaleLog2 := float32(math.Log2E / math.Sqrt(flashHeadDim))
	return launch(b.fns["flash_attn_fwd"], [3]int{(T + flashRows - 1) / flashRows, nHeads, 1}, [3]int{flashThreads, 1, 1}, 0,
		ptrArg(o.ptr), ptrArg(lsePtr), ptrArg(qt.ptr), ptrArg(kb), ptrArg(vb), intArg(T), intArg(pos0), intArg(nHeads), intArg(nKV),
		f32Arg(scaleLog2))
}
