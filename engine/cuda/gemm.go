//go:build cuda

package cuda

import (
	"errors"
	"fmt"
	"os"

	"github.com/qwengo/qwengo/engine/backend"
)

// Tensor-core GEMMs for prefill and training through cuBLASLt (blaslt.go), bf16 operands and
// fp32 accumulation and output:
//
//   - MatMul with T ≥ gemmMinRows token rows goes here when cuBLASLt loaded, both matrix
//     dimensions are multiples of 8 (16-byte rows of bf16) and QWENGO_CUDA_GEMM is not "simt";
//     otherwise, or when no algorithm fits or the scratch cannot be allocated, the SIMT tiled
//     kernel (matmul.cu) runs as before. Fewer rows stay on the GEMV kernels.
//   - The activations (float32) are rounded to bf16 into a scratch (convert.cu f32_to_bf16). A
//     bf16 weight is used as it is; an NVFP4 weight is expanded to bf16 e2m1·e4m3 (exact, the
//     FP32 tensor scale goes into alpha) and an f32 weight rounded to bf16, into a reusable
//     scratch of at most gemmChunkElems elements: a weight larger than that is expanded and
//     multiplied a block of rows at a time.
//   - gemmDX and gemmDW are the products of MatMul's backward for the training code
//     (MatMulBackward): dx = dout·W (written or accumulated) and dw += doutᵀ·x (fp32, beta = 1).
//
// Row-major ↔ column-major. cuBLAS is column-major: a row-major [R, C] matrix with row stride
// C is, to cuBLAS, the column-major C×R matrix (its transpose) with leading dimension C. So
// every row-major product P = X·Y is computed as Pᵀ = Yᵀ·Xᵀ with the operands as they lie:
//
//	forward  out[T,N] = x[T,K]·W[N,K]ᵀ    outᵀ (N×T, ld N)  = op_T(W: K×N, ld K) · (xᵀ: K×T, ld K)     "TN"
//	dx       dx[T,In] = dout[T,Out]·W     dxᵀ (In×T, ld In) = (Wᵀ: In×Out, ld In) · (doutᵀ: Out×T, ld Out)  "NN"
//	dw       dw[Out,In] += doutᵀ·x[T,In]  dwᵀ (In×Out, ld In) = (xᵀ: In×T, ld In) · op_T(doutᵀ: Out×T, ld Out)  "NT"
//
// A block of weight rows [r0, r1) is a block of columns of W's column-major view: in the
// forward it is a block of rows of outᵀ (D offset r0, same ld N); in dx it is a block of the
// sum's k range (B offset r0 in doutᵀ's columns, beta = 1 after the first block).
//
// Everything here runs on the owner goroutine, on the default stream after the kernels queued
// before it; the scratch buffers are accounted under Workspace.

const (
	// gemmMinRows is the fewest token rows MatMul sends to cuBLASLt.
	gemmMinRows = 16
	// gemmWorkspaceBytes is cuBLASLt's workspace, allocated once per backend.
	gemmWorkspaceBytes = 32 << 20
)

// gemmChunkElems bounds the bf16 copy of a converted weight (64 MB): Qwen3-4B's largest
// projection (9728×2560) fits whole; a 151936×2560 lm_head goes in blocks of rows. A variable
// so that tests can make blocks small.
var gemmChunkElems = 32 << 20

// errGEMMUnsupported means the cuBLASLt path cannot take a product (library missing, disabled,
// shape, no algorithm, scratch not allocatable) and nothing was written: use the SIMT kernels.
var errGEMMUnsupported = errors.New("cuda: product not taken by the cuBLASLt path")

