package devtrain

import (
	"context"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/cpu"
	"github.com/qwengo/qwengo/engine/data"
)

// chunkBatch is three sequences padded to T = 12, the last one ending early, so spans of two
// sequences leave a shorter last span and the trimmed T' (12) is what spans divide.
func chunkBatch() *data.Batch {
	rows := [][]int{
		{1, 17, 300, 42, 5, 99, 256, 3, 77, 410, 12, 2},
		{3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14},
		{1, 9, 8, 7, 500, 2},
	}
	const T = 12
	b := &data.Batch{B: len(rows), T: T, IDs: make([]int, len(rows)*T), Mask: make([]bool, len(rows)*T)}
	for r, ids := range rows {
		for j, id := range ids {
			b.IDs[r*T+j] = id
			if j >= 2 {
				b.Mask[r*T+j] = true
				b.Targets++
			}
		}
	}
	return b
}

// TestLayerChunksBitIdentical: running each layer span by span (one sequence, two, every
// row) gives the same loss, gradients and, after steps, weights bit for bit as all rows at
// once — on the CPU reference every op is row-wise or sums its rows in order — recompute
// fused and unfused (clipping on), and without recompute, where only Loss uses spans.
func TestLayerChunksBitIdentical(t *testing.T) {
	ctx := context.Background()
	b := chunkBatch()
	for _, name := range []string{"tiny-tied", "tiny-untied"} {
		gm := tiny(t, name)
		for _, mode := range []struct{ recompute, fused bool }{{true, true}, {true, false}, {false, false}} {
			var refG [][]float32
			var refW [][]float32
			var refSum, refLoss float64
			var refLosses []float64
			for _, chunk := range []int{0, 1, 12, 24, 36, 1000} {
				opt := DefaultOptions()
				// Spans add into float32 gradients in the one-pass order; bf16 gradients are
				// rounded once a span, so only float32 ones are bit-identical across LayerChunkRows.
				opt.Grad = "fp32"
				opt.Recompute, opt.FusedOptimizer, opt.ChunkRows, opt.LayerChunkRows = mode.recompute, mode.fused, 7, chunk
				if mode.fused {
					opt.ClipNorm = 0
				}
				what := fmt.Sprintf("%s recompute=%v fused=%v LayerChunkRows=%d", name, mode.recompute, mode.fused, chunk)
				m := newModel(t, gm, opt)
				g, sum, _, err := m.Grads(ctx, b)
				if err != nil {
					t.Fatalf("%s: %v", what, err)
				}
				ls, _, err := m.Loss(ctx, b)
				if err != nil {
					t.Fatalf("%s: %v", what, err)
				}
				sts := runSteps(t, m, b, 2, 1e-3)
				w := exportAll(t, m)
				if refG == nil {
					refG, refW, refSum, refLoss = g, w, sum, ls
					for _, s := range sts {
						refLosses = append(refLosses, s.Loss)
					}
					continue
				}
				if sum != refSum || ls != refLoss {
					t.Fatalf("%s: Grads' loss %v, Loss %v; all rows at once %v, %v", what, sum, ls, refSum, refLoss)
				}
				for i, s := range sts {
					if s.Loss != refLosses[i] {
						t.Fatalf("%s: step %d loss %v, all rows at once %v", what, i+1, s.Loss, refLosses[i])
					}
				}
				sameBits(t, what+" gradients", g, refG)
				sameBits(t, what+" weights", w, refW)
			}
		}
	}
}

// TestPeakPlan: on the CPU reference (no workspace of its own) a step's measured peak, in
// total and per category, is PeakPlan's sum, in every mode; spans lower it.
func TestPeakPlan(t *testing.T) {
	gm := tiny(t, "tiny-untied")
	const B, T = 4, 24
	b := &data.Batch{B: B, T: T, IDs: make([]int, B*T), Mask: make([]bool, B*T)}
	for i := range b.IDs {
		b.IDs[i] = (i*37 + 11) % 512
		b.Mask[i] = i%T != 0
	}
	peaks := map[string]int64{}
	for _, c := range []struct {
		name             string
		recompute, fused bool
		chunk, chunkRows int
	}{
		{"keep all", false, false, 0, 0},
		{"recompute", true, false, 0, 0},
		{"recompute fused", true, true, 0, 0},
		{"recompute fused, spans of one sequence", true, true, T, 0},
		{"recompute fused, spans of two sequences, logits of 5 rows", true, true, 2*T + 5, 5},
	} {
		opt := DefaultOptions()
		opt.Recompute, opt.FusedOptimizer, opt.LayerChunkRows, opt.ChunkRows = c.recompute, c.fused, c.chunk, c.chunkRows
		if c.fused {
			opt.ClipNorm = 0
		}
		m := newModel(t, gm, opt)
		runSteps(t, m, b, 1, 1e-4)
		got := m.Memory()
		var sum int64
		var by [backend.NumCategories]int64
		for _, it := range m.PeakPlan(B, T) {
			sum += it.Bytes
			by[it.Category] += it.Bytes
			t.Logf("%s: %-70s %-11s %d", c.name, it.What, it.Category, it.Bytes)
		}
		if got.Peak != sum || got.PeakBy != by {
			t.Errorf("%s: measured peak %d %v, plan %d %v", c.name, got.Peak, got.PeakBy, sum, by)
		}
		peaks[c.name] = got.Peak
	}
	if !(peaks["recompute fused, spans of one sequence"] < peaks["recompute fused"] && peaks["recompute fused"] < peaks["recompute"] && peaks["recompute"] < peaks["keep all"]) {
		t.Errorf("peaks do not fall with recompute, fusion and spans: %v", peaks)
	}
	if p := (&Model{closed: true}).PeakPlan(B, T); p != nil {
		t.Errorf("closed model's plan %v", p)
	}
}

