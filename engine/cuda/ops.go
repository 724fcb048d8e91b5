//go:build cuda

package cuda

import (
	"fmt"
	"math"
	"os"
	"strconv"
	"unsafe"

	"github.com/qwengo/qwengo/engine/backend"
)

// Every op validates its arguments on the owner goroutine before launching anything, so an op
// that returns an error has written nothing. Launches are asynchronous; a fault inside a kernel
// surfaces at the next Download or Sync.

// Embedding implements backend.Backend.
func (b *Backend) Embedding(out backend.Tensor, table backend.Weight, ids []int) error {
	return b.do(func() error {
		o, err := b.ten(out, "embedding", "out")
		if err != nil {
			return err
		}
		w, err := b.weight(table, "embedding")
		if err != nil {
			return err
		}
		if o.rows != len(ids) || o.cols != w.in {
			return fmt.Errorf("cuda: embedding: out [%d, %d] for %d ids of width %d", o.rows, o.cols, len(ids), w.in)
		}
		ids32 := make([]int32, len(ids))
		for t, id := range ids {
			if id < 0 || id >= w.out {
				return fmt.Errorf("token id %d at position %d is outside the vocabulary (0..%d)", id, t, w.out-1)
			}
			ids32[t] = int32(id)
		}
		if err := b.grow(&b.idsBuf, backend.Workspace, int64(4*len(ids)), "token ids"); err != nil {
			return err
		}
		if err := memcpyHtoD(b.idsBuf.ptr, unsafe.Pointer(&ids32[0]), int64(4*len(ids))); err != nil {
			return fmt.Errorf("cuda: embedding: %w", err)
		}
		g, bl := [3]int{b.blocks(o.n()), 1, 1}, [3]int{256, 1, 1}
		var lerr error
		switch w.kind {
		case kindF32:
			lerr = launch(b.fns["embedding_f32"], g, bl, 0, ptrArg(o.ptr), ptrArg(w.ptr), ptrArg(b.idsBuf.ptr), intArg(o.rows), intArg(o.cols))
		case kindBF16:
			lerr = launch(b.fns["embedding_bf16"], g, bl, 0, ptrArg(o.ptr), ptrArg(w.ptr), ptrArg(b.idsBuf.ptr), intArg(o.rows), intArg(o.cols))
		default:
			lerr = launch(b.fns["embedding_nvfp4"], g, bl, 0, ptrArg(o.ptr), ptrArg(w.ptr), ptrArg(w.scales), f32Arg(w.global),
				ptrArg(b.idsBuf.ptr), intArg(o.rows), intArg(o.cols))
		}
		if lerr != nil {
			return fmt.Errorf("cuda: embedding %s: %w", w.name, lerr)
		}
		return nil
	})
}

// gemvMaxRows is the largest number of token rows the CUDA-core NVFP4 GEMVs take (matmul.cu,
// gemv.cu); the tensor-core one (gemv_tcb.cu) takes 8, the dense ones gemvDenseMaxRows.
const gemvMaxRows = 4

// MatMul implements backend.Backend: out[T, N] = x[T, K] · W[N, K]ᵀ. Up to four token rows use
// the GEMV kernels (each weight row read once for all of them), more use the tiled kernel.
func (b *Backend) MatMul(out, x backend.Tensor, bw backend.Weight) error {
	return b.do(func() error {
		o, err := b.ten(out, "matmul", "out")
		if err != nil {
			return err
		}
		a, err := b.ten(x, "matmul", "x")
		if err != nil {
			return err
		}
		w, err := b.weight(bw, "matmul")
		if err != nil {
			return err
		}
		if err := backend.CheckMatMul("cuda", o, a, w, w.name); err != nil {
			return err
		}
		if err := b.matmul(o, a, w); err != nil {
			return fmt.Errorf("cuda: matmul %s: %w", w.name, err)
		}
		return nil
	})
}

// gemvDenseMaxRows is the largest number of token rows the dense (f32, bf16) GEMVs take.
const gemvDenseMaxRows = 8

// gemvRowsMax is the most token rows one GEMV launch takes for a weight kind.
func gemvRowsMax(kind string) int {
	if kind == kindNVFP4 {
		return gemvMaxRows
	}
	return gemvDenseMaxRows
}