// gemmState is a backend's cuBLASLt state (owner goroutine only).
type gemmState struct {
	tried bool   // setup attempted (on first use)
	on    bool   // cuBLASLt is usable
	note  string // why it is off, or the library and version when on
	h     ltHandle
	ws    devBuf // cuBLASLt workspace
	act   devBuf // bf16 x (forward) or dout (backward)
	act2  devBuf // bf16 x (dw)
	wbuf  devBuf // bf16 expansion of a block of weight rows
	hilo  devBuf // float32 hi and lo products of a few-row lm_head (gemm_hilo.go)
	plans map[ltShape]*ltPlan
	calls int64  // cuBLASLt products run (tests)
	skip  string // the last reason a product was left to the SIMT kernels (plan failure) or a tuning failed
	tune  bool   // plans are tuned at their gemmTuneAtUse-th launch (gemm_tune.go)
	tuned []gemmTuneRecord
}

// release frees the host-side cuBLASLt objects; the device buffers are ordinary allocations,
// freed with the others by teardown.
func (g *gemmState) release() {
	for _, p := range g.plans {
		p.free()
	}
	g.h.destroy()
	*g = gemmState{tried: true, note: "closed"}
}

// gemmReady sets cuBLASLt up on first use and reports whether it is usable.
func (b *Backend) gemmReady() bool {
	g := &b.gemm
	if g.tried {
		return g.on
	}
	g.tried = true
	if v := os.Getenv("QWENGO_CUDA_GEMM"); v == "simt" {
		g.note = "QWENGO_CUDA_GEMM=simt"
		return false
	}
	if err := loadCublasLt(); err != nil {
		g.note = err.Error()
		return false
	}
	h, err := newLtHandle()
	if err != nil {
		g.note = fmt.Sprintf("cuda: %s: %v", cublasLt.path, err)
		return false
	}
	g.h, g.on, g.plans, g.tune = h, true, map[ltShape]*ltPlan{}, gemmTuneOn()
	g.note = fmt.Sprintf("%s (version %d)", cublasLt.path, cublasLt.version)
	return true
}

// gemmStatus says whether MatMul uses cuBLASLt and why not (for tests and figures).
func (b *Backend) gemmStatus() string {
	var s string
	b.do(func() error {
		if b.gemmReady() {
			s = "cuBLASLt " + b.gemm.note
			if !b.gemm.tune {
				s += "; algorithm tuning off (QWENGO_CUDA_GEMM_TUNE=0)"
			} else if n := len(b.gemm.tuned); n > 0 {
				changed := 0
				for _, r := range b.gemm.tuned {
					if r.pick != 0 {
						changed++
					}
				}
				s += fmt.Sprintf("; %d shapes tuned, %d off the heuristic's first choice", n, changed)
			}
			if b.gemm.skip != "" {
				s += "; last product left to SIMT: " + b.gemm.skip
			}
		} else {
			s = "SIMT only: " + b.gemm.note
		}
		return nil
	})
	return s
}

// gemmShapeOK reports whether a product with a weight [out, in] fits the cuBLASLt path: bf16
// rows of 16-byte multiples (and so 16-byte fp32 rows) for every operand.
func gemmShapeOK(in, out int) bool { return in > 0 && out > 0 && in%8 == 0 && out%8 == 0 }

// gemmChunkRows is how many rows of a weight [rows, in] are expanded to bf16 at a time: as many
// as fit gemmChunkElems, a multiple of 128 (so that block offsets keep 256-byte alignment).
func gemmChunkRows(rows, in int) int {
	r := max(gemmChunkElems/in/128*128, 128)
	return min(r, rows)
}

// ltOperand names a buffer of a planned product.
type ltOperand int

const (
	opWeight ltOperand = iota // bf16 weight rows [w0, w1): the weight itself or its expansion
	opAct                     // bf16 activations: x (forward) or dout (backward)
	opAct2                    // bf16 x (dw)
	opOut                     // fp32 result
)

// ltCall is one cuBLASLt product of a GEMM (see the mapping above): D = alpha·op(A)·op(B) +
// beta·D with element offsets into the operands. For opWeight the offset is relative to row
// w0 of the weight.
type ltCall struct {
	shape            ltShape
	a, b             ltOperand
	aOff, bOff, dOff int64
	w0, w1           int // weight rows the call reads (opWeight), else 0, 0
	beta             float32
}

