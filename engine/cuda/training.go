//go:build cuda

package cuda

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"sort"
	"sync"
	"unsafe"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/optim"
)

// The training ops (backend.Training): backward kernels, cross-entropy over logit rows and
// AdamW on resident weights, all in kernels/train.cu. Every op is deterministic — each output
// element is computed by one thread in a fixed order and cross-block reductions go through
// per-block partials summed in a fixed order (on the device or the host), never through
// floating-point atomics — so a training step gives the same bits on every run. As the forward
// ops, each op checks its arguments before launching anything.

// trainBufs are the grow-only scratch buffers of the training ops (owner goroutine), accounted
// under Workspace.
type trainBufs struct {
	// The last AdamW constants computed (adamCoeffs) and the hyper-parameters they are for.
	coeffsFor backend.AdamWHyper
	coeffs    optim.CoeffScalars
	coeffsOK  bool
	// The memory spans of the last AdamW batch found disjoint (adamDisjointOnce), in job order.
	disjoint []adamSpan
	spans    []adamSpan // scratch of adamDisjointOnce

	scratch devBuf // float/double partials: attention statistics, RMSNorm rstd and dw partials, losses, sums
	ints    devBuf // int32 data from the host: targets, embedding ids and positions
}

// scratch returns the training scratch buffer grown to at least n bytes (owner goroutine).
// Its content is undefined; an op uses it between its launches only.
func (b *Backend) scratch(n int64, what string) (devPtr, error) {
	if err := b.grow(&b.tr.scratch, backend.Workspace, n, "training scratch ("+what+")"); err != nil {
		return 0, err
	}
	return b.tr.scratch.ptr, nil
}

// uploadInts copies v into the int32 scratch buffer (owner goroutine). The copy is ordered after
// the kernels already queued, so the buffer can be reused by consecutive ops.
func (b *Backend) uploadInts(v []int32, what string) (devPtr, error) {
	n := int64(4 * len(v))
	if err := b.grow(&b.tr.ints, backend.Workspace, n, what); err != nil {
		return 0, err
	}
	if err := memcpyHtoD(b.tr.ints.ptr, unsafe.Pointer(&v[0]), n); err != nil {
		return 0, err
	}
	return b.tr.ints.ptr, nil
}

// optTen is ten for an optional argument: nil stays nil.
func (b *Backend) optTen(x backend.Tensor, op, name string) (*Tensor, error) {
	if x == nil {
		return nil, nil
	}
	return b.ten(x, op, name)
}

// optTenG is optTen for a parameter gradient, which may be bf16 (tenG).
func (b *Backend) optTenG(x backend.Tensor, op, name string) (*Tensor, error) {
	if x == nil {
		return nil, nil
	}
	if t, ok := x.(*Tensor); ok && t == nil {
		return nil, nil
	}
	return b.tenG(x, op, name)
}

// overlaps reports whether two tensors share any device memory (views included).
func overlaps(a, c *Tensor) bool {
	if a == nil || c == nil {
		return false
	}
	return a.ptr < c.ptr+devPtr(c.bytes()) && c.ptr < a.ptr+devPtr(a.bytes())
}

// same reports whether two tensors are the same storage with the same shape (an allowed alias).
func same(a, c *Tensor) bool { return a.ptr == c.ptr && a.rows == c.rows && a.cols == c.cols }

