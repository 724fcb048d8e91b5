//go:build cuda

package cuda

import (
	"errors"
	"fmt"
	"math"

	"github.com/qwengo/qwengo/engine/backend"
)

// backend.Fused: the decoder block in about half the launches (kernels/fused.cu and the
// multi-product persistent GEMV). Each op gives the results of the ops it replaces, bit for bit
// (TestFused compares them), so the model computes the same with or without.

var _ backend.Fused = (*Backend)(nil)

// normThreads is rmsnorm_f32's block size for groups of n (the reduction order depends on it).
func normThreads(n int) int { return min(256, max(32, (n+31)/32*32)) }

// normWarpGroups reports whether groups of n take the warp-per-group norm kernels
// (norm_warp.cu: n = 32·k ≤ 256, bit-identical to the block kernels, which then run n threads
// of one element each).
func normWarpGroups(n int) bool { return n%32 == 0 && n <= 256 }

// MatMulMany implements backend.Fused: one launch of the tensor-core GEMV (gemv_tc.cu for one
// token row, gemv_tcb.cu for 2-8) or of the persistent GEMV (QWENGO_CUDA_GEMV=persist, ≤ 4
// rows, K % 256 == 0) for up to three NVFP4 products, else MatMul for each.
func (b *Backend) MatMulMany(outs []backend.Tensor, x backend.Tensor, ws []backend.Weight) error {
	if len(outs) != len(ws) || len(ws) == 0 || len(ws) > 3 {
		return fmt.Errorf("cuda: matmul many: %d outputs for %d weights (1 to 3)", len(outs), len(ws))
	}
	return b.do(func() error {
		a, err := b.ten(x, "matmul many", "x")
		if err != nil {
			return err
		}
		outTs := make([]*Tensor, len(ws))
		wts := make([]*Weight, len(ws))
		persist := b.gemv == gemvPersist && a.rows >= 1 && a.rows <= gemvMaxRows && a.cols%256 == 0
		tc := b.gemv == gemvTC && b.tcGEMVShape(a.rows, a.cols)
		tcb := b.gemv == gemvTCB && b.gemvTCBShape(a.rows, a.cols)
		tcp := (b.gemv == gemvAuto || b.gemv == gemvTCP) && b.gemvTCPShape(a.rows, a.cols)
		fusable := persist || tc || tcb || tcp
		for i := range ws {
			if outTs[i], err = b.ten(outs[i], "matmul many", fmt.Sprintf("out %d", i)); err != nil {
				return err
			}
			if wts[i], err = b.weight(ws[i], "matmul many"); err != nil {
				return err
			}
			if err := backend.CheckMatMul("cuda", outTs[i], a, wts[i], wts[i].name); err != nil {
				return err
			}
			fusable = fusable && wts[i].kind == kindNVFP4
		}
		if fusable {
			launchMany := b.gemvPersistMany
			switch {
			case tcp:
				launchMany = b.gemvTCPMany
			case tcb:
				launchMany = b.gemvTCBMany
			case tc:
				launchMany = b.gemvTCMany
			}
			if err := launchMany(outTs, a, wts); err != nil {
				return fmt.Errorf("cuda: matmul many: %w", err)
			}
			return nil
		}
		if err := b.gemmMany(outTs, a, wts); err != nil {
			return fmt.Errorf("cuda: matmul many: %w", err)
		}
		return nil
	})
}

// gemmMany runs outs[i] = x·ws[i]ᵀ with x rounded to bf16 once for every product cuBLASLt
// takes (training's q/k/v and gate/up: the conversions were ~5 % of a step, session 6), and
// MatMul for the others (owner goroutine, checked arguments). It routes a product as matmul
// does: trainSIMT (the fp32 reference path of the parity tests) keeps every one off cuBLASLt.
func (b *Backend) gemmMany(outs []*Tensor, a *Tensor, ws []*Weight) error {
	T, K := a.rows, a.cols
	converted := false
	for i, w := range ws {
		if T >= gemmMinRows && !b.trainSIMT && gemmShapeOK(K, w.out) && b.gemmReady() {
			l, buf, err := b.gemmForwardPrepare(outs[i], a, w)
			if err == nil {
				// The bf16 copy of x stays in the act scratch: gemmForwardPrepare grows it only
				// when it is smaller than T·K, and every product here has that size.
				if !converted {
					if err := b.toBF16(buf.act, a.ptr, int64(T)*int64(K)); err != nil {
						return fmt.Errorf("rounding x to bf16: %w", err)
					}
					converted = true
				}
				if err := b.gemmRunLaunches(l, buf, true); err != nil {
					return fmt.Errorf("%s: %w", w.name, err)
				}
				continue
			}
			if !errors.Is(err, errGEMMUnsupported) {
				return fmt.Errorf("%s: %w", w.name, err)
			}
		}
		// MatMul's own path (a GEMV, the SIMT kernel, or cuBLASLt converting x itself into the
		// same scratch, with the same values).
		if err := b.matmul(outs[i], a, w); err != nil {
			return fmt.Errorf("%s: %w", w.name, err)
		}
	}
	return nil
}

