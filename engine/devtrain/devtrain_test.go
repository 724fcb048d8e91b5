package devtrain

import (
	"context"
	"errors"
	"math"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/cpu"
	"github.com/qwengo/qwengo/engine/data"
	"github.com/qwengo/qwengo/engine/grad"
	"github.com/qwengo/qwengo/engine/internal/testmodel"
	"github.com/qwengo/qwengo/engine/optim"
	"github.com/qwengo/qwengo/engine/tensor"
	"github.com/qwengo/qwengo/engine/train"
)

func tiny(t testing.TB, name string) *grad.Model {
	t.Helper()
	return testmodel.Load(t, name, grad.Load)
}

// paddedBatch is two rows of different lengths (prompts masked) padded to T = 16, so the
// second row ends early and both carry trailing padding past their last target.
func paddedBatch() *data.Batch {
	rows := [][]int{
		{1, 17, 300, 42, 5, 99, 256, 3, 77, 410, 12, 2},
		{1, 9, 8, 7, 500, 2},
	}
	prompt := []int{4, 2}
	T := 16
	b := &data.Batch{B: len(rows), T: T, IDs: make([]int, len(rows)*T), Mask: make([]bool, len(rows)*T)}
	for r, ids := range rows {
		for j := 0; j < T; j++ {
			b.IDs[r*T+j] = 0 // pad
			if j < len(ids) {
				b.IDs[r*T+j] = ids[j]
				if j >= prompt[r] {
					b.Mask[r*T+j] = true
					b.Targets++
				}
			}
		}
	}
	return b
}

// relErr is max|a−b| / max|b|.
func relErr(a, b []float32) float64 {
	var num, den float64
	for i := range b {
		num = math.Max(num, math.Abs(float64(a[i])-float64(b[i])))
		den = math.Max(den, math.Abs(float64(b[i])))
	}
	if den == 0 {
		return num
	}
	return num / den
}

