//go:build cuda

package cuda

import (
	"fmt"
	"math"
	"os"

	"github.com/qwengo/qwengo/engine/backend"
)

// The fused decode ops (backend.FusedDecode): a decoder block's input and post-attention norms
// staged into the q/k/v and gate/up GEMVs, SwiGLU staged into down, the residual adds done by the
// o and down GEMVs as they finish each output (gemv_tcp.cuh's _norm, _swiacc and _acc forms). A
// batch-1 decode layer then launches six kernels instead of nine. Each op falls back to the
// composition it names (through the public ops, on the owner goroutine) where the resident GEMV
// does not apply (other weight formats, more than eight rows, another GEMV forced). The model
// takes them for one-row chunks (batch-1 decode) unless QWENGO_CUDA_DECODE_FUSED=0.

// decodeFusedFromEnv reports whether the model should take the fused decode forms: yes unless
// QWENGO_CUDA_DECODE_FUSED=0; the ops themselves run fused whenever they apply.
func decodeFusedFromEnv() bool { return os.Getenv("QWENGO_CUDA_DECODE_FUSED") != "0" }

// decodeNormRoPEFromEnv reports whether QKNormRoPEAttention runs as one kernel: only with
// QWENGO_CUDA_DECODE_NR=1. Measured slower in the 36-layer model (session 14, calls 4-5,
// TestFiguresDecodeForms, in one process: 62.2 against 57.7 µs a layer at context 512, 72.2
// against 69.9 at 8192): every block of the attention now normalises and rotates its query
// heads after pdl_wait, which costs more on the critical path than the kernel boundary it
// removes (programmatic dependent launch already hides most of that). By default it is the two
// kernels; the folded form stays, bit for bit theirs, for other shapes to try.
func decodeNormRoPEFromEnv() bool { return os.Getenv("QWENGO_CUDA_DECODE_NR") == "1" }

// fusedDecodeRows is where the fused forms pay. Measured (session 5, device runs 7-8): at eight
// rows every block of the q/k/v and gate/up products computes eight row norms over 80 KB of x
// and batch-8 decode fell from ~1,460 to 1,219 tok/s. At one row they measured as fast as the
// kernels they fold (session 5) or 2-5 % slower (session 10, call 4) while the norm GEMVs read
// their row one load at a time (a chain of L2 round trips after pdl_wait); with the row's loads
// issued at once (gemv_tcp.cuh tcp_row_inv, session 14 call 1, ABAB in one binary) batch-1
// decode is 3-7 % faster with them: 403.8 / 399.3 against 387.9 / 390.2 tok/s at context 512,
// 339.5 / 336.8 against 317.8 / 328.0 at 8192.
const fusedDecodeRows = 1

// decodeFusedRowsFromEnv is the most rows the model takes the fused decode ops for:
// QWENGO_CUDA_DECODE_FUSED_ROWS (1 to 8, the resident GEMV's limit; a measurement knob), else
// fusedDecodeRows.
func decodeFusedRowsFromEnv() int {
	if n := positiveEnv("QWENGO_CUDA_DECODE_FUSED_ROWS"); n > 0 {
		return min(n, 8)
	}
	return fusedDecodeRows
}

// FusedDecodeRows implements backend.FusedDecode: fusedDecodeRows (or
// QWENGO_CUDA_DECODE_FUSED_ROWS) unless QWENGO_CUDA_DECODE_FUSED=0, then 0.
func (b *Backend) FusedDecodeRows() int {
	if !b.decodeFusedModel {
		return 0
	}
	if b.decodeFusedRows < 1 { // a Backend not built by New (tests)
		return fusedDecodeRows
	}
	return b.decodeFusedRows
}

// fusedGEMV reports whether fusion f may run on gemv_tcp for T rows of K inputs and weights ws.
func (b *Backend) fusedGEMV(f tcpFusion, T, K int, ws []*Weight) bool {
	if (b.gemv != gemvAuto && b.gemv != gemvTCP) || !b.gemvTCPFusedShape(f, T, K) {
		return false
	}
	for _, w := range ws {
		if w.kind != kindNVFP4 {
			return false
		}
	}
	return true
}

// withTemp runs f with a temporary [rows, cols] tensor (Workspace), freed afterwards.
func (b *Backend) withTemp(rows, cols int, f func(t backend.Tensor) error) error {
	t, err := b.Alloc(backend.Workspace, rows, cols)
	if err != nil {
		return err
	}
	defer b.Free(t)
	return f(t)
}

