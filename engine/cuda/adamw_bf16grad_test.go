//go:build cuda

package cuda

import (
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/tensor"
)

// AdamW with bf16 parameter gradients (backend.GradientFormat; the kernels' _gb forms). The
// contract is exact: a bf16 gradient is widened (bits << 16) and the update is the float32
// gradient's update of the widened values, bit for bit — weights, moments, scales and
// normalisers. So every test here runs the same step twice on identical weights and states, once
// with the bf16 gradient and once with a float32 gradient holding its widened values, and wants
// the same bits (not the 0.5 % of one-step differences the CPU parity tests allow).

// bf16Grad is a bf16 parameter gradient [rows, cols] holding vals rounded to nearest even. off
// > 0 places it off elements into a larger allocation (a view, as a tensor inside an arena would
// be), so that its pointer is only 2·off-byte aligned; base is what to free.
func bf16Grad(t *testing.T, g *Backend, rows, cols, off int, vals []float32) (grad, base backend.Tensor) {
	t.Helper()
	n := rows * cols
	if off == 0 {
		x, err := g.AllocGradient(rows, cols, tensor.BF16)
		if err != nil {
			t.Fatal(err)
		}
		if err := g.Upload(x, vals); err != nil {
			t.Fatal(err)
		}
		return x, x
	}
	x, err := g.AllocGradient(1, n+off, tensor.BF16)
	if err != nil {
		t.Fatal(err)
	}
	all := make([]float32, n+off)
	for i := range off {
		all[i] = 1e30 // poison before the view: never read
	}
	copy(all[off:], vals)
	if err := g.Upload(x, all); err != nil {
		t.Fatal(err)
	}
	xt := x.(*Tensor)
	if !xt.bf16 || xt.cat != backend.Gradients {
		t.Fatalf("AllocGradient(BF16) gave a tensor of %s, bf16 %v", xt.cat, xt.bf16)
	}
	return &Tensor{rows: rows, cols: cols, ptr: xt.ptr + devPtr(2*off), cat: backend.Gradients, owner: g, view: true, bf16: true}, x
}

// widened rounds v to bf16 (nearest even, as Upload rounds a bf16 tensor) and widens it back.
func widened(v []float32) []float32 {
	out := make([]float32, len(v))
	for i, x := range v {
		out[i] = tensor.BF16ToF32(tensor.F32ToBF16(x))
	}
	return out
}

// gradValues are a step's gradient: random values with a few specials at the front (signed
// zeros, a subnormal, values below div_pos's and sqrt_fast's ranges once squared, a large one),
// so that the lanes holding them take the kernels' fallbacks.
func gradValues(n int, seed uint64, std float64) []float32 {
	v := randn(n, seed, std)
	specials := []float32{0, float32(math.Copysign(0, -1)), 1e-39, -3e-25, 2e-20, 1e4, -7e-3}
	for i, s := range specials {
		if i < n {
			v[i] = s
		}
	}
	return v
}

// sameWeights downloads two weights and wants the same bits.
func sameWeights(t *testing.T, g *Backend, name string, a, b backend.Weight) {
	t.Helper()
	ha, err := g.DownloadWeight(a)
	if err != nil {
		t.Fatal(err)
	}
	hb, err := g.DownloadWeight(b)
	if err != nil {
		t.Fatal(err)
	}
	av, _ := ha.Dense.Float32s(nil)
	bv, _ := hb.Dense.Float32s(nil)
	if len(av) != len(bv) {
		t.Fatalf("%s: %d and %d weights", name, len(av), len(bv))
	}
	for i := range av {
		if math.Float32bits(av[i]) != math.Float32bits(bv[i]) {
			t.Fatalf("%s: weight %d is %v (%#x), want %v (%#x)", name, i, av[i], math.Float32bits(av[i]), bv[i], math.Float32bits(bv[i]))
		}
	}
}

// sameStates reads two AdamW states back and wants the same bytes.
func sameStates(t *testing.T, g *Backend, name string, a, b backend.AdamWState) {
	t.Helper()
	ma, err := g.ReadAdamWState(a)
	if err != nil {
		t.Fatal(err)
	}
	mb, err := g.ReadAdamWState(b)
	if err != nil {
		t.Fatal(err)
	}
	if reflect.DeepEqual(ma, mb) {
		return
	}
	for _, p := range []struct {
		part string
		x, y []byte
	}{{"m", ma.M, mb.M}, {"v", ma.V, mb.V}} {
		for i := range p.x {
			if p.x[i] != p.y[i] {
				t.Fatalf("%s: %s byte %d is %#x, want %#x", name, p.part, i, p.x[i], p.y[i])
			}
		}
	}
	for _, p := range []struct {
		part string
		x, y []float32
	}{{"m scales", ma.MScale, mb.MScale}, {"v scales", ma.VScale, mb.VScale}} {
		for i := range p.x {
			if math.Float32bits(p.x[i]) != math.Float32bits(p.y[i]) {
				t.Fatalf("%s: %s %d is %v, want %v", name, p.part, i, p.x[i], p.y[i])
			}
		}
	}
	t.Fatalf("%s: the states differ", name)
}