func newModel(t testing.TB, gm *grad.Model, opt Options) *Model {
	t.Helper()
	m, err := New(cpu.New(), gm, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func fp32Options() Options {
	o := DefaultOptions()
	o.Master, o.State, o.Grad, o.StochasticRounding = "fp32", "fp32", "fp32", false
	return o
}

// TestGradsMatchReference compares the loss and every gradient with engine/grad's host
// float32 reference, tied and untied, with and without recompute, logits in chunks of 5 rows.
func TestGradsMatchReference(t *testing.T) {
	ctx := context.Background()
	for _, name := range []string{"tiny-tied", "tiny-untied"} {
		gm := tiny(t, name)
		b := paddedBatch()
		wantSum, wantN, want, err := gm.Grad(ctx, b, train.CrossEntropy{})
		if err != nil {
			t.Fatal(err)
		}
		for _, recompute := range []bool{false, true} {
			opt := fp32Options()
			opt.Recompute, opt.ChunkRows = recompute, 5
			m := newModel(t, gm, opt)
			got, sum, n, err := m.Grads(ctx, b)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if n != wantN || math.Abs(sum-wantSum) > 1e-5*math.Abs(wantSum) {
				t.Fatalf("%s recompute=%v: loss %.7f over %d, reference %.7f over %d", name, recompute, sum, n, wantSum, wantN)
			}
			worst, worstName := 0.0, ""
			for i, p := range gm.Params {
				if e := relErr(got[i], want[i]); e > worst {
					worst, worstName = e, p.Name
				}
			}
			t.Logf("%s recompute=%v: loss %.6f (reference %.6f); worst gradient relative error %.2g (%s)", name, recompute, sum/float64(n), wantSum/float64(wantN), worst, worstName)
			if worst > 1e-5 {
				t.Errorf("%s recompute=%v: gradient %s relative error %.3g > 1e-5", name, recompute, worstName, worst)
			}
			ls, ln, err := m.Loss(ctx, b)
			if err != nil || ln != n || ls != sum {
				t.Errorf("%s: Loss = %v over %d (%v), Grads' loss %v over %d", name, ls, ln, err, sum, n)
			}
		}
	}
}

// TestLabelSmoothing checks the smoothed loss and its gradients against engine/grad.
func TestLabelSmoothing(t *testing.T) {
	gm := tiny(t, "tiny-untied")
	b := paddedBatch()
	wantSum, _, want, err := gm.Grad(context.Background(), b, train.CrossEntropy{LabelSmoothing: 0.1})
	if err != nil {
		t.Fatal(err)
	}
	opt := fp32Options()
	opt.LabelSmoothing = 0.1
	got, sum, _, err := newModel(t, gm, opt).Grads(context.Background(), b)
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(sum-wantSum) > 1e-5*math.Abs(wantSum) {
		t.Fatalf("smoothed loss %v, reference %v", sum, wantSum)
	}
	for i, p := range gm.Params {
		if e := relErr(got[i], want[i]); e > 1e-5 {
			t.Errorf("%s: relative error %.3g", p.Name, e)
		}
	}
}

func exportAll(t testing.TB, m *Model) [][]float32 {
	t.Helper()
	gm, err := m.Export()
	if err != nil {
		t.Fatal(err)
	}
	out := make([][]float32, len(gm.Params))
	for i, p := range gm.Params {
		out[i] = p.W
	}
	return out
}

func sameBits(t *testing.T, what string, a, b [][]float32) {
	t.Helper()
	for i := range a {
		for j := range a[i] {
			if math.Float32bits(a[i][j]) != math.Float32bits(b[i][j]) {
				t.Fatalf("%s: parameter %d element %d: %v vs %v", what, i, j, a[i][j], b[i][j])
			}
		}
	}
}

// train runs steps steps on b and returns the losses.
func runSteps(t testing.TB, m *Model, b *data.Batch, steps int, lr float64) []StepStats {
	t.Helper()
	var out []StepStats
	for s := 0; s < steps; s++ {
		st, err := m.Step(context.Background(), b, lr)
		if err != nil {
			t.Fatalf("step %d: %v", s+1, err)
		}
		out = append(out, st)
	}
	return out
}

// TestRecomputeAndFusedBitIdentical: recompute on/off and fused/unfused (ClipNorm 0) give
// the same losses and the same master weights bit for bit (bf16 masters with stochastic
// rounding, int8 moments: the production setting).
func TestRecomputeAndFusedBitIdentical(t *testing.T) {
	for _, name := range []string{"tiny-tied", "tiny-untied"} {
		gm := tiny(t, name)
		b := paddedBatch()
		var ref [][]float32
		var refLoss []float64
		for _, c := range []struct{ recompute, fused bool }{{false, false}, {true, false}, {false, true}, {true, true}} {
			opt := DefaultOptions()
			opt.ClipNorm, opt.Recompute, opt.FusedOptimizer, opt.ChunkRows = 0, c.recompute, c.fused, 7
			m := newModel(t, gm, opt)
			sts := runSteps(t, m, b, 3, 1e-3)
			w := exportAll(t, m)
			if ref == nil {
				ref = w
				for _, s := range sts {
					refLoss = append(refLoss, s.Loss)
				}
				if sts[2].Step != 3 || sts[2].Loss >= sts[0].Loss {
					t.Fatalf("%s: steps %+v", name, sts)
				}
				continue
			}
			for i, s := range sts {
				if s.Loss != refLoss[i] {
					t.Fatalf("%s recompute=%v fused=%v: step %d loss %v, reference %v", name, c.recompute, c.fused, i+1, s.Loss, refLoss[i])
				}
			}
			sameBits(t, name+" weights", w, ref)
			names := ""
			for _, p := range sts[0].Phases {
				names += p.Name + " "
			}
			t.Logf("%s recompute=%v fused=%v: phases %s; grad norms %.4g %.4g %.4g", name, c.recompute, c.fused, names, sts[0].GradNorm, sts[1].GradNorm, sts[2].GradNorm)
		}
	}
}

// TestStepsMatchHostTraining runs 5 steps and compares the masters with engine/optim.AdamW
// over engine/grad's gradients (fp32 masters; fp32 and int8 moments; clipping and weight
// decay on). AdamW's first steps move every weight by about ±lr whatever its gradient's size,
// so with a tiny ε a gradient near zero whose last bits differ between the two float32
// computations moves its weight by up to 2·lr: the comparison uses ε = 1e-4, where the update
// is a smooth function of the gradient. TestOptimizerMatchesOptim checks the plumbing
// with production ε bit for bit.
func TestStepsMatchHostTraining(t *testing.T) {
	ctx := context.Background()
	for _, state := range []string{"fp32", "int8"} {
		for _, name := range []string{"tiny-tied", "tiny-untied"} {
			gm := tiny(t, name)
			b := paddedBatch()
			opt := fp32Options()
			opt.State, opt.ClipNorm, opt.WeightDecay, opt.Eps = state, 5, 0.1, 1e-4
			m := newModel(t, gm, opt)

			sf, _ := optim.ParseStateFormat(state)
			ocfg := optim.Config{Beta1: opt.Beta1, Beta2: opt.Beta2, Eps: opt.Eps, WeightDecay: opt.WeightDecay, State: sf, Master: optim.MasterFP32, ClipNorm: opt.ClipNorm}
			ref, err := optim.NewAdamW(ocfg, gm.Specs())
			if err != nil {
				t.Fatal(err)
			}
			lr := 2e-3
			clipped := 0
			for s := 1; s <= 5; s++ {
				sum, n, grads, err := gm.Grad(ctx, b, train.CrossEntropy{})
				if err != nil {
					t.Fatal(err)
				}
				rst, err := ref.Step(grads, lr)
				if err != nil {
					t.Fatal(err)
				}
				for i, p := range gm.Params {
					p.W = ref.Weights(i, p.W)
				}
				st, err := m.Step(ctx, b, lr)
				if err != nil {
					t.Fatal(err)
				}
				if st.Step != s || st.Skipped || st.Clipped != rst.Clipped || math.Abs(st.Loss-sum/float64(n)) > 1e-5*math.Abs(st.Loss) ||
					math.Abs(st.GradNorm-rst.GradNorm) > 1e-5*rst.GradNorm {
					t.Fatalf("%s/%s step %d: %+v; reference loss %v, norm %v clipped %v", state, name, s, st, sum/float64(n), rst.GradNorm, rst.Clipped)
				}
				if st.Clipped {
					clipped++
				}
			}
			got := exportAll(t, m)
			worst, worstName := 0.0, ""
			for i, p := range gm.Params {
				if e := relErr(got[i], p.W); e > worst {
					worst, worstName = e, p.Name
				}
			}
			// int8 moments are a step function of the gradient: where the two float32 gradients
			// round one moment code differently, that weight moves by a code's worth. Such
			// weights must be rare; every other must agree to 1e-5.
			off, total := 0, 0
			for i, p := range gm.Params {
				var mx float64
				for _, x := range p.W {
					mx = math.Max(mx, math.Abs(float64(x)))
				}
				for j, x := range p.W {
					total++
					if math.Abs(float64(got[i][j])-float64(x)) > 1e-5*mx {
						off++
					}
				}
			}
			t.Logf("%s/%s: 5 steps (%d clipped), worst master relative error %.2g (%s), %d of %d weights beyond 1e-5", state, name, clipped, worst, worstName, off, total)
			if bound := map[string]float64{"fp32": 1e-5, "int8": 1e-3}[state]; worst > bound {
				t.Errorf("%s/%s: master %s relative error %.3g > %g", state, name, worstName, worst, bound)
			}
			if state == "fp32" && off > 0 || off > total/200 {
				t.Errorf("%s/%s: %d of %d weights differ by more than 1e-5 of their tensor's largest", state, name, off, total)
			}
			if clipped == 0 || clipped == 5 {
				t.Errorf("%s/%s: %d of 5 steps clipped: the test should see both", state, name, clipped)
			}
		}
	}
}

// TestOptimizerMatchesOptim feeds engine/optim.AdamW the model's own gradients (Grads) and
// checks that Step's update equals it bit for bit over 5 steps: hyper-parameters, clipping
// folded into GradScale, bias correction, no decay on norms, stochastic rounding streams.
// Norms are f32 masters here while engine/optim keeps every parameter in one precision, so
// a second fp32 engine/optim supplies the norms of the bf16 case.
func TestOptimizerMatchesOptim(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct{ master, state string }{{"fp32", "fp32"}, {"fp32", "int8"}, {"bf16", "int8"}, {"bf16", "fp32"},
		{"fp32", "4bit"}, {"bf16", "4bit"}} {
		gm := tiny(t, "tiny-untied")
		b := paddedBatch()
		opt := DefaultOptions()
		opt.Master, opt.State, opt.ClipNorm, opt.WeightDecay, opt.Seed = c.master, c.state, 9, 0.1, 42
		m := newModel(t, gm, opt)
		sf, _ := optim.ParseStateFormat(c.state)
		ocfg := optim.Config{Beta1: opt.Beta1, Beta2: opt.Beta2, Eps: opt.Eps, WeightDecay: opt.WeightDecay, State: sf,
			ClipNorm: opt.ClipNorm, StochasticRounding: true, Seed: opt.Seed}
		init := exportAll(t, m)
		specs := gm.Specs()
		for i := range specs {
			specs[i].Init = init[i]
		}
		ocfg.Master = optim.MasterFP32
		ref32, err := optim.NewAdamW(ocfg, specs)
		if err != nil {
			t.Fatal(err)
		}
		ref := ref32
		if c.master == "bf16" {
			ocfg.Master = optim.MasterBF16
			if ref, err = optim.NewAdamW(ocfg, specs); err != nil {
				t.Fatal(err)
			}
		}
		clipped := 0
		for s := 1; s <= 5; s++ {
			grads, _, _, err := m.Grads(ctx, b)
			if err != nil {
				t.Fatal(err)
			}
			rst, err := ref.Step(grads, 1e-3)
			if err != nil {
				t.Fatal(err)
			}
			if ref != ref32 {
				if _, err := ref32.Step(grads, 1e-3); err != nil {
					t.Fatal(err)
				}
			}
			st, err := m.Step(ctx, b, 1e-3)
			if err != nil {
				t.Fatal(err)
			}
			// the norm is summed per tensor here, over all values at once there: last bits differ
			if st.Clipped != rst.Clipped || math.Abs(st.GradNorm-rst.GradNorm) > 1e-12*rst.GradNorm {
				t.Fatalf("%v step %d: norm %v clipped %v; engine/optim %v %v", c, s, st.GradNorm, st.Clipped, rst.GradNorm, rst.Clipped)
			}
			if st.Clipped {
				clipped++
			}
			got := exportAll(t, m)
			want := make([][]float32, len(got))
			for i, p := range gm.Params {
				if p.Rows == 1 {
					want[i] = ref32.Weights(i, nil)
				} else {
					want[i] = ref.Weights(i, nil)
				}
			}
			sameBits(t, c.master+"/"+c.state, got, want)
		}
		if clipped == 0 || clipped == 5 {
			t.Errorf("%v: %d of 5 steps clipped: the test should see both", c, clipped)
		}
	}
}

// TestFineTuneLossFalls trains a prompt→answer pair and checks that the loss falls.
func TestFineTuneLossFalls(t *testing.T) {
	gm := tiny(t, "tiny-tied")
	ids := []int{10, 20, 30, 40, 7, 77, 177, 2}
	mask := []bool{false, false, false, false, true, true, true, true}
	b := data.MakeBatch([]*data.Sample{{IDs: ids, Mask: mask}, {IDs: ids[:6], Mask: mask[:6]}}, 0)
	opt := DefaultOptions()
	opt.Recompute, opt.FusedOptimizer, opt.ClipNorm = true, true, 0
	m := newModel(t, gm, opt)
	sts := runSteps(t, m, b, 30, 3e-3)
	first, last := sts[0].Loss, sts[len(sts)-1].Loss
	t.Logf("loss %.4f → %.4f over %d steps", first, last, len(sts))
	if !(last < 0.2*first) {
		t.Fatalf("loss %.4f → %.4f: did not fall below a fifth", first, last)
	}
	after, err := m.Export()
	if err != nil {
		t.Fatal(err)
	}
	s, n, err := after.LossOnly(context.Background(), b, train.CrossEntropy{})
	if err != nil || math.Abs(s/float64(n)-last) > 0.5*first {
		t.Fatalf("exported model's loss %v (%v)", s/float64(n), err)
	}
}

// TestRecomputeLowersPeak: the step's peak memory is lower with recompute (the model and its
// optimizer state are the same).
func TestRecomputeLowersPeak(t *testing.T) {
	gm := tiny(t, "tiny-tied")
	T := 96
	b := &data.Batch{B: 2, T: T, IDs: make([]int, 2*T), Mask: make([]bool, 2*T)}
	for i := range b.IDs {
		b.IDs[i] = (i*37 + 11) % 512
		b.Mask[i] = i%T != 0
	}
	var peaks [2]int64
	for k, recompute := range []bool{false, true} {
		opt := DefaultOptions()
		opt.Recompute = recompute
		m := newModel(t, gm, opt)
		st := runSteps(t, m, b, 1, 1e-4)[0]
		peaks[k] = m.Memory().Peak
		if got := st.Phases[len(st.Phases)-1].Peak; got != peaks[k] {
			t.Fatalf("last phase peak %d, Memory().Peak %d", got, peaks[k])
		}
		if live := m.Memory().InUse; live[2] != 0 {
			t.Fatalf("recompute=%v: %d bytes of activations left after the step", recompute, live[2])
		}
		t.Logf("recompute=%v: %v", recompute, m.Memory())
	}
	if peaks[1] >= peaks[0] {
		t.Fatalf("peak with recompute %d ≥ without %d", peaks[1], peaks[0])
	}
}

// countingCtx is a context whose Err turns to Canceled after n calls.
type countingCtx struct {
	context.Context
	n atomic.Int64
}

func (c *countingCtx) Err() error {
	if c.n.Add(-1) < 0 {
		return context.Canceled
	}
	return nil
}

// TestCancelLeavesModelUntouched cancels at every layer boundary in turn (unfused and fused)
// and checks that a cancelled step changes nothing and the next step matches an
// uninterrupted run.
func TestCancelLeavesModelUntouched(t *testing.T) {
	gm := tiny(t, "tiny-tied")
	b := paddedBatch()
	for _, fused := range []bool{false, true} {
		opt := DefaultOptions()
		opt.FusedOptimizer, opt.ClipNorm = fused, 0
		clean := newModel(t, gm, opt)
		runSteps(t, clean, b, 1, 1e-3)
		want := exportAll(t, clean)
		for calls := int64(0); calls < 8; calls++ {
			m := newModel(t, gm, opt)
			before := exportAll(t, m)
			ctx := &countingCtx{Context: context.Background()}
			ctx.n.Store(calls)
			st, err := m.Step(ctx, b, 1e-3)
			if err == nil {
				// the context was not asked often enough to cancel: the step must be whole
				sameBits(t, "uncancelled step", exportAll(t, m), want)
				continue
			}
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("fused=%v cancel after %d checks: %v", fused, calls, err)
			}
			if st.Step != 0 || m.Steps() != 0 {
				t.Fatalf("cancelled step counted: %+v", st)
			}
			sameBits(t, "after cancel", exportAll(t, m), before)
			if live := m.Memory().InUse; live[2] != 0 || m.Memory().Live == 0 {
				t.Fatalf("activations left after cancel: %v", m.Memory())
			}
			runSteps(t, m, b, 1, 1e-3)
			sameBits(t, "step after cancel", exportAll(t, m), want)
		}
	}
}

// TestNonFiniteSkips: a NaN weight gives a NaN loss; the step is skipped and nothing changes.
func TestNonFiniteSkips(t *testing.T) {
	gm := tiny(t, "tiny-untied")
	gm.Params[3].W[5] = float32(math.NaN())
	for _, fused := range []bool{false, true} {
		opt := DefaultOptions()
		opt.FusedOptimizer, opt.ClipNorm = fused, 0
		m := newModel(t, gm, opt)
		before := exportAll(t, m)
		st, err := m.Step(context.Background(), paddedBatch(), 1e-3)
		if err != nil || !st.Skipped || st.Step != 0 {
			t.Fatalf("fused=%v: %+v, %v", fused, st, err)
		}
		after := exportAll(t, m)
		for i := range before {
			for j := range before[i] {
				if math.Float32bits(before[i][j]) != math.Float32bits(after[i][j]) {
					t.Fatalf("fused=%v: parameter %d changed by a skipped step", fused, i)
				}
			}
		}
	}
}

// TestExportRoundTrip: New then Export gives the parameters back (fp32 exactly, bf16 as
// their rounding).
func TestExportRoundTrip(t *testing.T) {
	gm := tiny(t, "tiny-untied")
	for _, master := range []string{"fp32", "bf16"} {
		opt := DefaultOptions()
		opt.Master = master
		got := exportAll(t, newModel(t, gm, opt))
		for i, p := range gm.Params {
			bound := 0.0
			if master == "bf16" && p.Rows > 1 {
				bound = 1.0 / 256
			}
			if e := relErr(got[i], p.W); e > bound {
				t.Fatalf("%s %s: relative error %.3g", master, p.Name, e)
			}
		}
	}
}

// TestErrors: invalid options and inputs give errors naming the problem.
func TestErrors(t *testing.T) {
	gm := tiny(t, "tiny-tied")
	b := cpu.New()
	for _, c := range []struct {
		mod  func(*Options)
		want string
	}{
		{func(o *Options) { o.Master = "fp8" }, "master precision"},
		{func(o *Options) { o.State = "2bit" }, "optimizer state"},
		{func(o *Options) { o.FusedOptimizer = true }, "ClipNorm"},
		{func(o *Options) { o.LabelSmoothing = 1 }, "LabelSmoothing"},
		{func(o *Options) { o.ChunkRows = -1 }, "ChunkRows"},
		{func(o *Options) { o.LayerChunkRows = -1 }, "LayerChunkRows"},
		{func(o *Options) { o.Beta2 = 1 }, "Beta2"},
	} {
		o := DefaultOptions()
		c.mod(&o)
		if _, err := New(b, gm, o); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: error %v, want one naming %q", o, err, c.want)
		}
	}
	if u := b.Memory().Used(); u != 0 {
		t.Fatalf("failed New left %d bytes", u)
	}
	gm.QAT = true
	if _, err := New(b, gm, DefaultOptions()); err == nil || !strings.Contains(err.Error(), "QAT") {
		t.Errorf("QAT: %v", err)
	}
	gm.QAT = false
	m := newModel(t, gm, Options{}) // zero options: defaults
	if o := m.Options(); o.Master != "bf16" || o.State != "int8" || o.Beta2 != 0.999 || o.ChunkRows <= 0 {
		t.Fatalf("zero options became %+v", o)
	}
	bad := paddedBatch()
	bad.IDs[3] = 512
	if _, err := m.Step(context.Background(), bad, 1e-3); err == nil || !strings.Contains(err.Error(), "outside the vocabulary") {
		t.Errorf("bad id: %v", err)
	}
	short := paddedBatch()
	short.Mask = short.Mask[:5]
	if _, err := m.Step(context.Background(), short, 1e-3); err == nil || !strings.Contains(err.Error(), "mask") {
		t.Errorf("short mask: %v", err)
	}
	if _, err := m.Step(context.Background(), paddedBatch(), math.NaN()); err == nil {
		t.Errorf("NaN learning rate accepted")
	}
	empty := paddedBatch()
	clear(empty.Mask)
	if st, err := m.Step(context.Background(), empty, 1e-3); err != nil || !st.Skipped || m.Steps() != 0 {
		t.Errorf("no targets: %+v, %v", st, err)
	}
	if bpp := m.OptimizerBytesPerParam(); bpp < 2 || bpp > 2.2 {
		t.Errorf("int8 state: %.3f bytes per parameter", bpp)
	}
	m.Close()
	if _, err := m.Step(context.Background(), paddedBatch(), 1e-3); err == nil {
		t.Errorf("Step after Close")
	}
	if st := m.Memory(); st.Used() != 0 {
		t.Errorf("Close left %v", st)
	}
}

