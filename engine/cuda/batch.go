//go:build cuda

package cuda

import (
	"fmt"
	"math"
	"os"

	"github.com/qwengo/qwengo/engine/backend"
)

// backend.Batched: batched decode in one launch per op for up to batchMax sequences
// (kernels/batch.cu). The per-row positions, or destination rows, travel in a kernel parameter
// (batch.cu's BatchInts, passed by value), so a step copies nothing to the device; a batch of
// more rows takes one launch per batchMax of them. Every op checks all its arguments with the
// shared backend checks before launching anything.

var _ backend.Batched = (*Backend)(nil)

// batchMax mirrors BATCH_MAX in batch.cu: the rows one launch takes.
const batchMax = 32

// batchInts packs up to batchMax values as batch.cu's BatchInts, the last parameter of every
// batch kernel: 4·batchMax bytes in consecutive 8-byte argument slots (two int32 a slot,
// little-endian), which is where qg_launch's pointer to that parameter points and from where
// the driver copies the parameter's 128 bytes.
func batchInts(v []int) []arg {
	out := make([]arg, batchMax/2)
	for i, x := range v {
		out[i/2] |= arg(uint32(int32(x))) << (32 * (i % 2))
	}
	return out
}

// rowsOf is rows [row0, row0+n) of t as an unregistered view, for pointer arithmetic only.
func rowsOf(t *Tensor, row0, n int) *Tensor {
	return &Tensor{rows: n, cols: t.cols, ptr: t.ptr + devPtr(int64(row0)*int64(t.cols)*t.elemBytes()), cat: t.cat, owner: t.owner, view: true, bf16: t.bf16}
}

// batchChunks calls fn for consecutive ranges [r0, r0+n) of rows rows, n ≤ batchMax.
func batchChunks(rows int, fn func(r0, n int) error) error {
	for r0 := 0; r0 < rows; r0 += batchMax {
		if err := fn(r0, min(batchMax, rows-r0)); err != nil {
			return err
		}
	}
	return nil
}

// tens resolves the tensor arguments of op, ts[i] named names[i] in errors (owner goroutine).
func (b *Backend) tens(op string, ts []backend.Tensor, names ...string) ([]*Tensor, error) {
	out := make([]*Tensor, len(ts))
	for i, x := range ts {
		t, err := b.ten(x, op, names[i])
		if err != nil {
			return nil, err
		}
		out[i] = t
	}
	return out, nil
}

// RoPEAt implements backend.Batched.
func (b *Backend) RoPEAt(out, x backend.Tensor, headDim int, positions []int, theta float64) error {
	return b.do(func() error {
		const op = "rope at positions"
		ts, err := b.tens(op, []backend.Tensor{out, x}, "out", "x")
		if err != nil {
			return err
		}
		o, a := ts[0], ts[1]
		if err := backend.CheckRoPEAt("cuda", o, a, headDim, positions, theta); err != nil {
			return err
		}
		if !same(o, a) && overlaps(o, a) {
			return fmt.Errorf("cuda: %s: out shares memory with x without being x", op)
		}
		for r, p := range positions {
			if p > math.MaxInt32 {
				return fmt.Errorf("cuda: %s: sequence %d: position %d does not fit the kernel's int32", op, r, p)
			}
		}
		inv, err := b.invFreq(headDim, theta)
		if err != nil {
			return fmt.Errorf("cuda: %s: %w", op, err)
		}
		return batchChunks(a.rows, func(r0, n int) error {
			args := append([]arg{ptrArg(rowsOf(o, r0, n).ptr), ptrArg(rowsOf(a, r0, n).ptr), ptrArg(inv), intArg(n), intArg(a.cols), intArg(headDim)},
				batchInts(positions[r0:r0+n])...)
			if err := b.launchDep(b.fns["rope_at_f32"], [3]int{b.blocks(n * a.cols / 2), 1, 1}, [3]int{256, 1, 1}, 0, args...); err != nil {
				return fmt.Errorf("cuda: %s: %w", op, err)
			}
			return nil
		})
	})
}