// TestAdamWBF16Grad checks AdamW with a bf16 gradient against AdamW with the float32 gradient of
// its widened values, bit for bit after each of 3 steps: f32 and bf16 weights; fp32, int8 and
// 4bit moments; stochastic rounding on and off; one row of 2,560, [64, 256] (vectors only),
// [37, 100] (a tail; 4bit's first pass without vectors), and bf16 gradients whose pointer is
// only 8-byte ([1, 2560] at element 4: 16-byte aligned as float32 but not as bf16) or 2-byte
// aligned (which take the scalar kernels, against the float32 gradient's vectors). The bf16
// gradient is read, never written.
func TestAdamWBF16Grad(t *testing.T) {
	g := openGPU(t)
	type shape struct{ rows, cols, off int }
	shapes := []shape{{1, 2560, 0}, {64, 256, 0}, {37, 100, 0}, {1, 2560, 4}, {64, 256, 1}, {6, 77, 77}}
	const steps = 3
	seed := uint64(0)
	for _, kind := range []string{kindF32, kindBF16} {
		for _, format := range []string{"fp32", "int8", "4bit"} {
			for _, sh := range shapes {
				for _, sr := range []bool{false, true} {
					seed++
					name := fmt.Sprintf("%s %s [%d, %d] at element %d sr=%v", kind, format, sh.rows, sh.cols, sh.off, sr)
					adamBF16GradCase(t, g, name, kind, format, sh.rows, sh.cols, sh.off, sr, steps, seed)
				}
			}
		}
	}
}

func adamBF16GradCase(t *testing.T, g *Backend, name, kind, format string, rows, cols, off int, sr bool, steps int, seed uint64) {
	t.Helper()
	n := rows * cols
	hw := hostWeight(t, kind, rows, cols, 1000+seed)
	var ws [2]backend.Weight
	var sts [2]backend.AdamWState
	for i := range ws {
		w, err := g.UploadWeight(hw)
		if err != nil {
			t.Fatal(err)
		}
		defer g.FreeWeight(w)
		st, err := g.NewAdamWState(format, rows, cols)
		if err != nil {
			t.Fatal(err)
		}
		defer g.FreeAdamWState(st)
		ws[i], sts[i] = w, st
	}
	for s := 1; s <= steps; s++ {
		vals := gradValues(n, 2000+10*seed+uint64(s), 0.02*float64(s))
		wide := widened(vals)
		gb, base := bf16Grad(t, g, rows, cols, off, vals)
		gf, err := g.AllocGradient(rows, cols, tensor.F32)
		if err != nil {
			t.Fatal(err)
		}
		if err := g.Upload(gf, wide); err != nil {
			t.Fatal(err)
		}
		if got := download(t, g, gb); !reflect.DeepEqual(f32Bits(got), f32Bits(wide)) {
			t.Fatalf("%s step %d: the bf16 gradient does not hold the widened values", name, s)
		}
		h := backend.AdamWHyper{LR: 1e-2, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.1, Step: s, GradScale: 0.5,
			NoDecay: rows == 1, StochasticRound: sr, Seed: 7, Param: seed}
		if err := g.AdamW(ws[0], gb, sts[0], h); err != nil {
			t.Fatalf("%s step %d: bf16 gradient: %v", name, s, err)
		}
		if err := g.AdamW(ws[1], gf, sts[1], h); err != nil {
			t.Fatalf("%s step %d: float32 gradient: %v", name, s, err)
		}
		step := fmt.Sprintf("%s step %d", name, s)
		sameWeights(t, g, step, ws[0], ws[1])
		sameStates(t, g, step, sts[0], sts[1])
		if got := download(t, g, gb); !reflect.DeepEqual(f32Bits(got), f32Bits(wide)) {
			t.Fatalf("%s: AdamW changed its bf16 gradient", step)
		}
		g.Free(base)
		g.Free(gf)
	}
}