// gemvShape reports whether a product of T token rows with K inputs takes the GEMV path.
func gemvShape(kind string, T, K int) bool {
	return T >= 1 && T <= gemvRowsMax(kind) && (kind == kindNVFP4 || K%8 == 0)
}

// GEMV launch geometry, mirroring matmul.cu: 8 warps per block, 4 weight rows per warp.
const (
	gemvWarps = 8
	gemvRows  = 4
)

// gemvSplit picks how many warps share one group of 4 weight rows, each taking a slice of K:
// enough warps in all to fill every SM (about 48 resident warps each), but at least 32 units
// (one per lane) per slice.
func gemvSplit(sms, N, units int) int {
	groups := (N + gemvRows - 1) / gemvRows
	ksplit := 1
	for ksplit < gemvWarps && groups*ksplit < 48*sms && units/(2*ksplit) >= 32 {
		ksplit *= 2
	}
	return ksplit
}

func (b *Backend) matmul(o, a *Tensor, w *Weight) error {
	T, K, N := a.rows, a.cols, w.out
	if w.kind == kindNVFP4 {
		if took, err := b.gemvNVFP4(o, a, w); took {
			return err
		}
	}
	if b.gemmHiLoTakes(T, K, w) {
		if ok, err := b.gemmMatMulHiLo(o, a, w); ok {
			return err // a few rows of the lm_head on cuBLASLt (gemm_hilo.go)
		}
	}
	if most := gemvRowsMax(w.kind); T > most && T < gemmMinRows && gemvShape(w.kind, most, K) {
		// A few rows more than one GEMV takes: consecutive GEMVs, each reading the weight once,
		// rather than the tiled kernel.
		for r0 := 0; r0 < T; r0 += most {
			n := min(most, T-r0)
			av := &Tensor{rows: n, cols: K, ptr: a.ptr + devPtr(4*r0*K), cat: a.cat, owner: b, view: true}
			ov := &Tensor{rows: n, cols: N, ptr: o.ptr + devPtr(4*r0*N), cat: o.cat, owner: b, view: true}
			if err := b.matmul(ov, av, w); err != nil {
				return err
			}
		}
		return nil
	}
	if gemvShape(w.kind, T, K) {
		units, name := K/8, fmt.Sprintf("gemv_%s_t%d", w.kind, T)
		if w.kind == kindNVFP4 {
			units = K / 16
		}
		ksplit := gemvSplit(b.sms, N, units)
		rowsPerBlock := gemvRows * gemvWarps / ksplit
		g, bl := [3]int{(N + rowsPerBlock - 1) / rowsPerBlock, 1, 1}, [3]int{32 * gemvWarps, 1, 1}
		fn := b.fns[name]
		if w.kind == kindNVFP4 {
			return launch(fn, g, bl, 0, ptrArg(o.ptr), ptrArg(a.ptr), ptrArg(w.ptr), ptrArg(w.scales),
				f32Arg(w.global*16384), intArg(N), intArg(K), intArg(ksplit))
		}
		return launch(fn, g, bl, 0, ptrArg(o.ptr), ptrArg(a.ptr), ptrArg(w.ptr), intArg(N), intArg(K), intArg(ksplit))
	}
	if b.trainSIMT {
		// the fp32 reference path (parity tests): no bf16 tensor-core products
	} else if ok, err := b.gemmMatMul(o, a, w); ok {
		return err // cuBLASLt (gemm.go): T ≥ 16 rows, dimensions multiples of 8
	}
	if (T+63)/64 > 65535 {
		return fmt.Errorf("%d token rows exceed the tiled kernel's grid (%d)", T, 65535*64)
	}
	g, bl := [3]int{(N + 63) / 64, (T + 63) / 64, 1}, [3]int{256, 1, 1}
	if w.kind == kindNVFP4 {
		return launch(b.fns["matmul_tiled_nvfp4"], g, bl, 0, ptrArg(o.ptr), ptrArg(a.ptr), ptrArg(w.ptr), ptrArg(w.scales),
			f32Arg(w.global), intArg(T), intArg(N), intArg(K))
	}
	return launch(b.fns["matmul_tiled_"+w.kind], g, bl, 0, ptrArg(o.ptr), ptrArg(a.ptr), ptrArg(w.ptr), intArg(T), intArg(N), intArg(K))
}