// planForward splits out[T,N] = x[T,K]·W[N,K]ᵀ over blocks of chunk weight rows.
func planForward(T, K, N, chunk int) []ltCall {
	var calls []ltCall
	for n0 := 0; n0 < N; n0 += chunk {
		n1 := min(n0+chunk, N)
		calls = append(calls, ltCall{
			shape: ltShape{transA: true, m: n1 - n0, n: T, k: K, lda: K, ldb: K, ldd: N},
			a:     opWeight, b: opAct, dOff: int64(n0), w0: n0, w1: n1,
		})
	}
	return calls
}

// planDX splits dx[T,In] (+)= dout[T,Out]·W[Out,In] over blocks of chunk weight rows (the sum's
// range); every block after the first accumulates.
func planDX(T, In, Out, chunk int, accumulate bool) []ltCall {
	var calls []ltCall
	for o0 := 0; o0 < Out; o0 += chunk {
		o1 := min(o0+chunk, Out)
		beta := float32(0)
		if accumulate || o0 > 0 {
			beta = 1
		}
		calls = append(calls, ltCall{
			shape: ltShape{m: In, n: T, k: o1 - o0, lda: In, ldb: Out, ldd: In},
			a:     opWeight, b: opAct, bOff: int64(o0), w0: o0, w1: o1, beta: beta,
		})
	}
	return calls
}

// planDW is dw[Out,In] += dout[T,Out]ᵀ·x[T,In], one product; dw bf16 when dBF16 (summed in
// fp32, added to the widened dw and rounded once).
func planDW(T, In, Out int, dBF16 bool) []ltCall {
	return []ltCall{{
		shape: ltShape{transB: true, m: In, n: Out, k: T, lda: In, ldb: Out, ldd: In, dBF16: dBF16},
		a:     opAct2, b: opAct, beta: 1,
	}}
}

// ptrAlign is the alignment of a device address in bytes, at most 256.
func ptrAlign(p devPtr) int {
	a := 1
	for a < 256 && uint64(p)%uint64(2*a) == 0 {
		a *= 2
	}
	return a
}

// gemmBuffers are the device buffers of a planned GEMM.
type gemmBuffers struct {
	w     *Weight // opWeight's weight
	act   devPtr
	act2  devPtr
	out   devPtr
	alpha float32
}

// gemmLaunch is a planned call with its pointers and plan.
type gemmLaunch struct {
	call    ltCall
	a, b, d devPtr
	plan    *ltPlan
}

// operand returns the address of a bf16 operand with an element offset.
func (b *Backend) operand(buf gemmBuffers, op ltOperand, off int64, w0 int) devPtr {
	switch op {
	case opWeight:
		if buf.w.kind == kindBF16 {
			return buf.w.ptr + devPtr(2*(int64(w0)*int64(buf.w.in)+off))
		}
		return b.gemm.wbuf.ptr + devPtr(2*off)
	case opAct:
		return buf.act + devPtr(2*off)
	case opAct2:
		return buf.act2 + devPtr(2*off)
	}
	return 0
}

// gemmPrepare resolves the calls' pointers and plans (creating and caching plans) without
// launching anything; a product no algorithm fits gives errGEMMUnsupported.
func (b *Backend) gemmPrepare(calls []ltCall, buf gemmBuffers) ([]gemmLaunch, error) {
	g := &b.gemm
	ls := make([]gemmLaunch, len(calls))
	for i, c := range calls {
		dElem := int64(4)
		if c.shape.dBF16 {
			dElem = 2
		}
		l := gemmLaunch{call: c, a: b.operand(buf, c.a, c.aOff, c.w0), b: b.operand(buf, c.b, c.bOff, c.w0), d: buf.out + devPtr(dElem*c.dOff)}
		s := c.shape
		s.alignA, s.alignB, s.alignD = ptrAlign(l.a), ptrAlign(l.b), ptrAlign(l.d)
		if s.alignA < 2 || s.alignB < 2 || int64(s.alignD) < dElem {
			return nil, fmt.Errorf("%w: misaligned operand for %v", errGEMMUnsupported, s)
		}
		p, ok := g.plans[s]
		if !ok {
			var err error
			if p, err = newLtPlan(g.h, s, gemmWorkspaceBytes); err != nil {
				// Nothing is launched yet: whatever the reason (no algorithm, or a status this
				// library version gives for the combination), the SIMT kernels take the product.
				g.skip = err.Error()
				return nil, fmt.Errorf("%w: %v", errGEMMUnsupported, err)
			}
			g.plans[s] = p
		}
		l.plan = p
		ls[i] = l
	}
	return ls, nil
}

