//go:build cuda

package cuda

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/cpu"
	"github.com/qwengo/qwengo/engine/devtrain"
	"github.com/qwengo/qwengo/engine/tensor"
)

// TestBF16Store: ToBF16 into rows of a bf16 buffer and FromBF16 back give, bit for bit,
// engine/tensor's rounding (ties to even, NaN, infinities, subnormals), at row offsets that
// leave the addresses unaligned (odd widths) and over more elements than one grid covers; the
// buffer is accounted at 2 bytes an element; bad calls are refused.
func TestBF16Store(t *testing.T) {
	g := openGPU(t)
	special := []float32{0, float32(math.Copysign(0, -1)), 1 + 1.0/256, 1 + 3.0/256, 1e-40, -1e-39, 3.39e38,
		float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.NaN()), 65504, -2.5e-8}
	for _, c := range []struct{ rows, cols, row0, n int }{{5, 3, 1, 3}, {4, 7, 2, 2}, {3000, 2561, 7, 2990}} {
		name := fmt.Sprintf("[%d, %d] rows %d..%d", c.rows, c.cols, c.row0, c.row0+c.n)
		rng := rand.New(rand.NewPCG(uint64(c.cols), 1))
		vals := make([]float32, c.n*c.cols)
		for i := range vals {
			vals[i] = float32(rng.NormFloat64() * math.Pow(10, float64(rng.IntN(9)-4)))
		}
		copy(vals, special)
		before := g.Memory().InUse[backend.Activations]
		buf, err := g.AllocBF16(backend.Activations, c.rows, c.cols)
		if err != nil {
			t.Fatal(err)
		}
		if got := g.Memory().InUse[backend.Activations] - before; got != int64(2*c.rows*c.cols) {
			t.Errorf("%s: accounted %d bytes, want %d", name, got, 2*c.rows*c.cols)
		}
		src, _ := g.Alloc(backend.Activations, c.n, c.cols)
		dst, _ := g.Alloc(backend.Activations, c.n, c.cols)
		if err := g.Upload(src, vals); err != nil {
			t.Fatal(err)
		}
		if err := g.ToBF16(buf, c.row0, src); err != nil {
			t.Fatal(err)
		}
		if err := g.FromBF16(dst, buf, c.row0); err != nil {
			t.Fatal(err)
		}
		got, err := g.Download(dst, nil)
		if err != nil {
			t.Fatal(err)
		}
		for i, v := range vals {
			want := tensor.BF16ToF32(tensor.F32ToBF16(v))
			if math.Float32bits(got[i]) != math.Float32bits(want) && !(math.IsNaN(float64(got[i])) && math.IsNaN(float64(want))) {
				t.Fatalf("%s: element %d (%v): got %v, want %v", name, i, v, got[i], want)
			}
		}
		// The rows before row0 are untouched (zero).
		if c.row0 > 0 {
			head, _ := g.Alloc(backend.Activations, c.row0, c.cols)
			if err := g.FromBF16(head, buf, 0); err != nil {
				t.Fatal(err)
			}
			h, _ := g.Download(head, nil)
			for i, v := range h {
				if v != 0 {
					t.Fatalf("%s: row %d element %d written: %v", name, i/c.cols, i%c.cols, v)
				}
			}
			g.Free(head)
		}
		if err := g.ToBF16(buf, c.rows-c.n+1, src); err == nil || !strings.Contains(err.Error(), "bf16 buffer") {
			t.Errorf("%s: rows past the end: %v", name, err)
		}
		g.Free(src)
		g.Free(dst)
		g.FreeBF16(buf)
		g.FreeBF16(buf)
		if err := g.FromBF16(dst, buf, 0); err == nil {
			t.Errorf("%s: use after free accepted", name)
		}
		if got := g.Memory().InUse[backend.Activations]; got != before {
			t.Errorf("%s: %d bytes of activations left", name, got-before)
		}
	}
	foreign, err := cpu.New().AllocBF16(backend.Activations, 1, 4)
	if err != nil {
		t.Fatal(err)
	}
	x, _ := g.Alloc(backend.Activations, 1, 4)
	defer g.Free(x)
	if err := g.ToBF16(foreign, 0, x); err == nil || !strings.Contains(err.Error(), "not a CUDA bf16 buffer") {
		t.Errorf("a foreign buffer: %v", err)
	}
}

// TestDevtrainSpansBF16GPUvsCPU: the training step with layers run in spans of one sequence
// and bf16 layer inputs (the settings that bring the S=2048 × 8 step under 30 GB) matches the
// same step on the CPU reference within the bounds of TestDevtrainGPUvsCPU's bf16 products.
func TestDevtrainSpansBF16GPUvsCPU(t *testing.T) {
	g := openGPU(t)
	ctx := context.Background()
	b := trainBatch()
	for _, model := range []string{"tiny-tied", "tiny-untied"} {
		opt := devtrain.DefaultOptions()
		opt.Master, opt.State, opt.StochasticRounding = "fp32", "fp32", false
		opt.Recompute, opt.FusedOptimizer, opt.ClipNorm, opt.ChunkRows = true, true, 0, 7
		opt.LayerChunkRows, opt.CheckpointBF16 = 24, true
		cm, err := devtrain.New(cpu.New(), tinyGrad(t, model), opt)
		if err != nil {
			t.Fatal(err)
		}
		defer cm.Close()
		gm, err := devtrain.New(g, tinyGrad(t, model), opt)
		if err != nil {
			t.Fatal(err)
		}
		defer gm.Close()
		want, wsum, wn, err := cm.Grads(ctx, b)
		if err != nil {
			t.Fatal(err)
		}
		got, gsum, gn, err := gm.Grads(ctx, b)
		if err != nil {
			t.Fatal(err)
		}
		if gn != wn || math.Abs(gsum/float64(gn)-wsum/float64(wn)) > 1e-3*wsum/float64(wn) {
			t.Errorf("%s: loss %.6f over %d tokens, CPU %.6f over %d", model, gsum/float64(gn), gn, wsum/float64(wn), wn)
		}
		for i := range want {
			compareSlices(t, fmt.Sprintf("%s spans+bf16 grad %d", model, i), got[i], want[i], 5e-2)
		}
		gs, err := gm.Step(ctx, b, 1e-3)
		if err != nil {
			t.Fatal(err)
		}
		var plan int64
		for _, it := range gm.PeakPlan(b.B, 20) { // T' = 20: the longest row's last target
			plan += it.Bytes
		}
		ms := gm.Memory()
		t.Logf("%s: step loss %.6f; peak %d = plan %d + backend workspace %d; %v", model, gs.Loss, ms.Peak, plan, ms.Peak-plan, ms)
		if ms.Peak < plan {
			t.Errorf("%s: measured peak %d below devtrain's plan %d", model, ms.Peak, plan)
		}
	}
}
