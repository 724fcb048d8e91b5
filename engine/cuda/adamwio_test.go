//go:build cuda

package cuda

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/cpu"
)

// TestAdamWStateIOGPU: a state trained on the CPU, written to the GPU and read back is the same
// bytes (the layouts agree); a GPU state read out and written into a fresh GPU state continues
// exactly as the original does (checkpoint and resume), for every format, one row and matrices.
func TestAdamWStateIOGPU(t *testing.T) {
	g := openGPU(t)
	c := cpu.New()
	for _, format := range []string{"fp32", "int8", "4bit"} {
		for _, sh := range [][2]int{{1, 300}, {6, 100}, {129, 65}} {
			rows, cols := sh[0], sh[1]
			name := fmt.Sprintf("%s %v", format, sh)
			hw := hostWeight(t, kindBF16, rows, cols, 9)
			cw, gw := weights(t, c, g, hw)
			cs, _ := c.NewAdamWState(format, rows, cols)
			gs, err := g.NewAdamWState(format, rows, cols)
			if err != nil {
				t.Fatal(err)
			}
			h := func(step int) backend.AdamWHyper {
				return backend.AdamWHyper{LR: 1e-2, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.1, Step: step, GradScale: 1}
			}
			grads := make([][]float32, 4)
			for i := range grads {
				grads[i] = randn(rows*cols, uint64(40+i), 0.5)
			}
			for step := 1; step <= 2; step++ {
				cg, gg := pair(t, c, g, rows, cols, grads[step-1])
				if err := errors.Join(c.AdamW(cw, cg, cs, h(step)), g.AdamW(gw, gg, gs, h(step))); err != nil {
					t.Fatal(name, err)
				}
			}
			// CPU bytes through the GPU state and back.
			fromCPU, err := c.ReadAdamWState(cs)
			if err != nil {
				t.Fatal(err)
			}
			probe, _ := g.NewAdamWState(format, rows, cols)
			if err := g.WriteAdamWState(probe, fromCPU); err != nil {
				t.Fatal(name, err)
			}
			back, err := g.ReadAdamWState(probe)
			if err != nil {
				t.Fatal(name, err)
			}
			if !slices.Equal(back.M, fromCPU.M) || !slices.Equal(back.V, fromCPU.V) || !slices.Equal(back.MScale, fromCPU.MScale) || !slices.Equal(back.VScale, fromCPU.VScale) {
				t.Fatalf("%s: CPU state through the GPU came back different", name)
			}
			g.FreeAdamWState(probe)
			// GPU checkpoint and resume.
			saved, err := g.ReadAdamWState(gs)
			if err != nil {
				t.Fatal(name, err)
			}
			now, err := g.DownloadWeight(gw)
			if err != nil {
				t.Fatal(err)
			}
			gw2, err := g.UploadWeight(now)
			if err != nil {
				t.Fatal(err)
			}
			gs2, _ := g.NewAdamWState(format, rows, cols)
			if err := g.WriteAdamWState(gs2, saved); err != nil {
				t.Fatal(name, err)
			}
			for step := 3; step <= 4; step++ {
				_, gg := pair(t, c, g, rows, cols, grads[step-1])
				if err := errors.Join(g.AdamW(gw, gg, gs, h(step)), g.AdamW(gw2, gg, gs2, h(step))); err != nil {
					t.Fatal(name, err)
				}
			}
			a, _ := g.ReadAdamWState(gs)
			b, _ := g.ReadAdamWState(gs2)
			w1, _ := g.DownloadWeight(gw)
			w2, _ := g.DownloadWeight(gw2)
			v1, _ := w1.Dense.Float32s(nil)
			v2, _ := w2.Dense.Float32s(nil)
			if !slices.Equal(v1, v2) || !slices.Equal(a.M, b.M) || !slices.Equal(a.V, b.V) || !slices.Equal(a.MScale, b.MScale) || !slices.Equal(a.VScale, b.VScale) {
				t.Fatalf("%s: the resumed state did not continue as the original", name)
			}
			t.Logf("%s: state round trips CPU→GPU and GPU→GPU exact", name)
			g.FreeAdamWState(gs)
			g.FreeAdamWState(gs2)
			g.FreeWeight(gw2)
		}
	}
}