// gemmScratch grows the workspace and the bf16 scratch buffers; failing to allocate them gives
// errGEMMUnsupported (the SIMT kernels need none).
func (b *Backend) gemmScratch(actElems, act2Elems, wElems int64) error {
	g := &b.gemm
	need := []struct {
		buf   *devBuf
		bytes int64
		what  string
	}{
		{&g.ws, gemmWorkspaceBytes, "cuBLASLt workspace"},
		{&g.act, 2 * actElems, "bf16 activations for cuBLASLt"},
		{&g.act2, 2 * act2Elems, "bf16 activations for cuBLASLt (dw)"},
		{&g.wbuf, 2 * wElems, "bf16 weight expansion for cuBLASLt"},
	}
	for _, n := range need {
		if n.bytes == 0 || n.buf.bytes >= n.bytes {
			continue
		}
		if n.buf == &g.ws {
			p, err := b.alloc(backend.Workspace, n.bytes, n.what)
			if err != nil {
				return fmt.Errorf("%w: %v", errGEMMUnsupported, err)
			}
			*n.buf = devBuf{p, n.bytes}
			continue
		}
		if err := b.grow(n.buf, backend.Workspace, n.bytes, n.what); err != nil {
			return fmt.Errorf("%w: %v", errGEMMUnsupported, err)
		}
	}
	return nil
}

// toBF16 rounds n floats at src to bf16 at dst.
func (b *Backend) toBF16(dst, src devPtr, n int64) error {
	return launch(b.fns["f32_to_bf16"], [3]int{b.blocks(int(min((n+7)/8, 1<<30))), 1, 1}, [3]int{256, 1, 1}, 0,
		ptrArg(dst), ptrArg(src), sizeArg(n))
}

// expandWeight writes rows [r0, r1) of an NVFP4 or f32 weight to the bf16 scratch.
func (b *Backend) expandWeight(w *Weight, r0, r1 int) error {
	K := int64(w.in)
	rows := int64(r1 - r0)
	switch w.kind {
	case kindNVFP4:
		blocks := rows * K / 16
		return launch(b.fns["nvfp4_to_bf16"], [3]int{b.blocks(int(min(blocks, 1<<30))), 1, 1}, [3]int{256, 1, 1}, 0,
			ptrArg(b.gemm.wbuf.ptr), ptrArg(w.ptr+devPtr(int64(r0)*K/2)), ptrArg(w.scales+devPtr(int64(r0)*K/16)), sizeArg(blocks))
	case kindF32:
		return b.toBF16(b.gemm.wbuf.ptr, w.ptr+devPtr(4*int64(r0)*K), rows*K)
	}
	return nil
}

// gemmRunLaunches runs prepared products, expanding weight blocks into the scratch first where
// the weight is not bf16 (a block is expanded once for consecutive calls on it). convert
// false skips the expansions (figures: the GEMMs alone).
func (b *Backend) gemmRunLaunches(ls []gemmLaunch, buf gemmBuffers, convert bool) error {
	g := &b.gemm
	last := [2]int{-1, -1}
	for _, l := range ls {
		c := l.call
		if convert && (c.a == opWeight || c.b == opWeight) && buf.w.kind != kindBF16 && last != [2]int{c.w0, c.w1} {
			if err := b.expandWeight(buf.w, c.w0, c.w1); err != nil {
				return fmt.Errorf("expanding weight %q rows %d..%d to bf16: %w", buf.w.name, c.w0, c.w1, err)
			}
			last = [2]int{c.w0, c.w1}
		}
		b.maybeTune(l, buf.alpha)
		if err := l.plan.run(g.h, buf.alpha, c.beta, l.a, l.b, l.d, g.ws.ptr, gemmWorkspaceBytes); err != nil {
			return fmt.Errorf("%v: %w", c.shape, err)
		}
		g.calls++
	}
	return nil
}