// RMSNorm implements backend.Backend.
func (b *Backend) RMSNorm(out, x, w backend.Tensor, eps float32) error {
	return b.do(func() error {
		o, err := b.ten(out, "rmsnorm", "out")
		if err != nil {
			return err
		}
		a, err := b.ten(x, "rmsnorm", "x")
		if err != nil {
			return err
		}
		g, err := b.ten(w, "rmsnorm", "weight")
		if err != nil {
			return err
		}
		n := g.n()
		if a.cols%n != 0 || o.rows != a.rows || o.cols != a.cols {
			return fmt.Errorf("cuda: rmsnorm: x [%d, %d] with a weight of %d into [%d, %d] (the weight length must divide the width)", a.rows, a.cols, n, o.rows, o.cols)
		}
		groups := a.n() / n
		if normWarpGroups(n) {
			if err := b.launchDep(b.fns["rmsnorm_warp_f32"], [3]int{(groups + 7) / 8, 1, 1}, [3]int{256, 1, 1}, 0,
				ptrArg(o.ptr), ptrArg(a.ptr), ptrArg(g.ptr), intArg(groups), intArg(n), f32Arg(eps)); err != nil {
				return fmt.Errorf("cuda: rmsnorm: %w", err)
			}
			return nil
		}
		threads := min(256, max(32, (n+31)/32*32))
		if err := b.launchDep(b.fns["rmsnorm_f32"], [3]int{groups, 1, 1}, [3]int{threads, 1, 1}, 0,
			ptrArg(o.ptr), ptrArg(a.ptr), ptrArg(g.ptr), intArg(n), f32Arg(eps)); err != nil {
			return fmt.Errorf("cuda: rmsnorm: %w", err)
		}
		return nil
	})
}

// invFreq returns the device copy of inv_freq_i = theta^(-2i/headDim), computed in float32
// exactly as engine/cpu does, cached per (headDim, theta) under Workspace (worker goroutine).
func (b *Backend) invFreq(headDim int, theta float64) (devPtr, error) {
	key := ropeKey{headDim, theta}
	if buf, ok := b.rope[key]; ok {
		return buf.ptr, nil
	}
	half := headDim / 2
	inv := make([]float32, half)
	for i := range inv {
		inv[i] = float32(1 / math.Pow(theta, float64(2*i)/float64(headDim)))
	}
	var buf devBuf
	if err := b.grow(&buf, backend.Workspace, int64(4*half), "rope frequencies"); err != nil {
		return 0, err
	}
	if err := memcpyHtoD(buf.ptr, unsafe.Pointer(&inv[0]), int64(4*half)); err != nil {
		b.free(buf.ptr)
		return 0, err
	}
	b.rope[key] = buf
	return buf.ptr, nil
}

// RoPE implements backend.Backend.
func (b *Backend) RoPE(out, x backend.Tensor, headDim, pos0 int, theta float64) error {
	return b.do(func() error {
		o, err := b.ten(out, "rope", "out")
		if err != nil {
			return err
		}
		a, err := b.ten(x, "rope", "x")
		if err != nil {
			return err
		}
		if headDim <= 0 || headDim%2 != 0 || a.cols%headDim != 0 || o.rows != a.rows || o.cols != a.cols || pos0 < 0 || !(theta > 0) ||
			pos0+a.rows > math.MaxInt32 {
			return fmt.Errorf("cuda: rope: x [%d, %d] into [%d, %d] with head_dim %d, position %d, theta %v", a.rows, a.cols, o.rows, o.cols, headDim, pos0, theta)
		}
		inv, err := b.invFreq(headDim, theta)
		if err != nil {
			return fmt.Errorf("cuda: rope: %w", err)
		}
		if err := launch(b.fns["rope_f32"], [3]int{b.blocks(a.n() / 2), 1, 1}, [3]int{256, 1, 1}, 0,
			ptrArg(o.ptr), ptrArg(a.ptr), ptrArg(inv), intArg(a.rows), intArg(a.cols), intArg(headDim), intArg(pos0)); err != nil {
			return fmt.Errorf("cuda: rope: %w", err)
		}
		return nil
	})
}

// attThreads and attMaxHeadDim mirror ATT_THREADS and ATT_THREADS*ATT_MAXD in attention.cu.
const (
	attThreads    = 128
	attMaxHeadDim = 512
)