// ScatterRows implements backend.Batched.
func (b *Backend) ScatterRows(dst backend.Tensor, rows []int, src backend.Tensor) error {
	return b.do(func() error {
		const op = "scatter rows"
		d, err := b.tenKV(dst, op, "dst")
		if err != nil {
			return err
		}
		s, err := b.ten(src, op, "src")
		if err != nil {
			return err
		}
		if err := backend.CheckScatterRows("cuda", d, rows, s); err != nil {
			return err
		}
		if overlaps(d, s) {
			return fmt.Errorf("cuda: %s: dst and src share memory", op)
		}
		if d.rows > math.MaxInt32 {
			return fmt.Errorf("cuda: %s: dst has %d rows, more than the kernel's int32 row index", op, d.rows)
		}
		threads := min(256, max(32, (s.cols+31)/32*32))
		return batchChunks(s.rows, func(r0, n int) error {
			args := append([]arg{ptrArg(d.ptr), ptrArg(rowsOf(s, r0, n).ptr), intArg(s.cols)}, batchInts(rows[r0:r0+n])...)
			name := "scatter_rows_f32"
			if d.bf16 { // into a bf16 KV cache
				name = "scatter_rows_kb"
			}
			if err := b.launchDep(b.fns[name], [3]int{n, 1, 1}, [3]int{threads, 1, 1}, 0, args...); err != nil {
				return fmt.Errorf("cuda: %s: %w", op, err)
			}
			return nil
		})
	})
}

// QKNormRoPECacheBatch implements backend.Batched: one launch of qk_norm_rope_cache_at per
// batchMax rows, the arithmetic of qk_norm_rope_cache (and so of the separate ops).
func (b *Backend) QKNormRoPECacheBatch(qr, kr, q, k, v, qn, kn, kCache, vCache backend.Tensor, headDim, capacity int, positions []int, theta float64, eps float32) error {
	return b.do(func() error {
		const op = "qk norm+rope+cache batch"
		ts, err := b.tens(op, []backend.Tensor{qr, kr, q, k, v, qn, kn}, "qr", "kr", "q", "k", "v", "q_norm", "k_norm")
		if err != nil {
			return err
		}
		KC, VC, kv, err := b.kvPair(op, kCache, vCache, "k cache", "v cache")
		if err != nil {
			return err
		}
		QR, KR, Q, K, V, QN, KN := ts[0], ts[1], ts[2], ts[3], ts[4], ts[5], ts[6]
		if err := backend.CheckQKNormRoPECacheBatch("cuda", QR, KR, Q, K, V, QN, KN, KC, VC, headDim, capacity, positions, theta); err != nil {
			return err
		}
		if headDim > 512 {
			return fmt.Errorf("cuda: %s: head_dim %d (at most 512)", op, headDim)
		}
		if int64(KC.rows) > math.MaxInt32 {
			return fmt.Errorf("cuda: %s: caches of %d rows exceed the kernel's int32 positions", op, KC.rows)
		}
		outs, ins := []*Tensor{QR, KR, KC, VC}, []*Tensor{Q, K, V, QN, KN}
		for i, o := range outs {
			for _, in := range ins {
				if overlaps(o, in) {
					return fmt.Errorf("cuda: %s: outputs must not share memory with inputs", op)
				}
			}
			for _, o2 := range outs[i+1:] {
				if overlaps(o, o2) {
					return fmt.Errorf("cuda: %s: the outputs qr, kr and the caches must not share memory", op)
				}
			}
		}
		inv, err := b.invFreq(headDim, theta)
		if err != nil {
			return fmt.Errorf("cuda: %s: %w", op, err)
		}
		nH, nKV := Q.cols/headDim, K.cols/headDim
		return batchChunks(Q.rows, func(r0, n int) error {
			kc, vc := rowsOf(KC, r0*capacity, n*capacity), rowsOf(VC, r0*capacity, n*capacity)
			args := append([]arg{
				ptrArg(rowsOf(QR, r0, n).ptr), ptrArg(rowsOf(KR, r0, n).ptr), ptrArg(rowsOf(Q, r0, n).ptr), ptrArg(rowsOf(K, r0, n).ptr),
				ptrArg(rowsOf(V, r0, n).ptr), ptrArg(QN.ptr), ptrArg(KN.ptr), ptrArg(kc.ptr), ptrArg(vc.ptr), ptrArg(inv),
				intArg(nH), intArg(nKV), intArg(headDim), intArg(capacity), f32Arg(eps),
			}, batchInts(positions[r0:r0+n])...)
			if err := b.launchDep(b.fns["qk_norm_rope_cache_at"+kv], [3]int{n, nH + nKV, 1}, [3]int{normThreads(headDim), 1, 1}, 0, args...); err != nil {
				return fmt.Errorf("cuda: %s: %w", op, err)
			}
			return nil
		})
	})
}