// TestAdamWManyBF16Grad checks AdamWMany on a batch that mixes float32 and bf16 gradients (so
// that jobs of one weight kind and state format go to two launches, adamw_many_* and
// adamw_many_*_gb, the 4bit ones one by one) against one AdamW call each, and against a batch
// of the same jobs whose gradients are all float32 (the widened values): weights and moments the
// same bits after each of two steps.
func TestAdamWManyBF16Grad(t *testing.T) {
	g := openGPU(t)
	type param struct {
		kind, format string
		rows, cols   int
		bf16         bool
	}
	shapes := [][2]int{{1, 128}, {7, 50}, {64, 130}, {1, 2560}, {3, 1000}, {33, 256}, {5, 77}}
	var ps []param
	for i := range 48 {
		sh := shapes[i%len(shapes)]
		ps = append(ps, param{[]string{kindBF16, kindF32}[i%2], []string{"int8", "fp32", "4bit"}[(i/2)%3], sh[0], sh[1], (i/6)%2 == 0})
	}
	type side struct {
		ws  []backend.Weight
		sts []backend.AdamWState
	}
	mk := func() *side {
		s := &side{}
		for i, p := range ps {
			w, err := g.UploadWeight(hostWeight(t, p.kind, p.rows, p.cols, uint64(i+1)))
			if err != nil {
				t.Fatal(err)
			}
			st, err := g.NewAdamWState(p.format, p.rows, p.cols)
			if err != nil {
				t.Fatal(err)
			}
			s.ws, s.sts = append(s.ws, w), append(s.sts, st)
		}
		t.Cleanup(func() {
			for i := range s.ws {
				g.FreeWeight(s.ws[i])
				g.FreeAdamWState(s.sts[i])
			}
		})
		return s
	}
	one, many, wide := mk(), mk(), mk()
	for step := 1; step <= 2; step++ {
		// The gradients of the step: as the job says (gs), and all float32 (fs).
		gs, fs := make([]backend.Tensor, len(ps)), make([]backend.Tensor, len(ps))
		for i, p := range ps {
			vals := gradValues(p.rows*p.cols, uint64(100*step+i), 0.01)
			f, err := g.AllocGradient(p.rows, p.cols, tensor.F32)
			if err != nil {
				t.Fatal(err)
			}
			if err := g.Upload(f, widened(vals)); err != nil {
				t.Fatal(err)
			}
			fs[i], gs[i] = f, f
			if p.bf16 {
				gs[i], _ = bf16Grad(t, g, p.rows, p.cols, 0, vals)
			}
		}
		var jobs, wjobs []backend.AdamWJob
		for i, p := range ps {
			h := backend.AdamWHyper{LR: 1e-3, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.1, Step: step, GradScale: 0.5,
				NoDecay: p.rows == 1, StochasticRound: p.kind == kindBF16 && i%3 != 0, Seed: 5, Param: uint64(i)}
			if err := g.AdamW(one.ws[i], gs[i], one.sts[i], h); err != nil {
				t.Fatal(err)
			}
			jobs = append(jobs, backend.AdamWJob{W: many.ws[i], Grad: gs[i], State: many.sts[i], Hyper: h})
			wjobs = append(wjobs, backend.AdamWJob{W: wide.ws[i], Grad: fs[i], State: wide.sts[i], Hyper: h})
		}
		if err := backend.AdamWMany(g, jobs); err != nil {
			t.Fatal(err)
		}
		if err := backend.AdamWMany(g, wjobs); err != nil {
			t.Fatal(err)
		}
		for i, p := range ps {
			name := fmt.Sprintf("step %d param %d %s %s [%d, %d] bf16 gradient %v", step, i, p.kind, p.format, p.rows, p.cols, p.bf16)
			sameWeights(t, g, name+": batched vs one call", many.ws[i], one.ws[i])
			sameStates(t, g, name+": batched vs one call", many.sts[i], one.sts[i])
			sameWeights(t, g, name+": batched vs float32 gradients", many.ws[i], wide.ws[i])
			sameStates(t, g, name+": batched vs float32 gradients", many.sts[i], wide.sts[i])
		}
		for i := range ps {
			if gs[i] != fs[i] {
				g.Free(gs[i])
			}
			g.Free(fs[i])
		}
	}
}

// TestAdamWBF16GradErrors: a bf16 tensor that is not a parameter gradient (a KV cache) is
// refused as AdamW's gradient, and so is a bf16 gradient of another shape, with errors that say
// so.
func TestAdamWBF16GradErrors(t *testing.T) {
	g := openGPU(t)
	w, err := g.UploadWeight(hostWeight(t, kindBF16, 4, 32, 1))
	if err != nil {
		t.Fatal(err)
	}
	defer g.FreeWeight(w)
	st, err := g.NewAdamWState("int8", 4, 32)
	if err != nil {
		t.Fatal(err)
	}
	defer g.FreeAdamWState(st)
	h := backend.AdamWHyper{LR: 1e-3, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, Step: 1, GradScale: 1}
	kv, err := g.allocAs(backend.KVCache, 4, 32, kvBF16)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Free(kv)
	if err := g.AdamW(w, kv, st, h); err == nil || !strings.Contains(err.Error(), "not a parameter gradient") {
		t.Errorf("adamw with a bf16 KV cache as its gradient: %v", err)
	}
	odd, err := g.AllocGradient(4, 16, tensor.BF16)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Free(odd)
	if err := g.AdamW(w, odd, st, h); err == nil || !strings.Contains(err.Error(), "grad [4, 16]") {
		t.Errorf("adamw with a bf16 gradient [4, 16] for a weight [4, 32]: %v", err)
	}
	jobs := []backend.AdamWJob{{W: w, Grad: kv, State: st, Hyper: h}}
	if err := g.AdamWMany(jobs); err == nil || !strings.Contains(err.Error(), "not a parameter gradient") {
		t.Errorf("adamw many with a bf16 KV cache as a gradient: %v", err)
	}
}