// NormMatMulMany implements backend.FusedDecode.
func (b *Backend) NormMatMulMany(outs []backend.Tensor, x, w backend.Tensor, eps float32, ws []backend.Weight) error {
	const op = "norm+matmul many"
	if len(outs) != len(ws) || len(ws) == 0 || len(ws) > 3 {
		return fmt.Errorf("cuda: %s: %d outputs for %d weights (1 to 3)", op, len(outs), len(ws))
	}
	return b.do(func() error {
		a, err := b.ten(x, op, "x")
		if err != nil {
			return err
		}
		g, err := b.ten(w, op, "norm weight")
		if err != nil {
			return err
		}
		if g.n() != a.cols {
			return fmt.Errorf("cuda: %s: %d norm weights for rows of %d", op, g.n(), a.cols)
		}
		outTs, wts, err := b.productArgs(op, outs, a, ws)
		if err != nil {
			return err
		}
		if b.fusedGEMV(tcpNorm, a.rows, a.cols, wts) {
			for i, o := range outTs {
				if overlaps(o, a) || overlaps(o, g) {
					return fmt.Errorf("cuda: %s: out %d shares memory with x or the norm weight", op, i)
				}
			}
			if err := b.gemvTCPLaunch(tcpNorm, outTs, a, nil, g, eps, wts); err != nil {
				return fmt.Errorf("cuda: %s: %w", op, err)
			}
			return nil
		}
		return b.withTemp(a.rows, a.cols, func(n backend.Tensor) error {
			return firstErr(b.RMSNorm(n, x, w, eps), b.MatMulMany(outs, n, ws))
		})
	})
}

// MatMulAdd implements backend.FusedDecode.
func (b *Backend) MatMulAdd(x, a backend.Tensor, w backend.Weight) error {
	const op = "matmul+add"
	return b.do(func() error {
		in, err := b.ten(a, op, "a")
		if err != nil {
			return err
		}
		outTs, wts, err := b.productArgs(op, []backend.Tensor{x}, in, []backend.Weight{w})
		if err != nil {
			return err
		}
		if b.fusedGEMV(tcpAcc, in.rows, in.cols, wts) {
			if overlaps(outTs[0], in) {
				return fmt.Errorf("cuda: %s: x and a must not share memory", op)
			}
			if err := b.gemvTCPLaunch(tcpAcc, outTs, in, nil, nil, 0, wts); err != nil {
				return fmt.Errorf("cuda: %s: %w", op, err)
			}
			return nil
		}
		return b.withTemp(outTs[0].rows, outTs[0].cols, func(p backend.Tensor) error {
			return firstErr(b.MatMul(p, a, w), b.Add(x, p))
		})
	})
}

// SwiGLUMatMulAdd implements backend.FusedDecode.
func (b *Backend) SwiGLUMatMulAdd(x, gate, up backend.Tensor, w backend.Weight) error {
	const op = "swiglu+matmul+add"
	return b.do(func() error {
		g, err := b.ten(gate, op, "gate")
		if err != nil {
			return err
		}
		u, err := b.ten(up, op, "up")
		if err != nil {
			return err
		}
		if u.rows != g.rows || u.cols != g.cols {
			return fmt.Errorf("cuda: %s: gate [%d, %d] and up [%d, %d] differ", op, g.rows, g.cols, u.rows, u.cols)
		}
		outTs, wts, err := b.productArgs(op, []backend.Tensor{x}, g, []backend.Weight{w})
		if err != nil {
			return err
		}
		if b.fusedGEMV(tcpSwiGLUAcc, g.rows, g.cols, wts) {
			if overlaps(outTs[0], g) || overlaps(outTs[0], u) {
				return fmt.Errorf("cuda: %s: x must not share memory with gate or up", op)
			}
			if err := b.gemvTCPLaunch(tcpSwiGLUAcc, outTs, g, u, nil, 0, wts); err != nil {
				return fmt.Errorf("cuda: %s: %w", op, err)
			}
			return nil
		}
		return b.withTemp(g.rows, g.cols, func(h backend.Tensor) error {
			return b.withTemp(outTs[0].rows, outTs[0].cols, func(p backend.Tensor) error {
				return firstErr(b.SwiGLU(h, gate, up), b.MatMul(p, h, w), b.Add(x, p))
			})
		})
	})
}

// productArgs resolves and checks the outputs and weights of products of a (owner goroutine).
func (b *Backend) productArgs(op string, outs []backend.Tensor, a *Tensor, ws []backend.Weight) ([]*Tensor, []*Weight, error) {
	outTs := make([]*Tensor, len(ws))
	wts := make([]*Weight, len(ws))
	for i := range ws {
		var err error
		if outTs[i], err = b.ten(outs[i], op, fmt.Sprintf("out %d", i)); err != nil {
			return nil, nil, err
		}
		if wts[i], err = b.weight(ws[i], op); err != nil {
			return nil, nil, err
		}
		if err := backend.CheckMatMul("cuda: "+op, outTs[i], a, wts[i], wts[i].name); err != nil {
			return nil, nil, err
		}
	}
	return outTs, wts, nil
}