// AttentionBatch implements backend.Batched: for head_dim 128 and at most attDecodeMaxQ query
// heads per KV head, attention_batch_decode_f32 or its register walk (decodeAttnKernel; each
// key read once per KV-head group, the splits merged in the same launch); otherwise
// attention_batch_split_f32 and attention_batch_combine_f32.
func (b *Backend) AttentionBatch(out, q, k, v backend.Tensor, capacity int, positions []int, nHeads, nKV, headDim int) error {
	return b.do(func() error {
		ts, err := b.tens("attention batch", []backend.Tensor{out, q}, "out", "q")
		if err != nil {
			return err
		}
		kt, vt, _, err := b.kvPair("attention batch", k, v, "k", "v")
		if err != nil {
			return err
		}
		o, qt := ts[0], ts[1]
		if err := backend.CheckAttentionBatch("cuda", o, qt, kt, vt, capacity, positions, nHeads, nKV, headDim); err != nil {
			return err
		}
		if overlaps(o, qt) || overlaps(o, kt) || overlaps(o, vt) {
			return fmt.Errorf("cuda: attention batch: out shares memory with q, k or v")
		}
		if headDim > attMaxHeadDim {
			return fmt.Errorf("cuda: attention batch: head_dim %d (at most %d)", headDim, attMaxHeadDim)
		}
		if int64(kt.rows) > math.MaxInt32 {
			return fmt.Errorf("cuda: attention batch: caches of %d rows exceed the kernel's int32 positions", kt.rows)
		}
		decode := headDim == attDecodeDim && nHeads/nKV <= attDecodeMaxQ
		if err := b.attentionBatch(o, qt, kt, vt, capacity, positions, nHeads, nKV, headDim, decode); err != nil {
			return fmt.Errorf("cuda: attention batch: %w", err)
		}
		return nil
	})
}