// attentionSplit picks how many blocks share the keys of one (head, query row) pair: 1 when
// the pairs alone fill the GPU (prefill), else enough splits of whole 128-key chunks for about
// four blocks per SM (decode), at most 64. It returns the split count and the keys per split.
func attentionSplit(sms, T, nHeads, keys int) (splits, chunk int) {
	pairs := T * nHeads
	chunks := (keys + attThreads - 1) / attThreads
	if pairs >= 2*sms || chunks <= 1 {
		return 1, keys
	}
	s := min(chunks, (4*sms+pairs-1)/pairs, 64)
	chunk = (chunks + s - 1) / s * attThreads
	return (keys + chunk - 1) / chunk, chunk
}

// Attention implements backend.Backend.
func (b *Backend) Attention(out, q, k, v backend.Tensor, pos0, nHeads, nKV, headDim int) error {
	return b.do(func() error {
		o, err := b.ten(out, "attention", "out")
		if err != nil {
			return err
		}
		qt, err := b.ten(q, "attention", "q")
		if err != nil {
			return err
		}
		kt, vt, _, err := b.kvPair("attention", k, v, "k", "v")
		if err != nil {
			return err
		}
		if err := backend.CheckAttention("cuda", o, qt, kt, vt, pos0, nHeads, nKV, headDim); err != nil {
			return err
		}
		T := qt.rows
		if headDim > attMaxHeadDim || T > 65535 {
			return fmt.Errorf("cuda: attention: head_dim %d (at most %d) with %d query rows (at most 65535) is not supported by this kernel", headDim, attMaxHeadDim, T)
		}
		if err := b.attention(o, qt, kt, vt, pos0, nHeads, nKV, headDim); err != nil {
			return fmt.Errorf("cuda: attention: %w", err)
		}
		return nil
	})
}

// attention launches the attention kernels on checked arguments (worker goroutine).
func (b *Backend) attention(o, qt, kt, vt *Tensor, pos0, nHeads, nKV, headDim int) error {
	T := qt.rows
	if b.useFlash(T, headDim) {
		return b.flashAttention(o.ptr, 0, qt, kt, vt, pos0, nHeads, nKV, 1)
	}
	scale := float32(1 / math.Sqrt(float64(headDim)))
	if headDim == attDecodeDim && T*(nHeads/nKV) <= attDecodeMaxQ && !b.attnSIMT {
		return b.attentionDecode(o, qt, kt, vt, pos0, nHeads, nKV, scale)
	}
	shmem := 4 * (headDim + attThreads)
	S, chunk := attentionSplit(b.sms, T, nHeads, pos0+T)
	kv := kvSuffix(kt)
	if S == 1 {
		if err := launch(b.fns["attention_f32"+kv], [3]int{nHeads, T, 1}, [3]int{attThreads, 1, 1}, shmem,
			ptrArg(o.ptr), ptrArg(qt.ptr), ptrArg(kt.ptr), ptrArg(vt.ptr), intArg(pos0), intArg(nHeads), intArg(nKV), intArg(headDim), f32Arg(scale)); err != nil {
			return err
		}
		return nil
	}
	if err := b.grow(&b.attnBuf, backend.Workspace, int64(4*T*nHeads*S*(headDim+2)), "attention partials"); err != nil {
		return err
	}
	if err := launch(b.fns["attention_split_f32"+kv], [3]int{nHeads, T, S}, [3]int{attThreads, 1, 1}, shmem,
		ptrArg(b.attnBuf.ptr), ptrArg(qt.ptr), ptrArg(kt.ptr), ptrArg(vt.ptr), intArg(pos0), intArg(nHeads), intArg(nKV), intArg(headDim),
		f32Arg(scale), intArg(chunk)); err != nil {
		return err
	}
	if err := launch(b.fns["attention_combine_f32"], [3]int{nHeads, T, 1}, [3]int{attThreads, 1, 1}, 0,
		ptrArg(o.ptr), ptrArg(b.attnBuf.ptr), intArg(nHeads), intArg(headDim), intArg(S)); err != nil {
		return err
	}
	return nil
}

// attention_decode_f32's geometry (attention.cu: AD_D, AD_KEYS, AD_MAXQ).
const (
	attDecodeDim  = 128
	attDecodeKeys = 32
	attDecodeMaxQ = 16
)

