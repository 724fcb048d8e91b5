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

// flashAttention runs the flash kernel on checked arguments (owner goroutine) over seqs
// sequences stored one after another (q, out: T = qt.rows/seqs rows each; k, v: pos0+T rows
// each): the output to out (0: none) and, when lse is not 0, the natural-log softmax
// normaliser per (sequence, head, row) as [seqs, nHeads, T] floats. It leaves bf16 copies of
// float32 k and v in b.flashKV (a bf16 KV cache is read as it is).
func (b *Backend) flashAttention(out, lse devPtr, qt, kt, vt *Tensor, pos0, nHeads, nKV, seqs int) error {
	T := qt.rows / seqs
	kb, vb := kt.ptr, vt.ptr // a bf16 KV cache is what the kernel reads
	if !kt.bf16 {
		keys := int64(seqs) * int64(pos0+T) * int64(nKV*flashHeadDim)
		if err := b.grow(&b.flashKV, backend.Workspace, 2*2*keys, "flash attention bf16 keys and values"); err != nil {
			return err
		}
		kb, vb = b.flashKV.ptr, b.flashKV.ptr+devPtr(2*keys)
		if err := b.toBF16(kb, kt.ptr, keys); err != nil {
			return err
		}
		if err := b.toBF16(vb, vt.ptr, keys); err != nil {
			return err
		}
	}
	scaleLog2 := float32(math.Log2E / math.Sqrt(flashHeadDim))
	return launch(b.fns["flash_attn_fwd"], [3]int{(T + flashRows - 1) / flashRows, nHeads, seqs}, [3]int{flashThreads, 1, 1}, 0,
		ptrArg(out), ptrArg(lse), ptrArg(qt.ptr), ptrArg(kb), ptrArg(vb), intArg(T), intArg(pos0), intArg(nHeads), intArg(nKV),
		f32Arg(scaleLog2))
}

// flashBwdShared is flash_bwd_dkdv's dynamic shared memory: K_j and V_j tiles (64 rows), Q_i
// and dO_i tiles (32 rows) of 128 bf16, and the 32 rows' lse and D.
const flashBwdShared = 2*64*flashHeadDim*2 + 2*32*flashHeadDim*2 + 2*32*4

// useFlashBackward reports whether AttentionBackward of T rows goes to the flash kernels.
func (b *Backend) useFlashBackward(T, headDim int) bool {
	return b.useFlash(T, headDim) && b.fns["flash_bwd_dkdv"] != nil
}

// flashBackward computes dq, dk and dv on the flash kernels (owner goroutine, checked
// arguments, pos0 = 0) for seqs sequences of T = qt.rows/seqs rows stored one after another:
// the log-sum-exp — saved (saved ≠ 0: [seqs, nHeads, T] floats written by the forward,
// AttentionSaveStats) or from the forward run again — and bf16 copies of k, v, q and dout,
// D = Σ dout∘out, then flash_bwd_dkdv and flash_bwd_dq, one launch each for all sequences.
func (b *Backend) flashBackward(dqt, dkt, dvt, dot, qt, kt, vt, ot *Tensor, saved devPtr, nHeads, nKV, seqs int) error {
	T := qt.rows / seqs
	if !b.flashBwdReady {
		if err := setMaxDynamicShared(b.fns["flash_bwd_dkdv"], flashBwdShared); err != nil {
			return err
		}
		b.flashBwdReady = true
	}
	qElems := int64(qt.rows) * int64(nHeads*flashHeadDim)
	stats := (int64(4*nHeads*qt.rows) + 255) / 256 * 256
	base, err := b.scratch(2*2*qElems+2*stats, "flash attention backward")
	if err != nil {
		return err
	}
	qb, dob := base, base+devPtr(2*qElems)
	lse, dd := base+devPtr(4*qElems), base+devPtr(4*qElems+stats)
	keys := int64(kt.rows) * int64(nKV*flashHeadDim)
	if saved != 0 {
		// The forward's statistics: only the bf16 copies of k and v it made are needed again.
		if err := b.grow(&b.flashKV, backend.Workspace, 2*2*keys, "flash attention bf16 keys and values"); err != nil {
			return err
		}
		if err := firstErr(b.toBF16(b.flashKV.ptr, kt.ptr, keys), b.toBF16(b.flashKV.ptr+devPtr(2*keys), vt.ptr, keys)); err != nil {
			return err
		}
		lse = saved
	} else if err := b.flashAttention(0, lse, qt, kt, vt, 0, nHeads, nKV, seqs); err != nil {
		return err
	}
	kb, vb := b.flashKV.ptr, b.flashKV.ptr+devPtr(2*keys)
	if err := b.toBF16(qb, qt.ptr, qElems); err != nil {
		return err
	}
	if err := b.toBF16(dob, dot.ptr, qElems); err != nil {
		return err
	}
	if err := launch(b.fns["flash_bwd_prep"], [3]int{(qt.rows*nHeads + 3) / 4, 1, 1}, [3]int{128, 1, 1}, 0,
		ptrArg(dd), ptrArg(dot.ptr), ptrArg(ot.ptr), intArg(T), intArg(nHeads), intArg(seqs)); err != nil {
		return err
	}
	scale := 1 / math.Sqrt(flashHeadDim)
	scaleLog2 := float32(math.Log2E * scale)
	blocks := (T + 63) / 64
	if err := launch(b.fns["flash_bwd_dkdv"], [3]int{blocks, nKV, seqs}, [3]int{128, 1, 1}, flashBwdShared,
		ptrArg(dkt.ptr), ptrArg(dvt.ptr), ptrArg(qb), ptrArg(kb), ptrArg(vb), ptrArg(dob), ptrArg(lse), ptrArg(dd),
		intArg(T), intArg(nHeads), intArg(nKV), f32Arg(scaleLog2), f32Arg(float32(scale))); err != nil {
		return err
	}
	return launch(b.fns["flash_bwd_dq"], [3]int{blocks, nHeads, seqs}, [3]int{128, 1, 1}, 0,
		ptrArg(dqt.ptr), ptrArg(qb), ptrArg(kb), ptrArg(vb), ptrArg(dob), ptrArg(lse), ptrArg(dd),
		intArg(T), intArg(nHeads), intArg(nKV), f32Arg(scaleLog2), f32Arg(float32(scale)))
}