// TestFourBitStatesTrain is issue 7's bar for 4-bit moments, on the tiny models with the
// production options (bf16 masters with stochastic rounding, clipping): 16 steps at lr 1e-3 on
// two batches (mid-way down the loss curve, not at memorisation) lower the loss by at least a
// third with every state format, and the final loss with 4bit states is within 3 % of the
// final loss with int8 states (engine/optim's TestQualityOfPackedStates holds 4-bit to 3 % of
// fp32 on its own problem). The 4bit state is about 1.1 bytes per parameter here (the tiny
// matrices' row and column maxima weigh more than a 4B model's: 1.03 there).
func TestFourBitStatesTrain(t *testing.T) {
	if testing.Short() {
		t.Skip("trains six tiny models")
	}
	ctx := context.Background()
	batches := []*data.Batch{paddedBatch(), patternBatch()}
	const steps, lr = 16, 1e-3
	for _, name := range []string{"tiny-tied", "tiny-untied"} {
		final := map[string]float64{}
		for _, state := range []string{"fp32", "int8", "4bit"} {
			opt := DefaultOptions()
			opt.State, opt.Seed = state, 5
			m := newModel(t, tiny(t, name), opt)
			loss := func() float64 {
				var sum float64
				var n int
				for _, b := range batches {
					s, k, err := m.Loss(ctx, b)
					if err != nil {
						t.Fatal(err)
					}
					sum, n = sum+s, n+k
				}
				return sum / float64(n)
			}
			first := loss()
			for s := 0; s < steps; s++ {
				if st, err := m.Step(ctx, batches[s%2], lr); err != nil || st.Skipped {
					t.Fatalf("%s %s step %d: %+v, %v", name, state, s+1, st, err)
				}
			}
			final[state] = loss()
			t.Logf("%s %-4s states (%.3f B/param): loss %.4f → %.4f after %d steps", name, state, m.OptimizerBytesPerParam(), first, final[state], steps)
			if final[state] > first*2/3 {
				t.Errorf("%s %s: loss %.4f → %.4f: not lowered by a third", name, state, first, final[state])
			}
			if bpp := m.OptimizerBytesPerParam(); state == "4bit" && (bpp < 1.0 || bpp > 1.15) {
				t.Errorf("%s 4bit: %.3f bytes per parameter", name, bpp)
			}
		}
		rel := (final["4bit"] - final["int8"]) / final["int8"]
		t.Logf("%s: 4bit final loss %+.2f %% from int8's (fp32 %.4f)", name, 100*rel, final["fp32"])
		if rel > 0.03 {
			t.Errorf("%s: 4bit final loss %.4f is %.2f %% above int8's %.4f (bar 3 %%)", name, final["4bit"], 100*rel, final["int8"])
		}
	}
}

