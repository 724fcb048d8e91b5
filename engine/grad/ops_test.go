package grad

import (
	"context"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/qwengo/qwengo/engine/train"
)

// Each op's backward is checked against central finite differences of a random projection of
// its forward output: L = Σ out ⊙ R, so dL/dout = R.

func randn(r *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.NormFloat64())
	}
	return v
}

func projection(out, R []float32) float64 {
	var s float64
	for i := range out {
		s += float64(out[i]) * float64(R[i])
	}
	return s
}

// checkFD perturbs every element of each input and compares with the analytic gradient.
func checkFD(t *testing.T, name string, inputs [][]float32, grads [][]float32, loss func() float64) {
	t.Helper()
	for k, x := range inputs {
		for i := range x {
			v := x[i]
			h := float32(1e-2)
			x[i] = v + h
			up := loss()
			x[i] = v - h
			down := loss()
			x[i] = v
			num := (up - down) / float64(2*h)
			if d := math.Abs(num - float64(grads[k][i])); d > 2e-2*math.Max(1, math.Abs(num)) {
				t.Fatalf("%s: input %d element %d: analytic %.5g, numeric %.5g", name, k, i, grads[k][i], num)
			}
		}
	}
}

func TestOpGradients(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	t.Run("matmul", func(t *testing.T) {
		T, K, N := 3, 5, 4
		x, w, R := randn(r, T*K), randn(r, N*K), randn(r, T*N)
		out := make([]float32, T*N)
		dx, dw := make([]float32, T*K), make([]float32, N*K)
		matmulBackward(dx, dw, R, x, w, T, K, N)
		checkFD(t, "matmul", [][]float32{x, w}, [][]float32{dx, dw}, func() float64 {
			matmulForward(out, x, w, T, K, N)
			return projection(out, R)
		})
	})
	t.Run("rmsnorm", func(t *testing.T) {
		rows, n := 3, 8
		x, g, R := randn(r, rows*n), randn(r, n), randn(r, rows*n)
		out, rstd := make([]float32, rows*n), make([]float32, rows)
		rmsnormForward(out, rstd, x, g, rows, n, 1e-6)
		dx, dg := make([]float32, rows*n), make([]float32, n)
		rmsnormBackward(dx, dg, R, x, rstd, g, rows, n)
		checkFD(t, "rmsnorm", [][]float32{x, g}, [][]float32{dx, dg}, func() float64 {
			rmsnormForward(out, rstd, x, g, rows, n, 1e-6)
			return projection(out, R)
		})
	})
	t.Run("rope", func(t *testing.T) {
		T, hd, heads := 4, 8, 2
		x, R := randn(r, T*hd*heads), randn(r, T*hd*heads)
		cos, sin := ropeTables(T, hd, 3, 10000)
		dx := append([]float32(nil), R...)
		ropeApply(dx, cos, sin, T, hd*heads, hd, -1)
		checkFD(t, "rope", [][]float32{x}, [][]float32{dx}, func() float64 {
			y := append([]float32(nil), x...)
			ropeApply(y, cos, sin, T, hd*heads, hd, 1)
			return projection(y, R)
		})
	})
	t.Run("attention", func(t *testing.T) {
		T, nH, nKV, hd := 4, 4, 2, 8
		q, k, v := randn(r, T*nH*hd), randn(r, T*nKV*hd), randn(r, T*nKV*hd)
		R := randn(r, T*nH*hd)
		out, P := make([]float32, T*nH*hd), make([]float32, nH*T*T)
		attentionForward(out, P, q, k, v, T, nH, nKV, hd)
		dq, dk, dv := make([]float32, len(q)), make([]float32, len(k)), make([]float32, len(v))
		attentionBackward(dq, dk, dv, R, P, q, k, v, T, nH, nKV, hd)
		checkFD(t, "attention", [][]float32{q, k, v}, [][]float32{dq, dk, dv}, func() float64 {
			attentionForward(out, P, q, k, v, T, nH, nKV, hd)
			return projection(out, R)
		})
	})
	t.Run("swiglu", func(t *testing.T) {
		n := 16
		g, u, R := randn(r, n), randn(r, n), randn(r, n)
		out := make([]float32, n)
		dg, du := make([]float32, n), make([]float32, n)
		swigluBackward(dg, du, R, g, u)
		checkFD(t, "swiglu", [][]float32{g, u}, [][]float32{dg, du}, func() float64 {
			swigluForward(out, g, u)
			return projection(out, R)
		})
	})
}

// BenchmarkTrainStep measures CPU training throughput (forward, loss and backward) on the
// tiny checkpoint, batch 1 × 64 tokens.
func BenchmarkTrainStep(b *testing.B) {
	m := tiny(b, "tiny-tied")
	ids := make([]int, 64)
	mask := make([]bool, 64)
	for i := range ids {
		ids[i] = (i * 37) % 512
		mask[i] = i >= 16
	}
	b.ResetTimer()
	tokens := 0
	for i := 0; i < b.N; i++ {
		grads := make([][]float32, len(m.Params))
		for j, p := range m.Params {
			grads[j] = make([]float32, len(p.W))
		}
		if _, _, err := m.sequence(benchCtx, ids, mask, benchLoss, grads); err != nil {
			b.Fatal(err)
		}
		tokens += len(ids)
	}
	b.ReportMetric(float64(tokens)/b.Elapsed().Seconds(), "tok/s")
}

var (
	benchCtx  = context.Background()
	benchLoss = train.CrossEntropy{}
)