// weightAlpha is the scale the GEMM applies for a weight: the NVFP4 tensor scale (the expanded
// weight omits it), else 1.
func weightAlpha(w *Weight) float32 {
	if w.kind == kindNVFP4 {
		return w.global
	}
	return 1
}

// weightChunk is the block of rows expanded at a time (all rows for a bf16 weight, used as is).
func weightChunk(w *Weight) (rows int, scratchElems int64) {
	if w.kind == kindBF16 {
		return w.out, 0
	}
	r := gemmChunkRows(w.out, w.in)
	return r, int64(r) * int64(w.in)
}

// gemmMatMul runs out = x·Wᵀ on cuBLASLt when the product qualifies (see the top of this
// file) and reports whether it did; false means nothing was launched and the caller runs the
// SIMT kernels (owner goroutine).
func (b *Backend) gemmMatMul(o, a *Tensor, w *Weight) (bool, error) {
	T, K, N := a.rows, a.cols, w.out
	if T < gemmMinRows || !gemmShapeOK(K, N) || !b.gemmReady() {
		return false, nil
	}
	l, buf, err := b.gemmForwardPrepare(o, a, w)
	if errors.Is(err, errGEMMUnsupported) {
		return false, nil
	}
	if err != nil {
		return true, err
	}
	if err := b.toBF16(buf.act, a.ptr, int64(T)*int64(K)); err != nil {
		return true, fmt.Errorf("rounding x to bf16: %w", err)
	}
	return true, b.gemmRunLaunches(l, buf, true)
}

// gemmForwardPrepare allocates the scratch and plans out = x·Wᵀ (owner goroutine).
func (b *Backend) gemmForwardPrepare(o, a *Tensor, w *Weight) ([]gemmLaunch, gemmBuffers, error) {
	T, K, N := a.rows, a.cols, w.out
	chunk, welems := weightChunk(w)
	if err := b.gemmScratch(int64(T)*int64(K), 0, welems); err != nil {
		return nil, gemmBuffers{}, err
	}
	buf := gemmBuffers{w: w, act: b.gemm.act.ptr, out: o.ptr, alpha: weightAlpha(w)}
	l, err := b.gemmPrepare(planForward(T, K, N, chunk), buf)
	return l, buf, err
}

// gemmDX computes dx[T, In] = dout[T, Out]·W[Out, In] (added to dx when accumulate) on
// cuBLASLt, for MatMulBackward (owner goroutine). An error wrapping errGEMMUnsupported means
// nothing was launched: use another path.
func (b *Backend) gemmDX(dx, dout *Tensor, w *Weight, accumulate bool) error {
	return b.gemmBackward(dx, nil, dout, nil, w, accumulate)
}

// gemmDW computes dw[Out, In] += dout[T, Out]ᵀ·x[T, In] (dw fp32, beta = 1) on cuBLASLt, for
// MatMulBackward (owner goroutine). An error wrapping errGEMMUnsupported means nothing was
// launched: use another path.
func (b *Backend) gemmDW(dw, dout, x *Tensor) error {
	return b.gemmBackward(nil, dw, dout, x, nil, false)
}

