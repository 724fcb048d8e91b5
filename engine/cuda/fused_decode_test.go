//go:build cuda

package cuda

import (
	"fmt"
	"testing"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/cpu"
)

// TestFusedDecodeOps checks the fused decode ops (NormMatMulMany, MatMulAdd, SwiGLUMatMulAdd)
// against the CPU's compositions of the ops they name: on the resident GEMV (NVFP4 weights,
// 1..8 rows, one and several K slices), on their fallbacks (more rows than the GEMV takes, an
// f32 weight, another GEMV forced) and twice in a row (arrival counters back at zero).
func TestFusedDecodeOps(t *testing.T) {
	g := openGPU(t)
	c := cpu.New()
	const bound = 2e-5
	const eps = 1e-6
	for i, s := range []struct {
		T, K, N int
		kind    string
		fused   bool
	}{
		{1, 2560, 1030, kindNVFP4, true}, {3, 2560, 4096, kindNVFP4, true}, {8, 2560, 300, kindNVFP4, true},
		{1, 9728, 2560, kindNVFP4, true}, {5, 1024, 130, kindNVFP4, true}, {12, 2560, 200, kindNVFP4, true},
		{2, 2560, 96, kindF32, true}, {4, 2560, 512, kindNVFP4, false},
	} {
		name := fmt.Sprintf("T=%d K=%d N=%d %s fused=%v", s.T, s.K, s.N, s.kind, s.fused)
		g.do(func() error { // not fused: another GEMV forced, the ops fall back
			g.gemv = gemvAuto
			if !s.fused {
				g.gemv = gemvV2Name
			}
			return nil
		})
		cw, gw := weights(t, c, g, hostWeight(t, s.kind, s.N, s.K, uint64(90+i)))
		cx, gx := pair(t, c, g, s.T, s.K, randn(s.T*s.K, uint64(900+i), 1))
		cu, gu := pair(t, c, g, s.T, s.K, randn(s.T*s.K, uint64(950+i), 1))
		cn, gn := pair(t, c, g, 1, s.K, randn(s.K, uint64(980+i), 0.3))
		res := randn(s.T*s.N, uint64(990+i), 1)

		// NormMatMulMany: RMSNorm then the product.
		ch, _ := pair(t, c, g, s.T, s.K, nil)
		co, _ := pair(t, c, g, s.T, s.N, nil)
		if err := firstErr(c.RMSNorm(ch, cx, cn, eps), c.MatMul(co, ch, cw)); err != nil {
			t.Fatal(err)
		}
		for rep := 0; rep < 2; rep++ {
			_, gO := pair(t, c, g, s.T, s.N, nil)
			if err := g.NormMatMulMany([]backend.Tensor{gO}, gx, gn, eps, []backend.Weight{gw}); err != nil {
				t.Fatalf("%s: norm+matmul: %v", name, err)
			}
			compare(t, name+" norm+matmul", c, g, co, gO, bound)
		}

		// MatMulAdd: x += a·wᵀ.
		cr, _ := pair(t, c, g, s.T, s.N, res)
		if err := firstErr(c.MatMul(co, cx, cw), c.Add(cr, co)); err != nil {
			t.Fatal(err)
		}
		for rep := 0; rep < 2; rep++ {
			_, gr := pair(t, c, g, s.T, s.N, res)
			if err := g.MatMulAdd(gr, gx, gw); err != nil {
				t.Fatalf("%s: matmul+add: %v", name, err)
			}
			compare(t, name+" matmul+add", c, g, cr, gr, bound)
		}

		// SwiGLUMatMulAdd: x += SwiGLU(gate, up)·wᵀ.
		cr2, _ := pair(t, c, g, s.T, s.N, res)
		if err := firstErr(c.SwiGLU(ch, cx, cu), c.MatMul(co, ch, cw), c.Add(cr2, co)); err != nil {
			t.Fatal(err)
		}
		for rep := 0; rep < 2; rep++ {
			_, gr := pair(t, c, g, s.T, s.N, res)
			if err := g.SwiGLUMatMulAdd(gr, gx, gu, gw); err != nil {
				t.Fatalf("%s: swiglu+matmul+add: %v", name, err)
			}
			compare(t, name+" swiglu+matmul+add", c, g, cr2, gr, bound)
		}
	}
	g.do(func() error { g.gemv = gemvFromEnv(); return nil })

	// Mismatched shapes are errors naming the op.
	_, gx := pair(t, c, g, 2, 2560, nil)
	_, gu := pair(t, c, g, 3, 2560, nil)
	_, gn := pair(t, c, g, 1, 256, nil)
	_, gw := weights(t, c, g, hostWeight(t, kindNVFP4, 64, 2560, 1))
	_, gO := pair(t, c, g, 2, 64, nil)
	for _, err := range []error{
		g.NormMatMulMany([]backend.Tensor{gO}, gx, gn, eps, []backend.Weight{gw}),
		g.SwiGLUMatMulAdd(gO, gx, gu, gw),
		g.MatMulAdd(gO, gO, gw),
	} {
		if err == nil {
			t.Errorf("a mismatched fused decode op returned no error")
		}
	}
}
