//go:build cuda

package cuda

import (
	"fmt"
	"testing"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/cpu"
)

// withGEMV runs f with the streaming GEMV on (v2 = false) or off, restoring the setting.
func withGEMV(g *Backend, v2 bool, f func() error) error {
	return g.do(func() error {
		old := g.gemvV2
		g.gemvV2 = v2
		defer func() { g.gemvV2 = old }()
		return f()
	})
}

// TestGEMVStream checks the streaming NVFP4 GEMV against the CPU on shapes that exercise every
// K split, partial steps (K/32 not a multiple of 32), row counts not divisible by 4 and 1..4
// token rows, and against the older GEMV on the same inputs.
func TestGEMVStream(t *testing.T) {
	g := openGPU(t)
	c := cpu.New()
	const bound = 2e-5 // float32 sums in another order than the CPU's
	for i, s := range []struct{ T, K, N int }{
		{1, 256, 4}, {1, 2560, 9728}, {1, 9728, 2560}, {2, 2560, 4096}, {3, 4096, 2560}, {4, 9728, 1030},
		{1, 768, 7}, {1, 2816, 130}, {4, 256, 33}, {1, 25600, 64},
	} {
		name := fmt.Sprintf("gemv stream T=%d K=%d N=%d", s.T, s.K, s.N)
		t.Run(name, func(t *testing.T) {
			if !g.gemvStreamOK(s.T, s.K) && !g.gemvV2 {
				t.Fatalf("shape not taken by the streaming kernel")
			}
			cw, gw := weights(t, c, g, hostWeight(t, kindNVFP4, s.N, s.K, uint64(50+i)))
			cx, gx := pair(t, c, g, s.T, s.K, randn(s.T*s.K, uint64(500+i), 1))
			co, gs := pair(t, c, g, s.T, s.N, nil)
			_, g2 := pair(t, c, g, s.T, s.N, nil)
			if err := c.MatMul(co, cx, cw); err != nil {
				t.Fatal(err)
			}
			if err := withGEMV(g, false, func() error { return g.matmul(gs.(*Tensor), gx.(*Tensor), gw.(*Weight)) }); err != nil {
				t.Fatal(err)
			}
			if err := withGEMV(g, true, func() error { return g.matmul(g2.(*Tensor), gx.(*Tensor), gw.(*Weight)) }); err != nil {
				t.Fatal(err)
			}
			compare(t, name, c, g, co, gs, bound)
			compare(t, name+" (v2)", c, g, co, g2, bound)
		})
	}
}

// TestFiguresGEMV times the streaming and the older NVFP4 GEMV side by side on Qwen3-4B shapes.
func TestFiguresGEMV(t *testing.T) {
	benchEnabled(t)
	g := openGPU(t)
	for _, s := range []struct{ T, K, N int }{{1, 2560, 9728}, {1, 9728, 2560}, {1, 2560, 4096}, {1, 4096, 2560}, {1, 2560, 1024}, {4, 2560, 9728}} {
		const copies = 16
		var ws []*Weight
		for i := 0; i < copies; i++ {
			w, err := g.UploadWeight(backend.HostWeight{Name: fmt.Sprintf("gemv%d", i), NVFP4: randomNVFP4(s.N, s.K, uint64(i))})
			if err != nil {
				t.Fatal(err)
			}
			ws = append(ws, w.(*Weight))
		}
		x, _ := g.Alloc(backend.Activations, s.T, s.K)
		o, _ := g.Alloc(backend.Activations, s.T, s.N)
		if err := g.Upload(x, randn(s.T*s.K, 1, 1)); err != nil {
			t.Fatal(err)
		}
		for _, v2 := range []bool{true, false} {
			var ms float64
			err := withGEMV(g, v2, func() error {
				var err error
				ms, err = timeOnDevice(g, 20, func() error {
					for _, w := range ws {
						if err := g.matmul(o.(*Tensor), x.(*Tensor), w); err != nil {
							return err
						}
					}
					return nil
				})
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			name := "stream"
			if v2 {
				name = "v2"
			}
			t.Log(figure{fmt.Sprintf("gemv %s nvfp4 T=%d %d→%d", name, s.T, s.K, s.N),
				float64(ws[0].Bytes()) + float64(4*s.T*(s.K+s.N)), float64(2 * s.T * s.K * s.N), ms / copies})
		}
		g.Free(x)
		g.Free(o)
		for _, w := range ws {
			g.FreeWeight(w)
		}
	}
}