// gemmBackward is MatMul's backward on cuBLASLt: dw += doutᵀ·x when dw is not nil, then dx =
// dout·W (or dx += when accumulate) when dx is not nil; dout is rounded to bf16 once for both,
// and x before dx is written, so dx may share x's memory. w may be nil when dx is; x may be nil
// when dw is. Shapes are checked and every plan made before anything is launched (owner
// goroutine); overlaps of views are the caller's to refuse (MatMulBackward does).
func (b *Backend) gemmBackward(dx, dw, dout, x *Tensor, w *Weight, accumulate bool) error {
	if dout == nil || (dx == nil && dw == nil) {
		return fmt.Errorf("cuda: matmul backward (cuBLASLt): nothing to compute")
	}
	T, Out := dout.rows, dout.cols
	In := 0
	if dx != nil {
		if w == nil {
			return fmt.Errorf("cuda: matmul backward (cuBLASLt): dx without a weight")
		}
		In = w.in
		if w.out != Out || dx.rows != T || dx.cols != w.in {
			return fmt.Errorf("cuda: matmul backward %s: dx [%d, %d] = dout [%d, %d] · W[%d, %d]", w.name, dx.rows, dx.cols, T, Out, w.out, w.in)
		}
		if dx == dout {
			return fmt.Errorf("cuda: matmul backward %s: dx and dout are the same tensor", w.name)
		}
	}
	if dw != nil {
		if x == nil {
			return fmt.Errorf("cuda: matmul backward (cuBLASLt): dw without x")
		}
		if dx != nil && x.cols != In {
			return fmt.Errorf("cuda: matmul backward %s: x [%d, %d] for W[%d, %d]", w.name, x.rows, x.cols, w.out, w.in)
		}
		In = x.cols
		if x.rows != T || dw.rows != Out || dw.cols != In {
			return fmt.Errorf("cuda: matmul backward: dw [%d, %d] += dout [%d, %d]ᵀ · x [%d, %d]", dw.rows, dw.cols, T, Out, x.rows, x.cols)
		}
		if dw == dout || dw == x {
			return fmt.Errorf("cuda: matmul backward: dw shares storage with dout or x")
		}
	}
	if !gemmShapeOK(In, Out) {
		return fmt.Errorf("%w: [%d, %d] weight (both dimensions must be multiples of 8)", errGEMMUnsupported, Out, In)
	}
	if !b.gemmReady() {
		return fmt.Errorf("%w: %s", errGEMMUnsupported, b.gemm.note)
	}
	var act2, welems int64
	chunk := 0
	if dx != nil {
		chunk, welems = weightChunk(w)
	}
	if dw != nil {
		act2 = int64(T) * int64(In)
	}
	if err := b.gemmScratch(int64(T)*int64(Out), act2, welems); err != nil {
		return err
	}
	var ldx, ldw []gemmLaunch
	var bx, bw gemmBuffers
	var err error
	if dx != nil {
		bx = gemmBuffers{w: w, act: b.gemm.act.ptr, out: dx.ptr, alpha: weightAlpha(w)}
		if ldx, err = b.gemmPrepare(planDX(T, In, Out, chunk, accumulate), bx); err != nil {
			return err
		}
	}
	if dw != nil {
		bw = gemmBuffers{act: b.gemm.act.ptr, act2: b.gemm.act2.ptr, out: dw.ptr, alpha: 1}
		if ldw, err = b.gemmPrepare(planDW(T, In, Out, dw.bf16), bw); err != nil {
			return err
		}
	}
	if err := b.toBF16(b.gemm.act.ptr, dout.ptr, int64(T)*int64(Out)); err != nil {
		return fmt.Errorf("cuda: matmul backward: rounding dout to bf16: %w", err)
	}
	// dw first, from bf16 copies of dout and x: dx may then share x's memory (as in
	// MatMulBackward).
	if dw != nil {
		if err := b.toBF16(b.gemm.act2.ptr, x.ptr, int64(T)*int64(In)); err != nil {
			return fmt.Errorf("cuda: matmul backward: rounding x to bf16: %w", err)
		}
		if err := b.gemmRunLaunches(ldw, bw, true); err != nil {
			return fmt.Errorf("cuda: matmul backward (dw): %w", err)
		}
	}
	if dx != nil {
		if err := b.gemmRunLaunches(ldx, bx, true); err != nil {
			return fmt.Errorf("cuda: matmul backward %s (dx): %w", w.name, err)
		}
	}
	return nil
}
