// Package grad is Qwen3 training on the CPU: an explicit forward and backward pass per layer,
// llm.c style — every op a forward/backward pair written side by side over float32 row-major
// arrays, the model's backward the forward's sequence reversed, no autograd tape. It is the
// reference the GPU backend's training ops are checked against, and it implements
// train.Differentiable so the trainer can fine-tune a model with it.
//
// Gradients match PyTorch autograd on the same weights (testdata from transformers) to 1e-4.
package grad

import (
	"math"

	"github.com/qwengo/qwengo/engine/internal/par"
)

// parallelFor splits [0, n) over GOMAXPROCS goroutines in contiguous ranges (64 or more rows;
// fewer stay on the caller).
func parallelFor(n int, fn func(lo, hi int)) {
	if n < 64 {
		fn(0, n)
		return
	}
	par.For(n, 1, fn)
}

func dot(a, b []float32) float32 {
	b = b[:len(a)]
	var s0, s1, s2, s3 float32
	i := 0
	for ; i+4 <= len(a); i += 4 {
		s0 += a[i] * b[i]
		s1 += a[i+1] * b[i+1]
		s2 += a[i+2] * b[i+2]
		s3 += a[i+3] * b[i+3]
	}
	for ; i < len(a); i++ {
		s0 += a[i] * b[i]
	}
	return (s0 + s1) + (s2 + s3)
}

func axpy(y []float32, a float32, x []float32) {
	x = x[:len(y)]
	for i := range y {
		y[i] += a * x[i]
	}
}

// matmulForward: out[T,N] = x[T,K] · W[N,K]ᵀ.
func matmulForward(out, x, w []float32, T, K, N int) {
	parallelFor(N, func(lo, hi int) {
		for t := 0; t < T; t++ {
			xr := x[t*K : (t+1)*K]
			for n := lo; n < hi; n++ {
				out[t*N+n] = dot(xr, w[n*K:(n+1)*K])
			}
		}
	})
}

// matmulBackward: dx[T,K] += dout[T,N] · W[N,K]; dw[N,K] += doutᵀ · x. dx may be nil.
func matmulBackward(dx, dw, dout, x, w []float32, T, K, N int) {
	if dx != nil {
		parallelFor(T, func(lo, hi int) {
			for t := lo; t < hi; t++ {
				dr := dx[t*K : (t+1)*K]
				for n := 0; n < N; n++ {
					if g := dout[t*N+n]; g != 0 {
						axpy(dr, g, w[n*K:(n+1)*K])
					}
				}
			}
		})
	}
	parallelFor(N, func(lo, hi int) {
		for n := lo; n < hi; n++ {
			wr := dw[n*K : (n+1)*K]
			for t := 0; t < T; t++ {
				if g := dout[t*N+n]; g != 0 {
					axpy(wr, g, x[t*K:(t+1)*K])
				}
			}
		}
	})
}

// rmsnormForward normalises rows of width n: out = g ⊙ x·r, r = 1/√(mean(x²)+eps); keeps r.
func rmsnormForward(out, rstd, x, g []float32, rows, n int, eps float32) {
	for r := 0; r < rows; r++ {
		xr := x[r*n : (r+1)*n]
		var ss float64
		for _, v := range xr {
			ss += float64(v) * float64(v)
		}
		inv := float32(1 / math.Sqrt(ss/float64(n)+float64(eps)))
		rstd[r] = inv
		o := out[r*n : (r+1)*n]
		for i, v := range xr {
			o[i] = g[i] * (v * inv)
		}
	}
}

// rmsnormBackward: dx += r·(g⊙dy) − x·r³/n·Σ(g⊙dy⊙x); dg += Σ_rows dy⊙x·r.
func rmsnormBackward(dx, dg, dout, x, rstd, g []float32, rows, n int) {
	for r := 0; r < rows; r++ {
		xr, dy, dr := x[r*n:(r+1)*n], dout[r*n:(r+1)*n], dx[r*n:(r+1)*n]
		inv := rstd[r]
		var s float64
		for i := range xr {
			s += float64(g[i] * dy[i] * xr[i])
		}
		c := float32(s) * inv * inv * inv / float32(n)
		for i := range xr {
			dg[i] += dy[i] * xr[i] * inv
			dr[i] += inv*g[i]*dy[i] - c*xr[i]
		}
	}
}

// ropeTables returns cos/sin [T, hd/2] for positions pos0.. as the forward computes them.
func ropeTables(T, headDim, pos0 int, theta float64) (cos, sin []float32) {
	half := headDim / 2
	cos, sin = make([]float32, T*half), make([]float32, T*half)
	for t := 0; t < T; t++ {
		p := float32(pos0 + t)
		for i := 0; i < half; i++ {
			inv := float32(1 / math.Pow(theta, float64(2*i)/float64(headDim)))
			s, c := math.Sincos(float64(p * inv))
			cos[t*half+i], sin[t*half+i] = float32(c), float32(s)
		}
	}
	return
}