// noBF16 is a training backend without backend.BF16Store.
type noBF16 struct{ backend.Training }

// TestCheckpointBF16: with bf16 layer inputs the loss stays within 2e-3 relative of fp32
// inputs and every gradient within 3e-2 (relative to its largest element); Grads, Loss and
// Step agree on the loss (every forward rounds the same way), spans change nothing, the
// step's peak is PeakPlan's and lower than with fp32 inputs, and a few steps train as well.
func TestCheckpointBF16(t *testing.T) {
	ctx := context.Background()
	b := chunkBatch()
	for _, name := range []string{"tiny-tied", "tiny-untied"} {
		gm := tiny(t, name)
		opt := fp32Options()
		opt.Recompute, opt.FusedOptimizer, opt.ClipNorm, opt.ChunkRows = true, true, 0, 7
		ref := newModel(t, gm, opt)
		wantG, wantSum, n, err := ref.Grads(ctx, b)
		if err != nil {
			t.Fatal(err)
		}
		var firstG [][]float32
		for _, chunk := range []int{0, 12, 24} {
			opt.CheckpointBF16, opt.LayerChunkRows = true, chunk
			m := newModel(t, gm, opt)
			g, sum, gn, err := m.Grads(ctx, b)
			if err != nil {
				t.Fatal(err)
			}
			ls, ln, err := m.Loss(ctx, b)
			if err != nil || ln != gn || gn != n || ls != sum {
				t.Fatalf("%s: Loss %v over %d (%v), Grads' %v over %d", name, ls, ln, err, sum, gn)
			}
			if firstG == nil {
				firstG = g
				rel := math.Abs(sum-wantSum) / math.Abs(wantSum)
				worst, worstName := 0.0, ""
				for i, p := range gm.Params {
					if e := relErr(g[i], wantG[i]); e > worst {
						worst, worstName = e, p.Name
					}
				}
				t.Logf("%s: bf16 inputs move the loss by %.2g relative; worst gradient %.2g (%s)", name, rel, worst, worstName)
				if rel == 0 || rel > 2e-3 {
					t.Errorf("%s: loss %v with bf16 inputs, %v with fp32 (%.2g relative)", name, sum, wantSum, rel)
				}
				if worst > 3e-2 {
					t.Errorf("%s: gradient %s relative error %.3g > 3e-2", name, worstName, worst)
				}
			} else {
				sameBits(t, fmt.Sprintf("%s LayerChunkRows=%d gradients", name, chunk), g, firstG)
			}
			st := runSteps(t, m, b, 1, 1e-3)[0]
			if st.Loss != sum/float64(n) {
				t.Errorf("%s: Step's loss %v, Grads' %v", name, st.Loss, sum/float64(n))
			}
		}
	}

	gm := tiny(t, "tiny-untied")
	opt := DefaultOptions()
	opt.Recompute, opt.FusedOptimizer, opt.ClipNorm, opt.LayerChunkRows = true, true, 0, 12
	fp := newModel(t, gm, opt)
	opt.CheckpointBF16 = true
	bf := newModel(t, gm, opt)
	for _, m := range []*Model{fp, bf} {
		runSteps(t, m, b, 1, 1e-4)
		var sum int64
		for _, it := range m.PeakPlan(3, 12) {
			sum += it.Bytes
		}
		if got := m.Memory().Peak; got != sum {
			t.Errorf("CheckpointBF16=%v: measured peak %d, plan %d", m.Options().CheckpointBF16, got, sum)
		}
	}
	if bf.Memory().Peak >= fp.Memory().Peak {
		t.Errorf("peak with bf16 inputs %d ≥ with fp32 %d", bf.Memory().Peak, fp.Memory().Peak)
	}
	sts := runSteps(t, bf, b, 8, 1e-2)
	if !(sts[7].Loss < 0.9*sts[0].Loss) {
		t.Errorf("bf16 inputs: loss %v after 8 steps from %v", sts[7].Loss, sts[0].Loss)
	}

	for _, c := range []struct {
		b    backend.Training
		opt  func(*Options)
		want string
	}{
		{cpu.New(), func(o *Options) { o.Recompute = false }, "turn Recompute on"},
		{noBF16{cpu.New()}, func(*Options) {}, "BF16Store"},
	} {
		o := DefaultOptions()
		o.Recompute, o.CheckpointBF16 = true, true
		c.opt(&o)
		if _, err := New(c.b, gm, o); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("error %v, want one naming %q", err, c.want)
		}
	}
}