// patternBatch is three rows of a repeating pattern (every position a target after the
// first), something the tiny models can learn in a few steps.
func patternBatch() *data.Batch {
	const B, T = 3, 16
	b := &data.Batch{B: B, T: T, IDs: make([]int, B*T), Mask: make([]bool, B*T)}
	for r := 0; r < B; r++ {
		for j := 0; j < T; j++ {
			b.IDs[r*T+j] = 20 + 7*r + j%5
			if j > 0 {
				b.Mask[r*T+j] = true
				b.Targets++
			}
		}
	}
	return b
}

func BenchmarkStep(b *testing.B) {
	gm := tiny(b, "tiny-tied")
	T := 128
	batch := &data.Batch{B: 4, T: T, IDs: make([]int, 4*T), Mask: make([]bool, 4*T)}
	for i := range batch.IDs {
		batch.IDs[i] = (i*37 + 11) % 512
		batch.Mask[i] = i%T != 0
	}
	for _, c := range []struct {
		name string
		opt  func(*Options)
	}{
		{"bf16-int8", func(*Options) {}},
		{"bf16-int8-recompute-fused", func(o *Options) { o.Recompute, o.FusedOptimizer, o.ClipNorm = true, true, 0 }},
	} {
		b.Run(c.name, func(b *testing.B) {
			o := DefaultOptions()
			c.opt(&o)
			m := newModel(b, gm, o)
			b.ResetTimer()
			for b.Loop() {
				if _, err := m.Step(context.Background(), batch, 1e-4); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(batch.B*T)*float64(b.N)/b.Elapsed().Seconds(), "tok/s")
		})
	}
}