// ropeApply rotates x [T, heads*hd] in place; sign -1 applies the inverse rotation (backward).
func ropeApply(x, cos, sin []float32, T, width, headDim int, sign float32) {
	half := headDim / 2
	for t := 0; t < T; t++ {
		c, s := cos[t*half:(t+1)*half], sin[t*half:(t+1)*half]
		row := x[t*width : (t+1)*width]
		for h := 0; h < width; h += headDim {
			v := row[h : h+headDim]
			for i := 0; i < half; i++ {
				x1, x2 := v[i], v[i+half]
				v[i] = x1*c[i] - sign*x2*s[i]
				v[i+half] = x2*c[i] + sign*x1*s[i]
			}
		}
	}
}

// attentionForward: causal GQA. q [T, nH*hd], k/v [T, nKV*hd]; out [T, nH*hd]; keeps the
// probabilities P [nH, T, T] (row t holds 0..t) for the backward.
func attentionForward(out, P, q, k, v []float32, T, nH, nKV, hd int) {
	group := nH / nKV
	scale := float32(1 / math.Sqrt(float64(hd)))
	qw, kw := nH*hd, nKV*hd
	parallelFor(nH, func(lo, hi int) {
		for h := lo; h < hi; h++ {
			g := h / group
			for t := 0; t < T; t++ {
				p := P[(h*T+t)*T : (h*T+t+1)*T]
				qv := q[t*qw+h*hd : t*qw+(h+1)*hd]
				m := float32(math.Inf(-1))
				for j := 0; j <= t; j++ {
					p[j] = dot(qv, k[j*kw+g*hd:j*kw+(g+1)*hd]) * scale
					m = max(m, p[j])
				}
				var sum float32
				for j := 0; j <= t; j++ {
					p[j] = float32(math.Exp(float64(p[j] - m)))
					sum += p[j]
				}
				o := out[t*qw+h*hd : t*qw+(h+1)*hd]
				clear(o)
				for j := 0; j <= t; j++ {
					p[j] /= sum
					axpy(o, p[j], v[j*kw+g*hd:j*kw+(g+1)*hd])
				}
				clear(p[t+1:])
			}
		}
	})
}

// attentionBackward accumulates dq, dk, dv from dout using the kept probabilities.
func attentionBackward(dq, dk, dv, dout, P, q, k, v []float32, T, nH, nKV, hd int) {
	group := nH / nKV
	scale := float32(1 / math.Sqrt(float64(hd)))
	qw, kw := nH*hd, nKV*hd
	// Heads sharing a KV head write the same dk/dv rows: parallelise over KV groups.
	parallelFor(nKV, func(lo, hi int) {
		dp := make([]float32, T)
		for g := lo; g < hi; g++ {
			for h := g * group; h < (g+1)*group; h++ {
				for t := 0; t < T; t++ {
					p := P[(h*T+t)*T : (h*T+t)*T+t+1]
					do := dout[t*qw+h*hd : t*qw+(h+1)*hd]
					var rowsum float32
					for j := range p {
						dp[j] = dot(do, v[j*kw+g*hd:j*kw+(g+1)*hd])
						rowsum += dp[j] * p[j]
						axpy(dv[j*kw+g*hd:j*kw+(g+1)*hd], p[j], do)
					}
					dqv := dq[t*qw+h*hd : t*qw+(h+1)*hd]
					qv := q[t*qw+h*hd : t*qw+(h+1)*hd]
					for j := range p {
						ds := p[j] * (dp[j] - rowsum) * scale
						if ds == 0 {
							continue
						}
						axpy(dqv, ds, k[j*kw+g*hd:j*kw+(g+1)*hd])
						axpy(dk[j*kw+g*hd:j*kw+(g+1)*hd], ds, qv)
					}
				}
			}
		}
	})
}

func silu(x float32) float32 { return x / (1 + float32(math.Exp(float64(-x)))) }

// swigluForward: out = silu(gate) ⊙ up.
func swigluForward(out, gate, up []float32) {
	for i, g := range gate {
		out[i] = silu(g) * up[i]
	}
}

// swigluBackward: dgate = dout⊙up⊙silu'(gate), dup = dout⊙silu(gate).
func swigluBackward(dgate, dup, dout, gate, up []float32) {
	for i, g := range gate {
		s := 1 / (1 + float32(math.Exp(float64(-g))))
		dgate[i] = dout[i] * up[i] * (s * (1 + g*(1-s)))
		dup[i] = dout[i] * g * s
	}
}