// attentionDecodeSplit picks the key splits of attention_decode_f32: whole 32-key tiles, about
// slots blocks over the nKV heads (Backend.decodeAttnSlots), at most 64 splits. Each block walks
// its tiles one round trip at a time, so fewer tiles per block is what hides latency: with two
// blocks per SM (the first choice) a batch-8 step at context 1024 spent 56 µs a layer in
// attention (ncu, device run 23: 7 tiles per block, 1.2 TB/s) and batch 1 at context 8192 about
// as much.
func attentionDecodeSplit(slots, nKV, keys int) (splits, chunk int) {
	tiles := (keys + attDecodeKeys - 1) / attDecodeKeys
	s := max(1, min(tiles, (slots+nKV-1)/nKV, 64))
	chunk = (tiles + s - 1) / s * attDecodeKeys
	return (keys + chunk - 1) / chunk, chunk
}

// decodeAttnBlocksPerSM is the decode attention's split target, blocks an SM. Four since session
// 18 (call 3, TestFiguresDecodeAttention, bf16 cache, register walk, 1 / 2 / 4 / 8 blocks an SM):
// batch 8 at context 1024 (64 KV-head rows: 5 / 9 / 17 splits) 19.2 / 18.9 / 13.4 / 15.2 µs;
// batch 1 (8 KV heads) reaches the 64-split cap at four as at eight, 16.7 µs at context 8192.
// With more splits every block walks fewer keys but the last block merges more records; with
// fewer, each warp walks more key groups one round trip at a time.
const decodeAttnBlocksPerSM = 4

// decodeAttnBlocksFromEnv is the decode attention's split target, blocks an SM:
// QWENGO_CUDA_DECODE_ATTN_BLOCKS (a measurement knob), else decodeAttnBlocksPerSM.
func decodeAttnBlocksFromEnv() int {
	if n := positiveEnv("QWENGO_CUDA_DECODE_ATTN_BLOCKS"); n > 0 {
		return n
	}
	return decodeAttnBlocksPerSM
}

// decodeAttnSlots is how many blocks the decode attention's key splits aim for.
func (b *Backend) decodeAttnSlots() int {
	if b.decodeAttnBlocks < 1 { // a Backend not built by New (tests)
		return decodeAttnBlocksPerSM * b.sms
	}
	return b.decodeAttnBlocks * b.sms
}

// decodeAttnRegs are the register-walk decode attention kernels (attention_common.cuh:
// dr_attend) by query vectors a KV head: attention.cu's and batch.cu's entry points (a bf16
// cache's are these names + "_kb").
var (
	decodeAttnRegs      = map[int]string{1: "attention_decode_r1", 2: "attention_decode_r2", 4: "attention_decode_r4"}
	batchDecodeAttnRegs = map[int]string{1: "attention_batch_decode_r1", 2: "attention_batch_decode_r2", 4: "attention_batch_decode_r4"}
)

// attDecodeRegWarps is dr_attend's warps a block (attention_common.cuh: DR_WARPS).
const attDecodeRegWarps = 4

// decodeAttnKernel picks the decode attention kernel for Q query vectors a KV head over a cache
// whose kernels carry suffix kv (kvSuffix), and its block size and dynamic shared memory: the
// register walk for Q = 1, 2, 4 (NOTES.md, session 8), else — or with
// QWENGO_CUDA_DECODE_ATTN=tiles — the shared-memory tile kernel named tiles.
func (b *Backend) decodeAttnKernel(names map[int]string, tiles, kv string, Q int) (fn function, threads, shmem int) {
	if name, ok := names[Q]; ok && !b.decodeAttnTiles && b.fns[name+kv] != nil {
		return b.fns[name+kv], 32 * attDecodeRegWarps, 0
	}
	hd := attDecodeDim
	return b.fns[tiles+kv], 32 * Q, 4 * (Q*hd + attDecodeKeys*(hd+1) + attDecodeKeys*hd)
}

