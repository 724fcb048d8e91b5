//go:build cuda

package cuda

import (
	"context"
	"fmt"
	"testing"

	"github.com/qwengo/qwengo/engine/cpu"
	"github.com/qwengo/qwengo/engine/data"
	"github.com/qwengo/qwengo/engine/devtrain"
	"github.com/qwengo/qwengo/engine/grad"
	"github.com/qwengo/qwengo/engine/internal/testmodel"
)

// The training step on the GPU against the same step on the CPU reference backend (engine/
// devtrain runs unchanged on both): loss and every parameter gradient, then weights after a few
// AdamW steps, on the tiny checkpoints (tied and untied), with and without recompute and the
// fused optimizer. Batches of ≥ 16 rows send the projections' backward to cuBLASLt (bf16
// operands), so the bounds are those of bf16 products; with trainSIMT the fp32 kernels must
// agree to 1e-4.

func tinyGrad(t *testing.T, name string) *grad.Model {
	t.Helper()
	return testmodel.Load(t, name, grad.Load)
}

// trainBatch is 3 rows of different lengths with masked prompts and padding (T = 24).
func trainBatch() *data.Batch {
	rows := [][]int{
		{1, 17, 300, 42, 5, 99, 256, 3, 77, 410, 12, 2, 8, 9, 10, 11, 12, 13, 14, 15},
		{1, 9, 8, 7, 500, 2},
		{3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14},
	}
	prompt := []int{4, 2, 6}
	const T = 24
	b := &data.Batch{B: len(rows), T: T, IDs: make([]int, len(rows)*T), Mask: make([]bool, len(rows)*T)}
	for r, ids := range rows {
		for j := 0; j < T && j < len(ids); j++ {
			b.IDs[r*T+j] = ids[j]
			if j >= prompt[r] {
				b.Mask[r*T+j] = true
				b.Targets++
			}
		}
	}
	return b
}

func TestDevtrainGPUvsCPU(t *testing.T) {
	g := openGPU(t)
	ctx := context.Background()
	for _, c := range []struct {
		model     string
		simt      bool
		recompute bool
		fused     bool
		gradBound float64
		grad      string // devtrain.Options.Grad
	}{
		{"tiny-tied", true, false, false, 1e-4, "fp32"},
		{"tiny-untied", true, true, false, 1e-4, "fp32"},
		{"tiny-tied", false, true, true, 5e-2, "fp32"},
		{"tiny-untied", false, false, false, 5e-2, "fp32"},
		// bf16 gradients: both sides round once a call, so a last-bit difference in the
		// float32 sums can move an element by one bf16 step (2^-8 of it).
		{"tiny-tied", true, true, true, 1e-2, "bf16"},
		{"tiny-untied", false, false, false, 5e-2, "bf16"},
	} {
		name := fmt.Sprintf("%s simt=%v recompute=%v fused=%v grad=%s", c.model, c.simt, c.recompute, c.fused, c.grad)
		t.Run(name, func(t *testing.T) {
			g.do(func() error { g.trainSIMT = c.simt; return nil })
			defer g.do(func() error { g.trainSIMT = false; return nil })
			opt := devtrain.DefaultOptions()
			opt.Master, opt.State, opt.StochasticRounding, opt.Grad = "fp32", "fp32", false, c.grad
			opt.Recompute, opt.FusedOptimizer, opt.ChunkRows = c.recompute, c.fused, 7
			if c.fused {
				opt.ClipNorm = 0
			}
			cm, err := devtrain.New(cpu.New(), tinyGrad(t, c.model), opt)
			if err != nil {
				t.Fatal(err)
			}
			defer cm.Close()
			gm, err := devtrain.New(g, tinyGrad(t, c.model), opt)
			if err != nil {
				t.Fatal(err)
			}
			defer gm.Close()
			b := trainBatch()
			want, wsum, wn, err := cm.Grads(ctx, b)
			if err != nil {
				t.Fatal(err)
			}
			got, gsum, gn, err := gm.Grads(ctx, b)
			if err != nil {
				t.Fatal(err)
			}
			// Loss: 1e-4 relative on the fp32 kernels; bf16 products move it by ~2.5e-4 (device run 8).
			lossBound := 1e-4
			if !c.simt {
				lossBound = 1e-3
			}
			if gn != wn || gsum/float64(gn)-wsum/float64(wn) > lossBound*wsum/float64(wn) || wsum/float64(wn)-gsum/float64(gn) > lossBound*wsum/float64(wn) {
				t.Errorf("loss %.6f over %d tokens, CPU %.6f over %d", gsum/float64(gn), gn, wsum/float64(wn), wn)
			}
			for i := range want {
				compareSlices(t, fmt.Sprintf("%s grad %d", name, i), got[i], want[i], c.gradBound)
			}
			for s := 1; s <= 3; s++ {
				cs, err := cm.Step(ctx, b, 1e-3)
				if err != nil {
					t.Fatal(err)
				}
				gs, err := gm.Step(ctx, b, 1e-3)
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("devtrain step %d: loss GPU %.6f CPU %.6f; phases %v", s, gs.Loss, cs.Loss, gs.Phases)
			}
			ce, err := cm.Export()
			if err != nil {
				t.Fatal(err)
			}
			ge, err := gm.Export()
			if err != nil {
				t.Fatal(err)
			}
			// AdamW moves a weight by about lr per step whatever the gradient's size, so where a
			// gradient is near zero the two sides' last-bit differences can flip its sign: weights
			// may differ by up to 2·lr·steps = 6e-3 absolute (1e-2 of max |w| here), however
			// close the gradients are.
			for i := range ce.Params {
				compareSlices(t, fmt.Sprintf("%s weights %s after 3 steps", name, ce.Params[i].Name), ge.Params[i].W, ce.Params[i].W, 1e-2)
			}
		})
	}
}