// AddRMSNorm implements backend.Fused.
func (b *Backend) AddRMSNorm(out, x, delta, w backend.Tensor, eps float32) error {
	return b.do(func() error {
		const op = "add+rmsnorm"
		o, err := b.ten(out, op, "out")
		if err != nil {
			return err
		}
		a, err := b.ten(x, op, "x")
		if err != nil {
			return err
		}
		d, err := b.ten(delta, op, "delta")
		if err != nil {
			return err
		}
		g, err := b.ten(w, op, "weight")
		if err != nil {
			return err
		}
		n := g.n()
		if n != a.cols || d.rows != a.rows || d.cols != a.cols || o.rows != a.rows || o.cols != a.cols {
			return fmt.Errorf("cuda: %s: x [%d, %d] + delta [%d, %d] normed by %d weights into [%d, %d]", op, a.rows, a.cols, d.rows, d.cols, n, o.rows, o.cols)
		}
		if overlaps(o, a) || overlaps(o, d) || overlaps(a, d) {
			return fmt.Errorf("cuda: %s: out, x and delta must not share memory", op)
		}
		if err := b.launchDep(b.fns["add_rmsnorm_f32"], [3]int{a.rows, 1, 1}, [3]int{normThreads(n), 1, 1}, 0,
			ptrArg(o.ptr), ptrArg(a.ptr), ptrArg(d.ptr), ptrArg(g.ptr), intArg(n), f32Arg(eps)); err != nil {
			return fmt.Errorf("cuda: %s: %w", op, err)
		}
		return nil
	})
}

// QKNormRoPECache implements backend.Fused.
func (b *Backend) QKNormRoPECache(qr, kr, q, k, v, qn, kn, kCache, vCache backend.Tensor, headDim, pos0 int, theta float64, eps float32) error {
	return b.do(func() error {
		const op = "qk norm+rope+cache"
		ts, err := b.tens(op, []backend.Tensor{qr, kr, q, k, v, qn, kn}, "qr", "kr", "q", "k", "v", "q_norm", "k_norm")
		if err != nil {
			return err
		}
		KC, VC, kv, err := b.kvPair(op, kCache, vCache, "k cache", "v cache")
		if err != nil {
			return err
		}
		QR, KR, Q, K, V, QN, KN := ts[0], ts[1], ts[2], ts[3], ts[4], ts[5], ts[6]
		T := Q.rows
		if headDim <= 0 || headDim%2 != 0 || headDim > 512 || Q.cols%headDim != 0 || K.cols%headDim != 0 ||
			QN.n() != headDim || KN.n() != headDim || QR.rows != T || QR.cols != Q.cols || KR.rows != T || KR.cols != K.cols ||
			K.rows != T || V.rows != T || V.cols != K.cols || KC.cols != K.cols || VC.cols != K.cols ||
			pos0 < 0 || pos0+T > KC.rows || pos0+T > VC.rows || !(theta > 0) || pos0+T > math.MaxInt32 {
			return fmt.Errorf("cuda: %s: q [%d, %d], k [%d, %d], v [%d, %d], head_dim %d, norms %d/%d, caches [%d, %d]/[%d, %d] at %d",
				op, Q.rows, Q.cols, K.rows, K.cols, V.rows, V.cols, headDim, QN.n(), KN.n(), KC.rows, KC.cols, VC.rows, VC.cols, pos0)
		}
		if overlaps(QR, Q) || overlaps(KR, K) || overlaps(KC, KR) || overlaps(VC, V) {
			return fmt.Errorf("cuda: %s: outputs must not share memory with inputs", op)
		}
		inv, err := b.invFreq(headDim, theta)
		if err != nil {
			return fmt.Errorf("cuda: %s: %w", op, err)
		}
		nH, nKV := Q.cols/headDim, K.cols/headDim
		if err := b.launchDep(b.fns["qk_norm_rope_cache"+kv], [3]int{T, nH + nKV, 1}, [3]int{normThreads(headDim), 1, 1}, 0,
			ptrArg(QR.ptr), ptrArg(KR.ptr), ptrArg(Q.ptr), ptrArg(K.ptr), ptrArg(V.ptr), ptrArg(QN.ptr), ptrArg(KN.ptr),
			ptrArg(KC.ptr), ptrArg(VC.ptr), ptrArg(inv), intArg(nH), intArg(nKV), intArg(headDim), intArg(pos0), f32Arg(eps)); err != nil {
			return fmt.Errorf("cuda: %s: %w", op, err)
		}
		return nil
	})
}