// attentionDecode runs attention_decode_f32 (or its register-walk form, decodeAttnKernel): one
// block per KV head and key split, all query heads of the group and all T rows together, the
// splits merged by the last block of each KV head (owner goroutine).
func (b *Backend) attentionDecode(o, qt, kt, vt *Tensor, pos0, nHeads, nKV int, scale float32) error {
	T := qt.rows
	Q := T * (nHeads / nKV)
	S, chunk := attentionDecodeSplit(b.decodeAttnSlots(), nKV, pos0+T)
	if err := b.attnDecodeScratch(T*nHeads, S, nKV); err != nil {
		return err
	}
	fn, threads, shmem := b.decodeAttnKernel(decodeAttnRegs, "attention_decode_f32", kvSuffix(kt), Q)
	return b.launchDep(fn, [3]int{nKV, S, 1}, [3]int{threads, 1, 1}, shmem,
		ptrArg(o.ptr), ptrArg(b.attnBuf.ptr), ptrArg(b.attnCounters.ptr), ptrArg(qt.ptr), ptrArg(kt.ptr), ptrArg(vt.ptr),
		intArg(pos0), intArg(T), intArg(nHeads), intArg(nKV), f32Arg(scale), intArg(chunk), intArg(b.decodeAttnPrefetchRows(chunk)))
}

// decodeAttnPrefetchAuto: each block of the one-row decode attention asks L2 for its cached keys
// and values before pdl_wait when it walks at most one round of them (attDecodeKeys: contexts up
// to ~2k keys at 64 splits), none beyond. Measured (session 22, calls 5-6, TestFiguresDecodeForms,
// 36 layers, one process, three runs each, µs a layer): context 512 without logits 50.60 / 51.27 /
// 50.90 → 49.51 / 49.38 / 49.50 (greedy 54.58 / 55.42 / 54.70 → 54.69 / 54.62 / 54.48); asking for
// every row at context 8192 (128 a block) was 1.3-1.5 slower, the first 32 rows 0.1-0.7 slower.
const decodeAttnPrefetchAuto = -1

// decodeAttnPrefetchFromEnv is the decode attention's L2 prefetch, rows a block:
// QWENGO_CUDA_DECODE_ATTN_PREFETCH=N (0: none; a measurement knob), else the automatic choice.
func decodeAttnPrefetchFromEnv() int {
	n, err := strconv.Atoi(os.Getenv("QWENGO_CUDA_DECODE_ATTN_PREFETCH"))
	if err != nil || n < 0 {
		return decodeAttnPrefetchAuto
	}
	return n
}

// decodeAttnPrefetchRows is how many of a block's cached rows the one-row decode attention asks
// L2 for before pdl_wait, for splits of chunk keys.
func (b *Backend) decodeAttnPrefetchRows(chunk int) int {
	if b.decodeAttnPrefetch != decodeAttnPrefetchAuto {
		return b.decodeAttnPrefetch
	}
	if chunk <= attDecodeKeys {
		return chunk
	}
	return 0
}

// attnDecodeScratch grows the decode attention's split records (S for each of q query vectors)
// and its per-KV-head arrival counters (owner goroutine).
func (b *Backend) attnDecodeScratch(q, S, nKV int) error {
	if err := b.grow(&b.attnBuf, backend.Workspace, int64(4*q*S*(attDecodeDim+2)), "attention partials"); err != nil {
		return err
	}
	if b.attnCounters.bytes < int64(4*nKV) {
		// The kernels leave every counter at zero; a new buffer starts there.
		if err := b.grow(&b.attnCounters, backend.Workspace, int64(4*nKV), "attention counters"); err != nil {
			return err
		}
		if err := memsetD8(b.attnCounters.ptr, 0, b.attnCounters.bytes); err != nil {
			return err
		}
	}
	return nil
}

// SwiGLU implements backend.Backend.
func (b *Backend) SwiGLU(out, gate, up backend.Tensor) error {
	return b.do(func() error {
		o, err := b.ten(out, "swiglu", "out")
		if err != nil {
			return err
		}
		g, err := b.ten(gate, "swiglu", "gate")
		if err != nil {
			return err
		}
		u, err := b.ten(up, "swiglu", "up")
		if err != nil {
			return err
		}
		if g.rows != u.rows || g.cols != u.cols || o.rows != g.rows || o.cols != g.cols {
			return fmt.Errorf("cuda: swiglu: gate [%d, %d], up [%d, %d], out [%d, %d]", g.rows, g.cols, u.rows, u.cols, o.rows, o.cols)
		}
		if err := b.launchDep(b.fns["swiglu_f32"], [3]int{b.blocks(o.n()), 1, 1}, [3]int{256, 1, 1}, 0,
			ptrArg(o.ptr), ptrArg(g.ptr), ptrArg(u.ptr), sizeArg(int64(o.n()))); err != nil {
			return fmt.Errorf("cuda: swiglu: %w", err)
		}
		return nil
	})
}