// RowView implements backend.Training: rows [row0, row0+n) of t as a tensor sharing its memory.
// Freeing the view does nothing; it must not be used after t is freed (not detected).
func (b *Backend) RowView(x backend.Tensor, row0, n int) (backend.Tensor, error) {
	var v *Tensor
	err := b.do(func() error {
		t, err := b.tenKV(x, "row view", "tensor")
		if err != nil {
			return err
		}
		if row0 < 0 || n <= 0 || row0+n > t.rows {
			return fmt.Errorf("cuda: row view: rows [%d, %d) of [%d, %d]", row0, row0+n, t.rows, t.cols)
		}
		v = &Tensor{rows: n, cols: t.cols, ptr: t.ptr + devPtr(int64(row0)*int64(t.cols)*t.elemBytes()), cat: t.cat, owner: b, view: true, bf16: t.bf16}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return v, nil
}

// WeightTensor implements backend.Training: an f32 weight [Out, In] as a tensor sharing its
// memory (the RMSNorm weights of a trainable model). bf16 and NVFP4 weights are refused.
func (b *Backend) WeightTensor(bw backend.Weight) (backend.Tensor, error) {
	var v *Tensor
	err := b.do(func() error {
		w, err := b.weight(bw, "weight tensor")
		if err != nil {
			return err
		}
		if w.kind != kindF32 {
			return fmt.Errorf("cuda: weight tensor: weight %q is %s; only f32 weights can be viewed as tensors", w.name, w.kind)
		}
		v = &Tensor{rows: w.out, cols: w.in, ptr: w.ptr, cat: backend.Weights, owner: b, view: true}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return v, nil
}

// Zero implements backend.Training.
func (b *Backend) Zero(x backend.Tensor) error {
	return b.do(func() error {
		t, err := b.tenG(x, "zero", "tensor")
		if err != nil {
			return err
		}
		if err := memsetD8(t.ptr, 0, t.bytes()); err != nil {
			return fmt.Errorf("cuda: zero [%d, %d]: %w", t.rows, t.cols, err)
		}
		return nil
	})
}

// Scale implements backend.Training: t *= s.
func (b *Backend) Scale(x backend.Tensor, s float32) error {
	return b.do(func() error {
		t, err := b.ten(x, "scale", "tensor")
		if err != nil {
			return err
		}
		if err := launch(b.fns["scale_f32"], [3]int{b.blocks(t.n()), 1, 1}, [3]int{256, 1, 1}, 0,
			ptrArg(t.ptr), f32Arg(s), sizeArg(int64(t.n()))); err != nil {
			return fmt.Errorf("cuda: scale [%d, %d]: %w", t.rows, t.cols, err)
		}
		return nil
	})
}

// sumsqParts is the number of partial sums of SumSquares for n elements: a function of n
// alone (not of the GPU), so the result is the same on every device.
func sumsqParts(n int) int { return max(1, min(1024, (n+4095)/4096)) }

// SumSquares implements backend.Training: Σ t² in double, per-block partials summed on the host
// in block order. It waits for the GPU.
func (b *Backend) SumSquares(x backend.Tensor) (float64, error) {
	var sum float64
	err := b.do(func() error {
		t, err := b.tenG(x, "sum of squares", "tensor")
		if err != nil {
			return err
		}
		sums, err := b.sumSquares([]*Tensor{t})
		if err != nil {
			return err
		}
		sum = sums[0]
		return nil
	})
	return sum, err
}

// sumSquares launches sumsq_part_f32 (sumsq_part_bf16 for a bf16 gradient: the same sums of
// the widened values) for every tensor into one scratch buffer, downloads the partials once and
// adds each tensor's in order (owner goroutine). A tensor at a 16-byte aligned address is read
// 8 elements a load (the kernels' vec; the order of the sums follows, train.cu).
func (b *Backend) sumSquares(ts []*Tensor) ([]float64, error) {
	offs := make([]int, len(ts)+1)
	for i, t := range ts {
		offs[i+1] = offs[i] + sumsqParts(t.n())
	}
	part, err := b.scratch(int64(8*offs[len(ts)]), "sums of squares")
	if err != nil {
		return nil, err
	}
	for i, t := range ts {
		fn := b.fns["sumsq_part_f32"]
		if t.bf16 {
			fn = b.fns["sumsq_part_bf16"]
		}
		vec := 0
		if t.ptr%16 == 0 {
			vec = 1
		}
		if err := launch(fn, [3]int{offs[i+1] - offs[i], 1, 1}, [3]int{256, 1, 1}, 0,
			ptrArg(part+devPtr(8*offs[i])), ptrArg(t.ptr), sizeArg(int64(t.n())), intArg(vec)); err != nil {
			return nil, fmt.Errorf("cuda: sum of squares of tensor %d [%d, %d]: %w", i, t.rows, t.cols, err)
		}
	}
	host := make([]float64, offs[len(ts)])
	if err := memcpyDtoH(unsafe.Pointer(&host[0]), part, int64(8*len(host))); err != nil {
		return nil, fmt.Errorf("cuda: sums of squares of %d tensors: %w", len(ts), err)
	}
	out := make([]float64, len(ts))
	for i := range ts {
		for _, v := range host[offs[i]:offs[i+1]] {
			out[i] += v
		}
	}
	return out, nil
}

// sumsqOneByOne makes SumSquaresMany wait once a tensor, as before it existed
// (QWENGO_CUDA_SUMSQ_BATCH=0, for A/B measurements).
var sumsqOneByOne = os.Getenv("QWENGO_CUDA_SUMSQ_BATCH") == "0"

// SumSquaresMany implements backend.SumSquaresBatch: SumSquares' partial sums of every tensor
// into one scratch buffer, one download, each tensor's partials added in SumSquares' order. A
// training step that checks its gradients layer by layer (engine/devtrain's fused optimizer)
// waited for the device once a tensor; now once a layer.
func (b *Backend) SumSquaresMany(xs []backend.Tensor) ([]float64, error) {
	out := make([]float64, len(xs))
	if len(xs) == 0 {
		return out, nil
	}
	if sumsqOneByOne {
		for i, x := range xs {
			s, err := b.SumSquares(x)
			if err != nil {
				return nil, fmt.Errorf("cuda: sum of squares of tensor %d: %w", i, err)
			}
			out[i] = s
		}
		return out, nil
	}
	err := b.do(func() error {
		ts := make([]*Tensor, len(xs))
		for i, x := range xs {
			t, err := b.tenG(x, "sum of squares", fmt.Sprintf("tensor %d", i))
			if err != nil {
				return err
			}
			ts[i] = t
		}
		var err error
		out, err = b.sumSquares(ts)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// MatMulBackward implements backend.Training: for out = x·Wᵀ, dw += doutᵀ·x (first) and
// dx = dout·W (or dx += when accumulate); dx or dw may be nil (x may then be nil too). dw is
// computed before dx, so dx may share x's memory.
func (b *Backend) MatMulBackward(dx, dw, dout, x backend.Tensor, bw backend.Weight, accumulate bool) error {
	return b.do(func() error {
		const op = "matmul backward"
		w, err := b.weight(bw, op)
		if err != nil {
			return err
		}
		d, err := b.ten(dout, op, "dout")
		if err != nil {
			return err
		}
		dxt, err := b.optTen(dx, op, "dx")
		if err != nil {
			return err
		}
		dwt, err := b.optTenG(dw, op, "dw")
		if err != nil {
			return err
		}
		xt, err := b.optTen(x, op, "x")
		if err != nil {
			return err
		}
		if err := backend.CheckMatMulBackward("cuda", dxt, dwt, d, xt, w, w.name, overlaps); err != nil {
			return err
		}
		T := d.rows
		if (T+63)/64 > 65535 {
			return fmt.Errorf("cuda: %s %s: %d token rows exceed the kernel's grid (%d)", op, w.name, T, 65535*64)
		}
		// Many rows (training, prefill): tensor cores through cuBLASLt (bf16 operands, fp32
		// accumulation, as the forward's MatMul); the SIMT kernels otherwise, when cuBLASLt is
		// missing or the shape unsupported, and when trainSIMT asks for the fp32 reference path.
		if T >= gemmMinRows && !b.trainSIMT {
			err := b.gemmBackward(dxt, dwt, d, xt, w, accumulate)
			if !errors.Is(err, errGEMMUnsupported) {
				if err != nil {
					return fmt.Errorf("cuda: %s %s: %w", op, w.name, err)
				}
				return nil
			}
		}
		if dwt != nil {
			if err := b.matmulDW(dwt, d, xt); err != nil {
				return fmt.Errorf("cuda: %s %s (dw): %w", op, w.name, err)
			}
		}
		if dxt != nil {
			if err := b.matmulDX(dxt, d, w, accumulate); err != nil {
				return fmt.Errorf("cuda: %s %s (dx): %w", op, w.name, err)
			}
		}
		return nil
	})
}

// matmulDX launches dx[T, K] = dout[T, N]·W[N, K] (added when accumulate) on checked
// arguments: the SIMT tiled kernel, fp32 accumulation, W decoded in registers. This is the one
// place to route the product elsewhere (gemmDX, cuBLASLt, rounds dout to bf16). Owner goroutine.
func (b *Backend) matmulDX(dx, dout *Tensor, w *Weight, accumulate bool) error {
	T, N, K := dout.rows, w.out, w.in
	acc := 0
	if accumulate {
		acc = 1
	}
	g, bl := [3]int{(K + 63) / 64, (T + 63) / 64, 1}, [3]int{256, 1, 1}
	switch w.kind {
	case kindNVFP4:
		return launch(b.fns["mm_bwd_dx_nvfp4"], g, bl, 0, ptrArg(dx.ptr), ptrArg(dout.ptr), ptrArg(w.ptr), ptrArg(w.scales),
			f32Arg(w.global), intArg(T), intArg(N), intArg(K), intArg(acc))
	case kindBF16, kindF32:
		return launch(b.fns["mm_bwd_dx_"+w.kind], g, bl, 0, ptrArg(dx.ptr), ptrArg(dout.ptr), ptrArg(w.ptr),
			intArg(T), intArg(N), intArg(K), intArg(acc))
	}
	return fmt.Errorf("unknown weight kind %q", w.kind)
}

// matmulDW launches dw[N, K] += dout[T, N]ᵀ·x[T, K] on checked arguments: the SIMT tiled kernel,
// fp32, each element summed over the token rows in order, then added to dw (a bf16 dw:
// mm_bwd_dw_bf16, added to the widened value and rounded once). The place to route it
// elsewhere (gemmDW). Owner goroutine.
func (b *Backend) matmulDW(dw, dout, x *Tensor) error {
	T, N, K := dout.rows, dout.cols, x.cols
	if (N+63)/64 > 65535 {
		return fmt.Errorf("%d output rows exceed the kernel's grid (%d)", N, 65535*64)
	}
	name := "mm_bwd_dw_f32"
	if dw.bf16 {
		name = "mm_bwd_dw_bf16"
	}
	return launch(b.fns[name], [3]int{(K + 63) / 64, (N + 63) / 64, 1}, [3]int{256, 1, 1}, 0,
		ptrArg(dw.ptr), ptrArg(dout.ptr), ptrArg(x.ptr), intArg(T), intArg(N), intArg(K))
}

// rmsnormDWPer is how many groups one partial sum of RMSNorm's dw covers: at least 64, more
// when there are so many groups that the partials would pass 4096 (a function of the shape).
func rmsnormDWPer(groups int) int { return max(64, (groups+4095)/4096) }

// RMSNormBackward implements backend.Training. dw (when wanted) is reduced deterministically:
// per-group statistics, per-column partial sums over runs of groups, then one ordered sum per
// column added to dw. dx is computed last, so it may be dout (when not accumulating) or x.
func (b *Backend) RMSNormBackward(dx, dw, dout, x, w backend.Tensor, eps float32, accumulate bool) error {
	return b.do(func() error {
		const op = "rmsnorm backward"
		d, err := b.ten(dout, op, "dout")
		if err != nil {
			return err
		}
		a, err := b.ten(x, op, "x")
		if err != nil {
			return err
		}
		g, err := b.ten(w, op, "weight")
		if err != nil {
			return err
		}
		dxt, err := b.optTen(dx, op, "dx")
		if err != nil {
			return err
		}
		dwt, err := b.optTen(dw, op, "dw")
		if err != nil {
			return err
		}
		n := g.n()
		if a.cols%n != 0 || d.rows != a.rows || d.cols != a.cols {
			return fmt.Errorf("cuda: %s: x [%d, %d], dout [%d, %d] with a weight of %d (the weight length must divide the width)", op, a.rows, a.cols, d.rows, d.cols, n)
		}
		if dxt != nil {
			if dxt.rows != a.rows || dxt.cols != a.cols {
				return fmt.Errorf("cuda: %s: dx [%d, %d] for x [%d, %d]", op, dxt.rows, dxt.cols, a.rows, a.cols)
			}
			if overlaps(dxt, d) && !(same(dxt, d) && !accumulate) {
				return fmt.Errorf("cuda: %s: dx shares memory with dout (allowed only as the same tensor without accumulate)", op)
			}
			if overlaps(dxt, a) && !same(dxt, a) || overlaps(dxt, g) {
				return fmt.Errorf("cuda: %s: dx shares memory with x or the weight", op)
			}
		}
		if dwt != nil {
			if dwt.n() != n {
				return fmt.Errorf("cuda: %s: dw [%d, %d] for a weight of %d", op, dwt.rows, dwt.cols, n)
			}
			if overlaps(dwt, d) || overlaps(dwt, a) || overlaps(dwt, g) || overlaps(dwt, dxt) {
				return fmt.Errorf("cuda: %s: dw shares memory with another argument", op)
			}
		}
		groups := a.n() / n
		threads := min(256, max(32, (n+31)/32*32))
		if dwt != nil {
			per := rmsnormDWPer(groups)
			P := (groups + per - 1) / per
			rstdBytes := align256(int64(4 * groups))
			buf, err := b.scratch(rstdBytes+int64(4*P*n), "rmsnorm dw partials")
			if err != nil {
				return err
			}
			rstd, part := buf, buf+devPtr(rstdBytes)
			if normWarpGroups(n) {
				err = launch(b.fns["rmsnorm_rstd_warp"], [3]int{(groups + 7) / 8, 1, 1}, [3]int{256, 1, 1}, 0,
					ptrArg(rstd), ptrArg(a.ptr), intArg(groups), intArg(n), f32Arg(eps))
			} else {
				err = launch(b.fns["rmsnorm_rstd"], [3]int{groups, 1, 1}, [3]int{threads, 1, 1}, 0,
					ptrArg(rstd), ptrArg(a.ptr), intArg(n), f32Arg(eps))
			}
			if err != nil {
				return fmt.Errorf("cuda: %s: %w", op, err)
			}
			if err := launch(b.fns["rmsnorm_bwd_dw_part"], [3]int{(n + 127) / 128, P, 1}, [3]int{128, 1, 1}, 0,
				ptrArg(part), ptrArg(d.ptr), ptrArg(a.ptr), ptrArg(rstd), intArg(n), intArg(groups), intArg(per)); err != nil {
				return fmt.Errorf("cuda: %s: %w", op, err)
			}
			if err := launch(b.fns["sum_parts_add"], [3]int{(n + 127) / 128, 1, 1}, [3]int{128, 1, 1}, 0,
				ptrArg(dwt.ptr), ptrArg(part), intArg(n), intArg(P)); err != nil {
				return fmt.Errorf("cuda: %s: %w", op, err)
			}
		}
		if dxt != nil {
			acc := 0
			if accumulate {
				acc = 1
			}
			var err error
			if normWarpGroups(n) {
				err = launch(b.fns["rmsnorm_bwd_dx_warp"], [3]int{(groups + 7) / 8, 1, 1}, [3]int{256, 1, 1}, 0,
					ptrArg(dxt.ptr), ptrArg(d.ptr), ptrArg(a.ptr), ptrArg(g.ptr), intArg(groups), intArg(n), f32Arg(eps), intArg(acc))
			} else {
				err = launch(b.fns["rmsnorm_bwd_dx"], [3]int{groups, 1, 1}, [3]int{threads, 1, 1}, 0,
					ptrArg(dxt.ptr), ptrArg(d.ptr), ptrArg(a.ptr), ptrArg(g.ptr), intArg(n), f32Arg(eps), intArg(acc))
			}
			if err != nil {
				return fmt.Errorf("cuda: %s: %w", op, err)
			}
		}
		return nil
	})
}

// RoPEBackward implements backend.Training: dx = Rᵀ·dout with RoPE's angles. dx may be dout.
func (b *Backend) RoPEBackward(dx, dout backend.Tensor, headDim, pos0 int, theta float64) error {
	return b.do(func() error {
		const op = "rope backward"
		o, err := b.ten(dx, op, "dx")
		if err != nil {
			return err
		}
		a, err := b.ten(dout, op, "dout")
		if err != nil {
			return err
		}
		if headDim <= 0 || headDim%2 != 0 || a.cols%headDim != 0 || o.rows != a.rows || o.cols != a.cols || pos0 < 0 || !(theta > 0) ||
			pos0+a.rows > math.MaxInt32 {
			return fmt.Errorf("cuda: %s: dout [%d, %d] into [%d, %d] with head_dim %d, position %d, theta %v", op, a.rows, a.cols, o.rows, o.cols, headDim, pos0, theta)
		}
		if overlaps(o, a) && !same(o, a) {
			return fmt.Errorf("cuda: %s: dx partly overlaps dout", op)
		}
		inv, err := b.invFreq(headDim, theta)
		if err != nil {
			return fmt.Errorf("cuda: %s: %w", op, err)
		}
		if err := launch(b.fns["rope_bwd_f32"], [3]int{b.blocks(a.n() / 2), 1, 1}, [3]int{256, 1, 1}, 0,
			ptrArg(o.ptr), ptrArg(a.ptr), ptrArg(inv), intArg(a.rows), intArg(a.cols), intArg(headDim), intArg(pos0)); err != nil {
			return fmt.Errorf("cuda: %s: %w", op, err)
		}
		return nil
	})
}

// AttentionBackward implements backend.Training (causal, pos0 = 0, k and v with T rows). At
// head_dim 128 and ≥ 16 rows it runs on the tensor-core flash kernels (flash.go); otherwise two
// fp32 kernels, no [T × T] buffer. The first, per (query head, query row), recomputes the softmax
// statistics and writes dq, the row's log-sum-exp and D = Σ dout∘out into a [2, nHeads, T]
// scratch; the second, per (KV head, key row), sums dk and dv over the query rows and the heads
// of the group in a fixed order. The gradients must not share memory with the inputs.
func (b *Backend) AttentionBackward(dq, dk, dv, dout, q, k, v, out backend.Tensor, nHeads, nKV, headDim int) error {
	return b.do(func() error {
		const op = "attention backward"
		ts, err := b.attentionBackwardArgs(op, dq, dk, dv, dout, q, k, v, out, nHeads, nKV, headDim)
		if err != nil {
			return err
		}
		dqt, dkt, dvt, dot, qt, kt, vt, ot := ts[0], ts[1], ts[2], ts[3], ts[4], ts[5], ts[6], ts[7]
		T := qt.rows
		if b.useFlashBackward(T, headDim) {
			if err := b.flashBackward(dqt, dkt, dvt, dot, qt, kt, vt, ot, 0, nHeads, nKV, 1); err != nil {
				return fmt.Errorf("cuda: %s (flash): %w", op, err)
			}
			return nil
		}
		scale := float32(1 / math.Sqrt(float64(headDim)))
		stats, err := b.scratch(int64(8*nHeads*T), "attention statistics")
		if err != nil {
			return err
		}
		if err := launch(b.fns["attn_bwd_dq"], [3]int{nHeads, T, 1}, [3]int{attThreads, 1, 1}, 4*(2*headDim+attThreads),
			ptrArg(dqt.ptr), ptrArg(stats), ptrArg(dot.ptr), ptrArg(qt.ptr), ptrArg(kt.ptr), ptrArg(vt.ptr), ptrArg(ot.ptr),
			intArg(T), intArg(nHeads), intArg(nKV), intArg(headDim), f32Arg(scale)); err != nil {
			return fmt.Errorf("cuda: %s (dq): %w", op, err)
		}
		if err := launch(b.fns["attn_bwd_dkv"], [3]int{nKV, T, 1}, [3]int{attThreads, 1, 1}, 4*(2*headDim+2*attThreads),
			ptrArg(dkt.ptr), ptrArg(dvt.ptr), ptrArg(stats), ptrArg(dot.ptr), ptrArg(qt.ptr), ptrArg(kt.ptr), ptrArg(vt.ptr),
			intArg(T), intArg(nHeads), intArg(nKV), intArg(headDim), f32Arg(scale)); err != nil {
			return fmt.Errorf("cuda: %s (dk, dv): %w", op, err)
		}
		return nil
	})
}

// attentionBackwardArgs checks AttentionBackward's arguments (owner goroutine) and returns
// them as dq, dk, dv, dout, q, k, v, out.
func (b *Backend) attentionBackwardArgs(op string, dq, dk, dv, dout, q, k, v, out backend.Tensor, nHeads, nKV, headDim int) ([8]*Tensor, error) {
	var ts [8]*Tensor
	for i, x := range []struct {
		t    backend.Tensor
		name string
	}{{dq, "dq"}, {dk, "dk"}, {dv, "dv"}, {dout, "dout"}, {q, "q"}, {k, "k"}, {v, "v"}, {out, "out"}} {
		t, err := b.ten(x.t, op, x.name)
		if err != nil {
			return ts, err
		}
		ts[i] = t
	}
	dqt, dkt, dvt, dot, qt, kt, vt, ot := ts[0], ts[1], ts[2], ts[3], ts[4], ts[5], ts[6], ts[7]
	if err := backend.CheckAttention("cuda", ot, qt, kt, vt, 0, nHeads, nKV, headDim); err != nil {
		return ts, fmt.Errorf("%w (backward)", err)
	}
	T := qt.rows
	if kt.rows != T || vt.rows != T || dot.rows != T || dot.cols != qt.cols || dqt.rows != T || dqt.cols != qt.cols ||
		dkt.rows != T || dkt.cols != kt.cols || dvt.rows != T || dvt.cols != kt.cols {
		return ts, fmt.Errorf("cuda: %s: T %d: dq [%d, %d], dk [%d, %d], dv [%d, %d], dout [%d, %d], k [%d, %d], v [%d, %d] (k, v and the gradients need exactly T rows)",
			op, T, dqt.rows, dqt.cols, dkt.rows, dkt.cols, dvt.rows, dvt.cols, dot.rows, dot.cols, kt.rows, kt.cols, vt.rows, vt.cols)
	}
	if headDim > attMaxHeadDim || T > 65535 {
		return ts, fmt.Errorf("cuda: %s: head_dim %d (at most %d) with %d rows (at most 65535) is not supported by this kernel", op, headDim, attMaxHeadDim, T)
	}
	for i, gt := range ts[:3] {
		for j, it := range ts {
			if i != j && overlaps(gt, it) {
				return ts, fmt.Errorf("cuda: %s: %s shares memory with %s", op, []string{"dq", "dk", "dv"}[i],
					[]string{"dq", "dk", "dv", "dout", "q", "k", "v", "out"}[j])
			}
		}
	}
	return ts, nil
}

// SwiGLUBackward implements backend.Training: dgate and dup written (they may alias gate, up or
// dout element for element, not each other).
func (b *Backend) SwiGLUBackward(dgate, dup, dout, gate, up backend.Tensor) error {
	return b.do(func() error {
		const op = "swiglu backward"
		var ts [5]*Tensor
		for i, x := range []struct {
			t    backend.Tensor
			name string
		}{{dgate, "dgate"}, {dup, "dup"}, {dout, "dout"}, {gate, "gate"}, {up, "up"}} {
			t, err := b.ten(x.t, op, x.name)
			if err != nil {
				return err
			}
			ts[i] = t
		}
		for _, t := range ts[1:] {
			if t.rows != ts[0].rows || t.cols != ts[0].cols {
				return fmt.Errorf("cuda: %s: dgate [%d, %d], dup [%d, %d], dout [%d, %d], gate [%d, %d], up [%d, %d]", op,
					ts[0].rows, ts[0].cols, ts[1].rows, ts[1].cols, ts[2].rows, ts[2].cols, ts[3].rows, ts[3].cols, ts[4].rows, ts[4].cols)
			}
		}
		for i, gt := range ts[:2] {
			for j, it := range ts {
				if i != j && overlaps(gt, it) && (j < 2 || !same(gt, it)) {
					return fmt.Errorf("cuda: %s: %s partly overlaps another argument", op, []string{"dgate", "dup"}[i])
				}
			}
		}
		n := ts[0].n()
		if err := launch(b.fns["swiglu_bwd_f32"], [3]int{b.blocks(n), 1, 1}, [3]int{256, 1, 1}, 0,
			ptrArg(ts[0].ptr), ptrArg(ts[1].ptr), ptrArg(ts[2].ptr), ptrArg(ts[3].ptr), ptrArg(ts[4].ptr), sizeArg(int64(n))); err != nil {
			return fmt.Errorf("cuda: %s: %w", op, err)
		}
		return nil
	})
}

// EmbeddingBackward implements backend.Training: dtable[ids[t]] += dout[t]. The host sorts the
// positions by id (stably), so each touched row is summed by one block over its positions in
// ascending order: deterministic, no atomics.
func (b *Backend) EmbeddingBackward(dtable, dout backend.Tensor, ids []int) error {
	return b.do(func() error {
		const op = "embedding backward"
		tb, err := b.tenG(dtable, op, "dtable")
		if err != nil {
			return err
		}
		d, err := b.ten(dout, op, "dout")
		if err != nil {
			return err
		}
		if d.rows != len(ids) || d.cols != tb.cols {
			return fmt.Errorf("cuda: %s: dout [%d, %d] for %d ids into a table [%d, %d]", op, d.rows, d.cols, len(ids), tb.rows, tb.cols)
		}
		if overlaps(tb, d) {
			return fmt.Errorf("cuda: %s: dtable and dout share memory", op)
		}
		for t, id := range ids {
			if id < 0 || id >= tb.rows {
				return fmt.Errorf("cuda: %s: token id %d at position %d is outside the table (0..%d)", op, id, t, tb.rows-1)
			}
		}
		order := make([]int32, len(ids))
		for i := range order {
			order[i] = int32(i)
		}
		sort.SliceStable(order, func(i, j int) bool { return ids[order[i]] < ids[order[j]] })
		// [uniq (U) | off (U+1) | positions (T)]
		var uniq, off []int32
		for i, p := range order {
			if i == 0 || ids[p] != ids[order[i-1]] {
				uniq = append(uniq, int32(ids[p]))
				off = append(off, int32(i))
			}
		}
		off = append(off, int32(len(order)))
		U := len(uniq)
		data := append(append(uniq, off...), order...)
		buf, err := b.uploadInts(data, "embedding backward ids")
		if err != nil {
			return fmt.Errorf("cuda: %s: %w", op, err)
		}
		fn := b.fns["embedding_bwd_f32"]
		if tb.bf16 {
			fn = b.fns["embedding_bwd_bf16"]
		}
		if err := launch(fn, [3]int{U, (tb.cols + 255) / 256, 1}, [3]int{256, 1, 1}, 0,
			ptrArg(tb.ptr), ptrArg(d.ptr), ptrArg(buf), ptrArg(buf+devPtr(4*U)), ptrArg(buf+devPtr(4*(2*U+1))), intArg(tb.cols)); err != nil {
			return fmt.Errorf("cuda: %s: %w", op, err)
		}
		return nil
	})
}

// crossEntropyThreads is cross_entropy_f32's block size (CE_THREADS in train.cu): one block per
// row. See the kernel's comment for why.
const crossEntropyThreads = 512

// crossEntropyLaunch queues cross_entropy_f32 over every row of lg: the gradient into dl (which
// may be lg), the per-row loss (double) into losses, targets the rows' int32 targets on the
// device.
func (b *Backend) crossEntropyLaunch(dl, lg *Tensor, losses, targets devPtr, ls, scale float32) error {
	return launch(b.fns["cross_entropy_f32"], [3]int{lg.rows, 1, 1}, [3]int{crossEntropyThreads, 1, 1}, 0,
		ptrArg(dl.ptr), ptrArg(losses), ptrArg(lg.ptr), ptrArg(targets), intArg(lg.rows), intArg(lg.cols), f32Arg(ls), f32Arg(scale))
}

// CrossEntropy implements backend.Training: one block per row (one read for the max and the
// log-sum-exp, online, exp and sums in double; one read and one write for the gradient; label
// smoothing as engine/train's CrossEntropy), dlogits = scale·∂loss/∂logits (zero rows where
// unscored; dlogits may be logits), the per-row losses summed on the host in row order. It
// waits for the GPU.
func (b *Backend) CrossEntropy(dlogits, logits backend.Tensor, targets []int, ls, scale float32) (float64, int, error) {
	var sum float64
	var n int
	err := b.do(func() error {
		const op = "cross-entropy"
		dl, err := b.ten(dlogits, op, "dlogits")
		if err != nil {
			return err
		}
		lg, err := b.ten(logits, op, "logits")
		if err != nil {
			return err
		}
		R, V := lg.rows, lg.cols
		if dl.rows != R || dl.cols != V || len(targets) != R {
			return fmt.Errorf("cuda: %s: logits [%d, %d], dlogits [%d, %d], %d targets", op, R, V, dl.rows, dl.cols, len(targets))
		}
		if overlaps(dl, lg) && !same(dl, lg) {
			return fmt.Errorf("cuda: %s: dlogits partly overlaps logits", op)
		}
		if !(ls >= 0 && ls < 1) {
			return fmt.Errorf("cuda: %s: label smoothing %v outside [0, 1)", op, ls)
		}
		tg := make([]int32, R)
		for r, t := range targets {
			if t < -1 || t >= V {
				return fmt.Errorf("cuda: %s: target %d of row %d is outside the vocabulary (0..%d, or -1 for none)", op, t, r, V-1)
			}
			tg[r] = int32(t)
		}
		losses, err := b.scratch(int64(8*R), "cross-entropy losses")
		if err != nil {
			return err
		}
		tptr, err := b.uploadInts(tg, "cross-entropy targets")
		if err != nil {
			return fmt.Errorf("cuda: %s: %w", op, err)
		}
		if err := b.crossEntropyLaunch(dl, lg, losses, tptr, ls, scale); err != nil {
			return fmt.Errorf("cuda: %s: %w", op, err)
		}
		host := make([]float64, R)
		if err := memcpyDtoH(unsafe.Pointer(&host[0]), losses, int64(8*R)); err != nil {
			return fmt.Errorf("cuda: %s [%d, %d]: %w", op, R, V, err)
		}
		for r, t := range targets {
			if t >= 0 {
				sum += host[r]
				n++
			}
		}
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	return sum, n, nil
}

// adamBlock is engine/optim's int8 block size.
const adamBlock = 64

// adamChunk is the elements one warp of the AdamW kernels updates per iteration: 8 consecutive
// elements a lane (train.cu adamw_lane8 for fp32 moments; optim4.cu likewise, one 4-bit block of
// 128 per half warp). With int8 moments a lane takes 16 (adamw_lane16): adamChunkOf.
const adamChunk = 256

// adamChunkOf is train.cu's ADAM_ITEM: the elements a warp of the int8 or fp32 kernels updates
// per iteration, the unit of their grids and of adamw_many's items.
func adamChunkOf(format string) int64 {
	if format == "int8" {
		return 512
	}
	return adamChunk
}

// adamOccupancy caches the resident 256-thread blocks per SM of the AdamW kernels, keyed by
// function and name (adamOccKey), so that several backends share it.
var adamOccupancy sync.Map

type adamOccKey struct {
	fn   function
	name string
}

// adamGrid is the grid of an AdamW kernel for the given warp iterations (chunks of adamChunk
// elements): one block of 8 warps per 8 chunks, at most one full wave — as many blocks as fit
// on the SMs at once — so that every block stays resident and strides over the rest. The grid
// never changes the results (each element is one lane's, whatever the grid).
func (b *Backend) adamGrid(name string, chunks int64) (int, error) {
	return b.adamGridShared(name, chunks, 0)
}

// adamGridShared is adamGrid for a kernel launched with shmem bytes of dynamic shared memory
// (one amount a kernel).
func (b *Backend) adamGridShared(name string, chunks int64, shmem int) (int, error) {
	fn := b.fns[name]
	key := adamOccKey{fn, name}
	per, ok := adamOccupancy.Load(key)
	if !ok {
		n, err := occupancy(fn, 256, shmem)
		if err != nil || n < 1 {
			return 0, fmt.Errorf("occupancy of %s: %d blocks an SM, %v", name, n, err)
		}
		adamOccupancy.Store(key, n)
		per = n
	}
	return int(max(1, min((chunks+7)/8, int64(b.sms*per.(int))))), nil
}

// AdamState is a device-resident pair of AdamW moments (backend.AdamWState) in one allocation:
// "fp32" holds m and v as float32; "int8" holds m's int8 codes, √v's uint8 codes, then the
// per-64-element float32 scales of m and of √v; "4bit" holds m's and v's codes two to a byte,
// m's per-128 absmax, then v's normaliser (adam4Layout). Each part is at a 256-byte boundary.
type AdamState struct {
	format     string
	rows, cols int
	ptr        devPtr // 0 after FreeAdamWState
	m, v       devPtr
	ms, vs     devPtr // int8 scales; 4bit: m's block absmax and v's normaliser
	bytes      int64
	owner      *Backend
}

// Format implements backend.AdamWState.
func (s *AdamState) Format() string { return s.format }

// Bytes implements backend.AdamWState.
func (s *AdamState) Bytes() int64 { return s.bytes }

// NewAdamWState implements backend.Training: zeroed moments accounted under OptimizerState.
func (b *Backend) NewAdamWState(format string, rows, cols int) (backend.AdamWState, error) {
	if rows <= 0 || cols <= 0 || rows > maxElems/cols {
		return nil, fmt.Errorf("cuda: adamw state: cannot allocate [%d, %d]", rows, cols)
	}
	n := int64(rows) * int64(cols)
	s := &AdamState{format: format, rows: rows, cols: cols, owner: b}
	var offs [4]int64
	switch format {
	case "fp32":
		offs[1] = align256(4 * n)
		s.bytes = offs[1] + 4*n
	case "int8":
		nb := (n + adamBlock - 1) / adamBlock
		offs[1] = align256(n)
		offs[2] = offs[1] + align256(n)
		offs[3] = offs[2] + align256(4*nb)
		s.bytes = offs[3] + 4*nb
	case "4bit":
		if rows > math.MaxInt32 || cols > math.MaxInt32 {
			return nil, fmt.Errorf("cuda: adamw state: 4bit moments for [%d, %d]: the kernels take at most %d rows and columns", rows, cols, math.MaxInt32)
		}
		offs[1], offs[2], offs[3], s.bytes = adam4Layout(rows, cols)
	default:
		return nil, fmt.Errorf("cuda: adamw state: format %q (want fp32, int8 or 4bit)", format)
	}
	err := b.do(func() error {
		p, err := b.alloc(backend.OptimizerState, s.bytes, fmt.Sprintf("adamw %s state [%d, %d]", format, rows, cols))
		if err != nil {
			return err
		}
		if err := memsetD8(p, 0, s.bytes); err != nil {
			b.free(p)
			return fmt.Errorf("cuda: adamw state [%d, %d]: %w", rows, cols, err)
		}
		s.ptr, s.m, s.v = p, p, p+devPtr(offs[1])
		if format != "fp32" {
			s.ms, s.vs = p+devPtr(offs[2]), p+devPtr(offs[3])
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// FreeAdamWState implements backend.Training.
func (b *Backend) FreeAdamWState(st backend.AdamWState) {
	s, ok := st.(*AdamState)
	if !ok || s == nil || s.owner != b {
		return
	}
	b.do(func() error {
		if s.ptr != 0 {
			b.free(s.ptr)
			s.ptr, s.m, s.v, s.ms, s.vs = 0, 0, 0, 0, 0
		}
		return nil
	})
}

// AdamW implements backend.Training: one in-place pass over w, its moments and grad, 8
// consecutive elements a lane (adamGrid), with engine/optim's arithmetic (see train.cu); 4bit
// moments take the two passes of adamW4 (optim4.go). grad may be a bf16 parameter gradient
// (AllocGradient): the kernels' _gb forms widen it exactly, so the update is the float32
// gradient's of the widened values, bit for bit (backend.GradientFormat).
func (b *Backend) AdamW(bw backend.Weight, grad backend.Tensor, st backend.AdamWState, h backend.AdamWHyper) error {
	if err := backend.CheckAdamWHyper(h); err != nil {
		return fmt.Errorf("cuda: %w", err)
	}
	return b.do(func() error {
		j, err := b.adamResolve(bw, grad, st, h, "adamw")
		if err != nil {
			return err
		}
		return b.adamOne(j)
	})
}

// adamJob is one checked AdamW call: its weight, gradient and state, and the step's constants
// from engine/optim.
type adamJob struct {
	w   *Weight
	g   *Tensor
	s   *AdamState
	h   backend.AdamWHyper
	k   optim.CoeffScalars
	key uint32
	sr  int
}

// adamResolve checks one AdamW call's arguments (owner goroutine). The gradient is float32 or a
// bf16 parameter gradient (AllocGradient), which the _gb kernels widen exactly.
func (b *Backend) adamResolve(bw backend.Weight, grad backend.Tensor, st backend.AdamWState, h backend.AdamWHyper, op string) (adamJob, error) {
	w, err := b.weight(bw, op)
	if err != nil {
		return adamJob{}, err
	}
	g, err := b.tenG(grad, op, "grad")
	if err != nil {
		return adamJob{}, err
	}
	s, ok := st.(*AdamState)
	switch {
	case !ok || s == nil:
		return adamJob{}, fmt.Errorf("cuda: %s %s: state is %T, not a CUDA AdamW state", op, w.name, st)
	case s.owner != b:
		return adamJob{}, fmt.Errorf("cuda: %s %s: the state belongs to another backend", op, w.name)
	case s.ptr == 0:
		return adamJob{}, fmt.Errorf("cuda: %s %s: the state was freed", op, w.name)
	}
	if w.kind != kindF32 && w.kind != kindBF16 {
		return adamJob{}, fmt.Errorf("cuda: %s %s: weight is %s; only f32 and bf16 weights are trained", op, w.name, w.kind)
	}
	if g.rows != w.out || g.cols != w.in || s.rows != w.out || s.cols != w.in {
		return adamJob{}, fmt.Errorf("cuda: %s %s: weight [%d, %d], grad [%d, %d], state [%d, %d]", op, w.name, w.out, w.in, g.rows, g.cols, s.rows, s.cols)
	}
	j := adamJob{w: w, g: g, s: s, h: h, k: b.adamCoeffs(h), key: optim.SRKey(h.Seed, uint64(h.Step), h.Param)}
	if h.StochasticRound {
		j.sr = 1
	}
	return j, nil
}

// adamCoeffs returns optim's constants for h, remembering the last ones computed (owner
// goroutine): a batch's jobs share all but their parameter index, and NewCoeffs' two powers
// were a fifth of a 398-job batch's host time.
func (b *Backend) adamCoeffs(h backend.AdamWHyper) optim.CoeffScalars {
	key := h
	key.Param, key.Seed, key.GradScale, key.StochasticRound = 0, 0, 0, false
	if b.tr.coeffsOK && b.tr.coeffsFor == key {
		return b.tr.coeffs
	}
	k := optim.NewCoeffs(h.Beta1, h.Beta2, h.Eps, h.LR, h.WeightDecay, h.Step, h.NoDecay).Scalars()
	b.tr.coeffsFor, b.tr.coeffs, b.tr.coeffsOK = key, k, true
	return k
}

// gradSuffix is the suffix of the AdamW kernels that read g: "_gb" for a bf16 gradient (the
// kernels' GB forms, adamw.cuh grad8), "" for float32.
func gradSuffix(g *Tensor) string {
	if g.bf16 {
		return "_gb"
	}
	return ""
}

// adamOne launches one checked AdamW call (owner goroutine).
func (b *Backend) adamOne(j adamJob) error {
	const op = "adamw"
	if j.s.format == "4bit" {
		if err := b.adamW4(j.w, j.g, j.s, j.k, j.h.GradScale, j.sr, j.key, j.h); err != nil {
			return fmt.Errorf("cuda: %s %s: %w", op, j.w.name, err)
		}
		return nil
	}
	name, grid, shmem, args, err := b.adamOneArgs(j)
	if err == nil {
		err = launch(b.fns[name], [3]int{grid, 1, 1}, [3]int{256, 1, 1}, shmem, args...)
	}
	if err != nil {
		return fmt.Errorf("cuda: %s %s: %w", op, j.w.name, err)
	}
	return nil
}

// adamOneArgs returns the kernel, grid, dynamic shared memory and arguments of one fp32 or int8
// AdamW call: bf16 weights with int8 moments take the staged kernel (adamw_bf16_int8*_st) unless
// b.adamStaged is off.
func (b *Backend) adamOneArgs(j adamJob) (name string, grid, shmem int, args []arg, err error) {
	n := j.g.n()
	name = "adamw_" + j.w.kind + "_" + j.s.format + gradSuffix(j.g)
	if b.adamStaged && j.w.kind == kindBF16 && j.s.format == "int8" {
		if sh, serr := b.adamStagedShared(name+"_st", j.g.bf16); serr == nil {
			name, shmem = name+"_st", sh
		} else {
			// A device that refuses the staged kernel its shared memory keeps the plain kernel,
			// whose results are the same bit for bit.
			b.adamStaged = false
		}
	}
	chunk := adamChunkOf(j.s.format)
	if grid, err = b.adamGridShared(name, (int64(n)+chunk-1)/chunk, shmem); err != nil {
		return "", 0, 0, nil, err
	}
	args = []arg{ptrArg(j.w.ptr), ptrArg(j.g.ptr), ptrArg(j.s.m), ptrArg(j.s.v), ptrArg(j.s.ms), ptrArg(j.s.vs)}
	args = append(append(args, adamScalarArgs(j.k, j.h.GradScale)...), intArg(j.sr), arg(j.key), sizeArg(int64(n)))
	return name, grid, shmem, args, nil
}

// adamStagedShared is the staged kernel's dynamic shared memory — two stages of one item a warp
// (train.cu AdamStage: 3,136 bytes with a bf16 gradient, 4,160 with a float32 one), eight warps
// — and lets the kernel have that much (above the 48 KB a launch gets without asking) on first
// use.
func (b *Backend) adamStagedShared(name string, bf16Grad bool) (int, error) {
	stage := 1024 + 512*4 + 512 + 512 + 64
	if bf16Grad {
		stage = 1024 + 512*2 + 512 + 512 + 64
	}
	shmem := 8 * 2 * stage
	if !b.adamStagedReady[name] {
		if err := setMaxDynamicShared(b.fns[name], shmem); err != nil {
			return 0, err
		}
		if b.adamStagedReady == nil {
			b.adamStagedReady = map[string]bool{}
		}
		b.adamStagedReady[name] = true
	}
	return shmem, nil
}

// adamSingleMin is the fewest elements for which an AdamWMany job gets a launch of its own
// (adamw_*, chained) instead of a seat in a batch launch (adamw_many_*): the batched kernel
// finds each item's job, which costs a large parameter ~5 % (TestFiguresAdamW: 99.6 M elements
// 305-309 µs alone, 319-322 as a batch of one), while a chained launch costs its neighbours
// little (TestFiguresLaunchChain: ~0.5 µs a link).
const adamSingleMin = 1 << 20

// launchesAlone reports whether AdamWMany launches job j alone: int8 or fp32 moments, at least
// adamSingleMin elements, and single launches chained (b.adamChain, b.adamSingle).
func (b *Backend) launchesAlone(j adamJob) bool {
	return b.adamChain && b.adamSingle && j.s.format != "4bit" && j.g.n() >= adamSingleMin
}

// adamChainLaunch runs one fp32 or int8 AdamW call as a launch of an AdamWMany chain.
func (b *Backend) adamChainLaunch(j adamJob, chain bool) error {
	name, grid, shmem, args, err := b.adamOneArgs(j)
	if err == nil {
		var refused bool
		refused, err = launchAdamKernel(b.fns[name], grid, 256, shmem, chain && b.adamChain, args...)
		if refused {
			b.adamChain = false // a driver that refuses the attribute: plain launches from now on
			_, err = launchAdamKernel(b.fns[name], grid, 256, shmem, false, args...)
		}
	}
	if err != nil {
		return fmt.Errorf("cuda: adamw many, %s: %w", j.w.name, err)
	}
	return nil
}

// AdamWMany implements backend.AdamWBatch: every job checked first (nothing runs when one is
// invalid or two share memory they write), then the 4-bit jobs one by one, the int8 and fp32
// jobs of at least adamSingleMin elements in a launch each (adamw_*), and the smaller ones of
// each weight kind, state format and gradient type (float32 or bf16) in launches of up to
// adamManyJobs parameters (train.cu adamw_many) — each element computed as AdamW computes it.
// The int8 and fp32 launches form a chain of programmatic dependents (b.adamChain): each starts
// as the one before drains, since no two jobs of a call touch the same memory, and the call's
// first waits for everything queued before it.
func (b *Backend) AdamWMany(jobs []backend.AdamWJob) error {
	for i, j := range jobs {
		if err := backend.CheckAdamWHyper(j.Hyper); err != nil {
			return fmt.Errorf("cuda: adamw job %d: %w", i, err)
		}
	}
	return b.do(func() error {
		rs := make([]adamJob, len(jobs))
		for i, j := range jobs {
			r, err := b.adamResolve(j.W, j.Grad, j.State, j.Hyper, "adamw")
			if err != nil {
				return fmt.Errorf("adamw many, job %d: %w", i, err)
			}
			rs[i] = r
		}
		if err := b.adamDisjointOnce(rs); err != nil {
			return fmt.Errorf("cuda: adamw many: %w", err)
		}
		groups := map[string][]adamJob{}
		var names []string
		chain := false // the call's first chained launch waits for everything before it
		for _, r := range rs {
			if r.s.format == "4bit" {
				if err := b.adamOne(r); err != nil {
					return err
				}
				chain = false // a plain launch ends the chain
				continue
			}
			if b.launchesAlone(r) {
				if err := b.adamChainLaunch(r, chain); err != nil {
					return err
				}
				chain = true
				continue
			}
			name := "adamw_many_" + r.w.kind + "_" + r.s.format + gradSuffix(r.g)
			if groups[name] == nil {
				names = append(names, name)
			}
			groups[name] = append(groups[name], r)
		}
		for _, name := range names {
			g := groups[name]
			for len(g) > 0 {
				k := min(len(g), adamManyJobs)
				if err := b.adamManyLaunch(name, g[:k], chain); err != nil {
					return err
				}
				chain = true
				g = g[k:]
			}
		}
		return nil
	})
}

// adamJobBytes and adamManyJobs are train.cu's AdamJob size and ADAM_MANY.
const (
	adamJobBytes = 112
	adamManyJobs = 36
)

// adamManyLaunch runs one adamw_many launch over jobs (at most adamManyJobs, one kernel). With
// chain (a later launch of the same AdamWMany call, whose jobs are disjoint from the earlier
// ones') it may start while the launch before it drains (b.adamChain; launchBufChain).
func (b *Backend) adamManyLaunch(name string, jobs []adamJob, chain bool) error {
	params := make([]byte, 8+adamManyJobs*adamJobBytes+8)
	le := binary.LittleEndian
	le.PutUint32(params, uint32(len(jobs)))
	var items int64
	for i, j := range jobs {
		putAdamJob(params[8+i*adamJobBytes:], j, items)
		chunk := adamChunkOf(j.s.format)
		items += (int64(j.g.n()) + chunk - 1) / chunk
	}
	le.PutUint64(params[8+adamManyJobs*adamJobBytes:], uint64(items))
	grid, err := b.adamGrid(name, items)
	if err != nil {
		return fmt.Errorf("cuda: adamw many: %w", err)
	}
	refused, err := launchBufChain(b.fns[name], grid, 256, params, chain && b.adamChain)
	if refused {
		b.adamChain = false // a driver that refuses the attribute: plain launches from now on
		_, err = launchBufChain(b.fns[name], grid, 256, params, false)
	}
	if err != nil {
		return fmt.Errorf("cuda: adamw many (%d parameters from %s): %w", len(jobs), jobs[0].w.name, err)
	}
	return nil
}

// adamStagedFromEnv reports whether one bf16 parameter with int8 moments takes the staged
// kernel (QWENGO_CUDA_ADAMW_STAGED=0: the plain one).
func adamStagedFromEnv() bool { return os.Getenv("QWENGO_CUDA_ADAMW_STAGED") != "0" }

// adamSingleFromEnv reports whether AdamWMany gives large parameters launches of their own
// (QWENGO_CUDA_ADAMW_SINGLE=0: no, every fp32 and int8 job in batch launches).
func adamSingleFromEnv() bool { return os.Getenv("QWENGO_CUDA_ADAMW_SINGLE") != "0" }

// adamChainFromEnv reports whether an AdamWMany call's batch launches may overlap
// (QWENGO_CUDA_ADAMW_PDL=0: no).
func adamChainFromEnv() bool { return os.Getenv("QWENGO_CUDA_ADAMW_PDL") != "0" }

// putAdamJob writes j as train.cu's AdamJob (112 bytes, little-endian), its first item first.
func putAdamJob(dst []byte, j adamJob, first int64) {
	le := binary.LittleEndian
	for i, p := range []devPtr{j.w.ptr, j.g.ptr, j.s.m, j.s.v, j.s.ms, j.s.vs} {
		le.PutUint64(dst[8*i:], uint64(p))
	}
	le.PutUint64(dst[48:], uint64(j.g.n()))
	le.PutUint64(dst[56:], uint64(first))
	for i, f := range []float32{j.k.LRC, j.k.B1, j.k.B2, j.k.OMB1, j.k.OMB2, j.k.RBC2, j.k.Eps, j.k.Decay, j.h.GradScale} {
		le.PutUint32(dst[64+4*i:], math.Float32bits(f))
	}
	le.PutUint32(dst[100:], j.key)
	le.PutUint32(dst[104:], uint32(j.sr))
	// The vector path's alignment, as adamw() tests it for one parameter: w, the gradient, the
	// int8 codes (16 a lane) and fp32 moments all 16-byte.
	vec := (j.w.ptr|j.g.ptr|j.s.m|j.s.v)&15 == 0
	if vec {
		le.PutUint32(dst[108:], 1)
	} else {
		le.PutUint32(dst[108:], 0)
	}
}

// adamSpan is memory a job of an AdamW batch touches: its weight, its state (both written) or
// its gradient (read only).
type adamSpan struct {
	lo, hi devPtr
	job    int
	part   int // 0 weight, 1 state, 2 gradient (read only)
}

// adamSpans lists the spans of a batch's jobs in job order.
func adamSpans(rs []adamJob, dst []adamSpan) []adamSpan {
	dst = dst[:0]
	for i, r := range rs {
		// g.bytes() counts a bf16 gradient at 2 bytes an element.
		dst = append(dst, adamSpan{r.w.ptr, r.w.ptr + devPtr(r.w.bytes), i, 0},
			adamSpan{r.s.ptr, r.s.ptr + devPtr(r.s.bytes), i, 1},
			adamSpan{r.g.ptr, r.g.ptr + devPtr(r.g.bytes()), i, 2})
	}
	return dst
}

// adamDisjointOnce is adamDisjoint, skipped when the batch touches exactly the spans of the
// last batch found disjoint (owner goroutine): training and the optimizer bench pass the same
// tensors every step, and the sort was most of AdamWMany's host time before its first launch
// (BenchmarkAdamWManyHost). Disjointness depends on the spans alone, so a batch with the same
// spans — even of tensors freed and allocated again at the same addresses — is disjoint too.
func (b *Backend) adamDisjointOnce(rs []adamJob) error {
	b.tr.spans = adamSpans(rs, b.tr.spans)
	spans := b.tr.spans
	if slices.Equal(spans, b.tr.disjoint) {
		return nil
	}
	b.tr.disjoint = nil
	if err := adamDisjoint(rs); err != nil {
		return err
	}
	b.tr.disjoint = slices.Clone(spans)
	return nil
}

// adamDisjoint reports two jobs of one batch that would race: a weight or state one writes
// overlapping a weight, state or gradient of another. (Spans sorted once, then a sweep; no
// strings are built unless there is a conflict.)
func adamDisjoint(rs []adamJob) error {
	spans := adamSpans(rs, make([]adamSpan, 0, 3*len(rs)))
	slices.SortFunc(spans, func(a, c adamSpan) int { return cmp.Compare(a.lo, c.lo) })
	what := func(sp adamSpan) string {
		return fmt.Sprintf("job %d's %s", sp.job, [...]string{"weight ", "state of ", "gradient of "}[sp.part]+rs[sp.job].w.name)
	}
	// Each span against the earlier ones still open; reads may overlap reads.
	var open []adamSpan
	for _, sp := range spans {
		keep := open[:0]
		for _, o := range open {
			if o.hi > sp.lo {
				keep = append(keep, o)
			}
		}
		open = keep
		for _, o := range open {
			if o.job != sp.job && (o.part < 2 || sp.part < 2) {
				return fmt.Errorf("%s and %s share memory", what(o), what(sp))
			}
		}
		open = append(open, sp)
	}
	return nil
}

// adamScalarArgs are the AdamW kernels' float parameters (adamw.cuh AdamParams): optim's
// constants of the step and the gradient's scale.
func adamScalarArgs(k optim.CoeffScalars, gscale float32) []arg {
	return []arg{f32Arg(k.LRC), f32Arg(k.B1), f32Arg(k.B2), f32Arg(k.OMB1), f32Arg(k.OMB2), f32Arg(k.RBC2),
		f32Arg(k.Eps), f32Arg(k.Decay), f32Arg(gscale)}
}

var (
	_ backend.Training        = (*Backend)(nil)
	_ backend.AdamWBatch      = (*Backend)(nil)
	_ backend.SumSquaresBatch = (*Backend)(nil)
)