// firstErr returns the first non-nil error (every argument has run: later ops compute on what
// a failed one left, and the caller sees the first failure).
func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

// QKNormRoPEAttention implements backend.NormRoPEAttention: with QWENGO_CUDA_DECODE_NR=1,
// attention_decode_nr{G} (attention.cu) where the register-walk decode attention would run (one
// row, head_dim 128, G = 1, 2 or 4 query heads a KV head), else QKNormRoPECache then Attention
// (through the public ops, on the owner goroutine, as the other fused decode ops fall back),
// which also report bad arguments.
func (b *Backend) QKNormRoPEAttention(out, qr, kr, q, k, v, qn, kn, kCache, vCache backend.Tensor, nHeads, nKV, headDim, pos int, theta float64, eps float32) error {
	const op = "qk norm+rope+attention"
	twoOps := func() error {
		return firstErr(b.QKNormRoPECache(qr, kr, q, k, v, qn, kn, kCache, vCache, headDim, pos, theta, eps),
			b.Attention(out, qr, kCache, vCache, pos, nHeads, nKV, headDim))
	}
	return b.do(func() error {
		if !b.decodeNormRoPE { // the default: the two ops, with nothing resolved twice
			return twoOps()
		}
		ts, err := b.tens(op, []backend.Tensor{out, qr, kr, q, k, v, qn, kn}, "out", "qr", "kr", "q", "k", "v", "q_norm", "k_norm")
		if err != nil {
			return err
		}
		KC, VC, kv, err := b.kvPair(op, kCache, vCache, "k cache", "v cache")
		if err != nil {
			return err
		}
		O, QR, KR, Q, K, V, QN, KN := ts[0], ts[1], ts[2], ts[3], ts[4], ts[5], ts[6], ts[7]
		var fn function
		if nHeads > 0 && nKV > 0 && nHeads%nKV == 0 && headDim == attDecodeDim && !b.attnSIMT && !b.decodeAttnTiles {
			fn = b.fns[fmt.Sprintf("attention_decode_nr%d%s", nHeads/nKV, kv)]
		}
		fold := fn != nil && Q.rows == 1 && Q.cols == nHeads*headDim && K.rows == 1 && K.cols == nKV*headDim && V.rows == 1 &&
			V.cols == K.cols && QR.rows == 1 && QR.cols == Q.cols && KR.rows == 1 && KR.cols == K.cols && O.rows == 1 &&
			O.cols == Q.cols && QN.n() == headDim && KN.n() == headDim && KC.cols == K.cols && VC.cols == K.cols &&
			pos >= 0 && pos < KC.rows && pos < VC.rows && theta > 0 && pos < math.MaxInt32
		if !fold {
			return twoOps()
		}
		for _, o := range []*Tensor{O, QR, KR} {
			for _, in := range []*Tensor{Q, K, V, QN, KN, KC, VC} {
				if overlaps(o, in) {
					return fmt.Errorf("cuda: %s: outputs must not share memory with the inputs or the caches", op)
				}
			}
		}
		if overlaps(O, QR) || overlaps(O, KR) || overlaps(QR, KR) || overlaps(KC, VC) {
			return fmt.Errorf("cuda: %s: out, qr, kr and the two caches must not share memory", op)
		}
		inv, err := b.invFreq(headDim, theta)
		if err != nil {
			return fmt.Errorf("cuda: %s: %w", op, err)
		}
		S, chunk := attentionDecodeSplit(b.decodeAttnSlots(), nKV, pos+1)
		if err := b.attnDecodeScratch(nHeads, S, nKV); err != nil {
			return err
		}
		scale := float32(1 / math.Sqrt(float64(headDim)))
		if err := b.launchDep(fn, [3]int{nKV, S, 1}, [3]int{32 * attDecodeRegWarps, 1, 1}, 0,
			ptrArg(O.ptr), ptrArg(b.attnBuf.ptr), ptrArg(b.attnCounters.ptr), ptrArg(QR.ptr), ptrArg(KR.ptr), ptrArg(Q.ptr),
			ptrArg(K.ptr), ptrArg(V.ptr), ptrArg(QN.ptr), ptrArg(KN.ptr), ptrArg(KC.ptr), ptrArg(VC.ptr), ptrArg(inv),
			intArg(pos), intArg(nHeads), intArg(nKV), f32Arg(scale), intArg(chunk), f32Arg(eps)); err != nil {
			return fmt.Errorf("cuda: %s: %w", op, err)
		}
		return nil
	})
}