// Add implements backend.Backend.
func (b *Backend) Add(dst, src backend.Tensor) error {
	return b.do(func() error {
		d, err := b.ten(dst, "add", "dst")
		if err != nil {
			return err
		}
		s, err := b.ten(src, "add", "src")
		if err != nil {
			return err
		}
		if d.rows != s.rows || d.cols != s.cols {
			return fmt.Errorf("cuda: add: [%d, %d] += [%d, %d]", d.rows, d.cols, s.rows, s.cols)
		}
		if err := launch(b.fns["add_f32"], [3]int{b.blocks(d.n()), 1, 1}, [3]int{256, 1, 1}, 0,
			ptrArg(d.ptr), ptrArg(s.ptr), sizeArg(int64(d.n()))); err != nil {
			return fmt.Errorf("cuda: add: %w", err)
		}
		return nil
	})
}

// CopyRows implements backend.Backend: one device-to-device copy (rows are contiguous), or a
// conversion kernel between a float32 tensor and a bf16 KV cache.
func (b *Backend) CopyRows(dst backend.Tensor, dstRow int, src backend.Tensor, srcRow, n int) error {
	return b.do(func() error {
		d, err := b.tenKV(dst, "copy rows", "dst")
		if err != nil {
			return err
		}
		s, err := b.tenKV(src, "copy rows", "src")
		if err != nil {
			return err
		}
		if d.cols != s.cols || n < 0 || dstRow < 0 || srcRow < 0 || dstRow+n > d.rows || srcRow+n > s.rows {
			return fmt.Errorf("cuda: copy rows: %d rows from row %d of [%d, %d] to row %d of [%d, %d]", n, srcRow, s.rows, s.cols, dstRow, d.rows, d.cols)
		}
		if d.bf16 != s.bf16 { // into or out of a bf16 KV cache: round to nearest even, or widen
			return b.convertRows(d, dstRow, s, srcRow, n)
		}
		row := int64(d.cols) * d.elemBytes()
		to, from, size := d.ptr+devPtr(int64(dstRow)*row), s.ptr+devPtr(int64(srcRow)*row), int64(n)*row
		if d == s && n > 0 && dstRow != srcRow && dstRow < srcRow+n && srcRow < dstRow+n {
			// Overlapping ranges of one tensor: cuMemcpyDtoD does not allow it; go through a copy.
			tmp, err := b.alloc(backend.Workspace, size, "copy rows (overlapping)")
			if err != nil {
				return err
			}
			defer b.free(tmp)
			if err := memcpyDtoD(tmp, from, size); err != nil {
				return fmt.Errorf("cuda: copy rows: %w", err)
			}
			from = tmp
		}
		if err := memcpyDtoD(to, from, size); err != nil {
			return fmt.Errorf("cuda: copy rows: %w", err)
		}
		return nil
	})
}

var _ backend.Backend = (*Backend)(nil)

// convertRows copies n rows between a float32 tensor and a bf16 KV cache of the same width
// (kernels/pack.cu: bf16_pack rounds to nearest even, bf16_unpack widens exactly); the two are
// different allocations, so they cannot overlap (owner goroutine).
func (b *Backend) convertRows(d *Tensor, dstRow int, s *Tensor, srcRow, n int) error {
	if n == 0 {
		return nil
	}
	count := int64(n) * int64(d.cols)
	to := d.ptr + devPtr(int64(dstRow)*int64(d.cols)*d.elemBytes())
	from := s.ptr + devPtr(int64(srcRow)*int64(s.cols)*s.elemBytes())
	name := "bf16_pack"
	if s.bf16 {
		name = "bf16_unpack"
	}
	if err := launch(b.fns[name], [3]int{b.blocks(int(min(count, 1<<30))), 1, 1}, [3]int{256, 1, 1}, 0,
		ptrArg(to), ptrArg(from), sizeArg(count)); err != nil {
		return fmt.Errorf("cuda: copy rows: %w", err)
	}
	return nil
}