// TestBF16Gradients: with Options.Grad "bf16" the matrices' gradients hold bf16 values (norms
// stay float32), within bf16's rounding of the float32 gradients (a few roundings: a logits
// chunk, the embedding rows), and the plan counts them at 2 bytes. The step itself is checked
// against engine/optim fed with these gradients in TestOptimizerMatchesOptim (DefaultOptions).
func TestBF16Gradients(t *testing.T) {
	ctx := context.Background()
	for _, name := range []string{"tiny-tied", "tiny-untied"} {
		gm := tiny(t, name)
		b := paddedBatch()
		var gs [2][][]float32
		var plans [2]int64
		for i, g := range []string{"fp32", "bf16"} {
			opt := DefaultOptions()
			opt.Grad, opt.ChunkRows = g, 5
			m := newModel(t, gm, opt)
			var err error
			if gs[i], _, _, err = m.Grads(ctx, b); err != nil {
				t.Fatal(err)
			}
			for _, it := range m.PeakPlan(2, 12) {
				if it.Category == backend.Gradients && strings.Contains(it.What, "parameter gradient") {
					plans[i] += it.Bytes
				}
			}
		}
		for i, p := range gm.Params {
			f32, b16 := gs[0][i], gs[1][i]
			var worst, scale float64
			rounded := true
			for j, v := range b16 {
				worst = max(worst, math.Abs(float64(v-f32[j])))
				scale = max(scale, math.Abs(float64(f32[j])))
				rounded = rounded && tensor.BF16ToF32(tensor.F32ToBF16(v)) == v
			}
			switch {
			case p.Rows == 1 && worst != 0:
				t.Errorf("%s %s: a norm's gradient changed with bf16 gradients (%g)", name, p.Name, worst)
			case p.Rows > 1 && !rounded:
				t.Errorf("%s %s: gradient values are not bf16", name, p.Name)
			case p.Rows > 1 && (worst == 0 || worst > 1e-2*scale):
				t.Errorf("%s %s: bf16 gradient off the float32 one by %g of %g", name, p.Name, worst, scale)
			}
		}
		if plans[1] >= plans[0] || plans[1] < plans[0]/2 {
			t.Errorf("%s: plan's parameter gradients %d bytes in bf16, %d in fp32", name, plans[1], plans[0])
		}
	}
	if _, err := New(cpu.New(), tiny(t, "tiny-tied"), Options{Grad: "fp16"}); err == nil || !strings.Contains(err.Error(), `gradient type "fp16"`) {
		t.Errorf("Grad fp16: %v", err)
	}
}