// attentionBatch launches the batched attention kernels on checked arguments, the grouped
// decode kernel when decode is set (head_dim 128), else split and combine (owner goroutine).
func (b *Backend) attentionBatch(o, qt, kt, vt *Tensor, capacity int, positions []int, nHeads, nKV, headDim int, decode bool) error {
	scale := float32(1 / math.Sqrt(float64(headDim)))
	kv := kvSuffix(kt)
	return batchChunks(qt.rows, func(r0, n int) error {
		pos := positions[r0 : r0+n]
		keys := 0
		for _, p := range pos {
			keys = max(keys, p+1)
		}
		oc, qc := rowsOf(o, r0, n), rowsOf(qt, r0, n)
		kc, vc := rowsOf(kt, r0*capacity, n*capacity), rowsOf(vt, r0*capacity, n*capacity)
		if decode {
			return b.attentionBatchDecode(oc, qc, kc, vc, capacity, pos, keys, nHeads, nKV, scale)
		}
		// Splits sized as Attention's for n query rows over the longest sequence; a shorter
		// sequence's splits past its keys are empty and weigh nothing in the combine.
		S, chunk := attentionSplit(b.sms, n, nHeads, keys)
		if err := b.grow(&b.attnBuf, backend.Workspace, int64(4*n*nHeads*S*(headDim+2)), "attention partials"); err != nil {
			return err
		}
		args := append([]arg{ptrArg(b.attnBuf.ptr), ptrArg(qc.ptr), ptrArg(kc.ptr), ptrArg(vc.ptr), intArg(nHeads), intArg(nKV),
			intArg(headDim), intArg(capacity), f32Arg(scale), intArg(chunk)}, batchInts(pos)...)
		if err := b.launchDep(b.fns["attention_batch_split_f32"+kv], [3]int{nHeads, n, S}, [3]int{attThreads, 1, 1}, 4*(headDim+attThreads), args...); err != nil {
			return err
		}
		return b.launchDep(b.fns["attention_batch_combine_f32"], [3]int{nHeads, n, 1}, [3]int{attThreads, 1, 1}, 0,
			ptrArg(oc.ptr), ptrArg(b.attnBuf.ptr), intArg(nHeads), intArg(headDim), intArg(S))
	})
}

// attentionBatchDecode runs attention_batch_decode_f32 (or its register-walk form,
// decodeAttnKernel) for n ≤ batchMax rows: one block per (KV head, key split, row), the splits sized as attention_decode_f32's for n·nKV KV heads
// over the longest sequence (owner goroutine). The partials share the attention workspace and
// the arrival counters attention_decode_f32's (both kernels leave every counter at zero, and
// launches on the one stream do not overlap in those buffers: a kernel's pdl_wait waits for
// the whole previous grid).
func (b *Backend) attentionBatchDecode(o, qt, kt, vt *Tensor, capacity int, pos []int, keys, nHeads, nKV int, scale float32) error {
	n, hd, G := qt.rows, attDecodeDim, nHeads/nKV
	S, chunk := attentionDecodeSplit(b.decodeAttnSlots(), n*nKV, keys)
	if err := b.grow(&b.attnBuf, backend.Workspace, int64(4*n*nHeads*S*(hd+2)), "attention partials"); err != nil {
		return err
	}
	if need := int64(4 * batchMax * nKV); b.attnCounters.bytes < need {
		// The kernels leave every counter at zero; a new buffer starts there.
		if err := b.grow(&b.attnCounters, backend.Workspace, need, "attention counters"); err != nil {
			return err
		}
		if err := memsetD8(b.attnCounters.ptr, 0, b.attnCounters.bytes); err != nil {
			return err
		}
	}
	fn, threads, shmem := b.decodeAttnKernel(batchDecodeAttnRegs, "attention_batch_decode_f32", kvSuffix(kt), G)
	args := append([]arg{ptrArg(o.ptr), ptrArg(b.attnBuf.ptr), ptrArg(b.attnCounters.ptr), ptrArg(qt.ptr), ptrArg(kt.ptr), ptrArg(vt.ptr),
		intArg(nHeads), intArg(nKV), intArg(capacity), f32Arg(scale), intArg(chunk)}, batchInts(pos)...)
	return b.launchDep(fn, [3]int{nKV, S, n}, [3]int{threads, 1, 1}, shmem, args...)
}

// BatchedEnabled implements backend.BatchedGate: the batched kernels (kernels/batch.cu) passed
// batch_test.go on the H200 (device run 17), so they are on unless QWENGO_CUDA_BATCHED=0, which
// makes models decode batches through the per-sequence ops (qwen3.DecodeBatch) instead.
func (b *Backend) BatchedEnabled() bool { return os.Getenv("QWENGO_CUDA_BATCHED") != "0" }
