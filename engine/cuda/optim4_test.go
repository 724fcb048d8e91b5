//go:build cuda

package cuda

import (
	"bytes"
	"context"
	"encoding/gob"
	"fmt"
	"math"
	"slices"
	"testing"
	"unsafe"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/cpu"
	"github.com/qwengo/qwengo/engine/devtrain"
	"github.com/qwengo/qwengo/engine/optim"
	"github.com/qwengo/qwengo/engine/tensor"
)

// GPU tests of AdamW with 4-bit moments (optim4.go, kernels/optim4.cu) against the CPU
// backend, whose 4bit AdamW is engine/optim's code and bit-identical to optim.AdamW (engine/
// cpu's TestAdamWMatchesOptim): the weights against engine/cpu, the codes and scales against
// optim.AdamW's saved state. The kernels reproduce optim's arithmetic operation for operation,
// so no code should differ; compareNibbles still allows one level on at most 0.5 % of the
// elements (a float32 rounding at a level boundary) and logs how many differ.

// optim4State mirrors the fields of engine/optim's saved state that the 4-bit test reads (gob
// matches fields by name).
type optim4State struct {
	Params []*struct {
		MSc, VSc, RowM, ColM []float32
		M4, V4               []byte
	}
	Step int
}

// adam4Download copies a GPU 4bit state back: m's and v's codes, m's block absmax, and v's
// normaliser (row then column maxima for a matrix, block absmax for one row).
func adam4Download(t *testing.T, g *Backend, st backend.AdamWState) (m4, v4 []byte, ms, norm []float32) {
	t.Helper()
	s := st.(*AdamState)
	if s.format != "4bit" {
		t.Fatalf("state format %q, want 4bit", s.format)
	}
	n := s.rows * s.cols
	nb := (n + adam4Block - 1) / adam4Block
	nn := nb
	if s.rows > 1 {
		nn = s.rows + s.cols
	}
	m4, v4, ms, norm = make([]byte, (n+1)/2), make([]byte, (n+1)/2), make([]float32, nb), make([]float32, nn)
	err := g.do(func() error {
		for _, c := range []struct {
			dst   unsafe.Pointer
			src   devPtr
			bytes int
		}{{unsafe.Pointer(&m4[0]), s.m, len(m4)}, {unsafe.Pointer(&v4[0]), s.v, len(v4)}, {unsafe.Pointer(&ms[0]), s.ms, 4 * nb}, {unsafe.Pointer(&norm[0]), s.vs, 4 * nn}} {
			if err := memcpyDtoH(c.dst, c.src, int64(c.bytes)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return
}

// compareNibbles compares the n 4-bit codes of got and want: an m code (signed) is the level
// ±(c&7), a v code its value. Codes may differ by one level on at most 0.5 % of the elements.
func compareNibbles(t *testing.T, name string, got, want []byte, n int, signed bool) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d bytes, want %d", name, len(got), len(want))
	}
	level := func(b []byte, i int) int {
		c := int(b[i>>1]>>(4*(i&1))) & 15
		if signed && c&8 != 0 {
			return -(c & 7)
		}
		return c
	}
	diff := 0
	for i := 0; i < n; i++ {
		if a, b := level(got, i), level(want, i); a != b {
			diff++
			if a-b > 1 || b-a > 1 {
				t.Errorf("%s: element %d has level %d, want %d", name, i, a, b)
				return
			}
		}
	}
	if n%2 == 1 && got[len(got)-1]>>4 != 0 {
		t.Errorf("%s: the unused high nibble of the last byte is %d, want 0", name, got[len(got)-1]>>4)
	}
	t.Logf("parity %-44s %d of %d codes differ by one level (bound 0.5%%)", name, diff, n)
	if diff*200 > n {
		t.Errorf("%s: %d of %d codes differ", name, diff, n)
	}
}

func TestAdamW4MatchesCPU(t *testing.T) {
	g, c, ct := trainPair(t)
	cases := []struct {
		name        string
		kind        string
		sr, noDecay bool
		rows, cols  int
	}{
		{"one row, partial block", kindF32, false, true, 1, 300},
		{"one row, bf16", kindBF16, true, true, 1, 2560},
		{"rows not a multiple of the block", kindF32, false, false, 7, 50},
		{"odd element count", kindBF16, true, false, 129, 65},
		{"one column", kindF32, false, false, 200, 1},
		{"9728 columns", kindBF16, true, false, 333, 9728},
		{"large", kindBF16, true, false, 2048, 2560},
	}
	const steps = 3
	for i, cs := range cases {
		name := fmt.Sprintf("adamw 4bit %s %s [%d, %d]", cs.name, cs.kind, cs.rows, cs.cols)
		n := cs.rows * cs.cols
		init := randn(n, uint64(400+i), 0.5)
		h, err := tensor.FromFloat32s("w", tensor.F32, []int{cs.rows, cs.cols}, init)
		if err != nil {
			t.Fatal(err)
		}
		hw := backend.HostWeight{Name: "w", Dense: h, Keep: cs.kind}
		cw, gw := weights(t, c, g, hw)
		_, gw2 := weights(t, c, g, hw) // a second GPU copy: the same steps must give the same bits
		cst, err := ct.NewAdamWState("4bit", cs.rows, cs.cols)
		if err != nil {
			t.Fatalf("%s: cpu: %v", name, err)
		}
		before := g.Memory().InUse[backend.OptimizerState]
		gst, err := g.NewAdamWState("4bit", cs.rows, cs.cols)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		gst2, err := g.NewAdamWState("4bit", cs.rows, cs.cols)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		// Accounting: the CPU's bytes (engine/optim's count) plus at most the 256-byte
		// alignment of the four parts.
		extra := gst.Bytes() - cst.Bytes()
		t.Logf("%s: state %d bytes (%.4f B/param), CPU %d bytes (%.4f B/param)", name, gst.Bytes(), float64(gst.Bytes())/float64(n),
			cst.Bytes(), float64(cst.Bytes())/float64(n))
		if gst.Format() != "4bit" || extra < 0 || extra >= 4*256 {
			t.Errorf("%s: state %q of %d bytes, CPU %d", name, gst.Format(), gst.Bytes(), cst.Bytes())
		}
		if got := g.Memory().InUse[backend.OptimizerState] - before; got != gst.Bytes()+gst2.Bytes() {
			t.Errorf("%s: %d bytes accounted for two states of %d", name, got, gst.Bytes())
		}
		master := optim.MasterFP32
		if cs.kind == kindBF16 {
			master = optim.MasterBF16
		}
		hy := backend.AdamWHyper{LR: 1e-2, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.1, GradScale: 0.5,
			NoDecay: cs.noDecay, StochasticRound: cs.sr, Seed: 42, Param: 1}
		opt, err := optim.NewAdamW(optim.Config{LR: hy.LR, Beta1: hy.Beta1, Beta2: hy.Beta2, Eps: hy.Eps, WeightDecay: hy.WeightDecay,
			State: optim.Bit4, Master: master, StochasticRounding: cs.sr, Seed: hy.Seed},
			[]optim.ParamSpec{{Name: "dummy", Rows: 1, Cols: 1, Init: []float32{0}}, {Name: "w", Rows: cs.rows, Cols: cs.cols, Init: init, NoDecay: cs.noDecay}})
		if err != nil {
			t.Fatal(err)
		}
		for s := 1; s <= steps; s++ {
			gv := randn(n, uint64(500+10*i+s), 0.05*float64(s))
			if s == 2 {
				for j := 0; j < n; j += 3 {
					gv[j] = 0 // the zero-free v code
				}
			}
			cg, gg := pair(t, c, g, cs.rows, cs.cols, gv)
			hy.Step = s
			if err := ct.AdamW(cw, cg, cst, hy); err != nil {
				t.Fatalf("%s step %d: cpu: %v", name, s, err)
			}
			if err := g.AdamW(gw, gg, gst, hy); err != nil {
				t.Fatalf("%s step %d: %v", name, s, err)
			}
			if err := g.AdamW(gw2, gg, gst2, hy); err != nil {
				t.Fatalf("%s step %d (second copy): %v", name, s, err)
			}
			scaled := make([]float32, n)
			for j, v := range gv {
				scaled[j] = v * hy.GradScale
			}
			if _, err := opt.Step([][]float32{{0}, scaled}, hy.LR); err != nil {
				t.Fatal(err)
			}
			g.Free(gg)
		}
		dl := func(b backend.Backend, w backend.Weight) []float32 {
			hw, err := b.DownloadWeight(w)
			if err != nil {
				t.Fatal(err)
			}
			v, err := hw.Dense.Float32s(nil)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
		got, got2, fromCPU := dl(g, gw), dl(g, gw2), dl(c, cw)
		if cs.kind == kindF32 {
			compareSlices(t, name+" weights vs cpu", got, fromCPU, 1e-6)
		} else {
			compareCodes(t, name+" bf16 weights vs cpu", bf16Bits(got), bf16Bits(fromCPU))
		}
		raw, err := opt.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		var saved optim4State
		if err := gob.NewDecoder(bytes.NewReader(raw)).Decode(&saved); err != nil {
			t.Fatal(err)
		}
		p := saved.Params[1]
		m4, v4, ms, norm := adam4Download(t, g, gst)
		compareNibbles(t, name+" m codes vs optim", m4, p.M4, n, true)
		compareNibbles(t, name+" v codes vs optim", v4, p.V4, n, false)
		compareSlices(t, name+" m scales vs optim", ms, p.MSc, 1e-6)
		if cs.rows > 1 {
			compareSlices(t, name+" v row/column maxima vs optim", norm, append(slices.Clone(p.RowM), p.ColM...), 1e-6)
		} else {
			compareSlices(t, name+" v block scales vs optim", norm, p.VSc, 1e-6)
		}
		m4b, v4b, msb, normb := adam4Download(t, g, gst2)
		if !slices.Equal(got, got2) || !bytes.Equal(m4, m4b) || !bytes.Equal(v4, v4b) || !slices.Equal(ms, msb) || !slices.Equal(norm, normb) {
			t.Errorf("%s: two GPU runs of the same steps differ", name)
		}
		g.FreeAdamWState(gst)
		g.FreeAdamWState(gst2)
		ct.FreeAdamWState(cst)
		if got := g.Memory().InUse[backend.OptimizerState]; got != before {
			t.Errorf("%s: %d optimizer bytes after freeing, %d before", name, got, before)
		}
	}
}

// TestDevtrain4bitGPUvsCPU: engine/devtrain's step with 4bit moments on the GPU against the
// same steps on the CPU reference, as TestDevtrainGPUvsCPU does for fp32 moments: the fp32
// kernels with fp32 masters, then cuBLASLt's bf16 products with the production options (bf16
// masters with stochastic rounding, clipping). Losses per step and the weights after three
// steps; the moments' bytes per parameter on both sides.
func TestDevtrain4bitGPUvsCPU(t *testing.T) {
	g := openGPU(t)
	ctx := context.Background()
	for _, c := range []struct {
		model  string
		simt   bool
		master string
		fused  bool
	}{
		{"tiny-tied", true, "fp32", false},
		{"tiny-untied", false, "bf16", false},
		{"tiny-tied", false, "bf16", true},
	} {
		name := fmt.Sprintf("%s simt=%v master=%s fused=%v", c.model, c.simt, c.master, c.fused)
		t.Run(name, func(t *testing.T) {
			g.do(func() error { g.trainSIMT = c.simt; return nil })
			defer g.do(func() error { g.trainSIMT = false; return nil })
			opt := devtrain.DefaultOptions()
			opt.Master, opt.State, opt.Seed, opt.ChunkRows = c.master, "4bit", 7, 7
			opt.StochasticRounding = c.master == "bf16"
			if c.simt { // the fp32 kernels' 1e-4 loss bound: float32 gradients (bf16 ones round once a call)
				opt.Grad = "fp32"
			}
			if c.fused {
				opt.FusedOptimizer, opt.Recompute, opt.ClipNorm = true, true, 0
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
			cb, gb := cm.OptimizerBytesPerParam(), gm.OptimizerBytesPerParam()
			t.Logf("4bit moments: GPU %.4f B/param, CPU %.4f B/param (%d parameters)", gb, cb, gm.NumParams())
			if gb < cb || cb > 1.2 {
				t.Errorf("4bit moments: GPU %.4f B/param, CPU %.4f", gb, cb)
			}
			b := trainBatch()
			lossBound := 1e-4
			if !c.simt {
				lossBound = 1e-3
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
				t.Logf("devtrain 4bit step %d: loss GPU %.6f CPU %.6f (Δ %.2g); grad norm GPU %.6g CPU %.6g", s, gs.Loss, cs.Loss,
					gs.Loss-cs.Loss, gs.GradNorm, cs.GradNorm)
				if math.Abs(gs.Loss-cs.Loss) > lossBound*math.Abs(cs.Loss) || gs.Skipped != cs.Skipped {
					t.Errorf("step %d: loss %.6f (skipped %v), CPU %.6f (skipped %v)", s, gs.Loss, gs.Skipped, cs.Loss, cs.Skipped)
				}
			}
			ce, err := cm.Export()
			if err != nil {
				t.Fatal(err)
			}
			ge, err := gm.Export()
			if err != nil {
				t.Fatal(err)
			}
			// AdamW's step is bounded whatever the gradient: the first moves a weight by at most
			// lr (exact m and v), the next ones by at most lr·181/49 ≈ 3.7·lr (the largest m̂/√v̂
			// the codes decode to: m rounded up to 1/49 of its block's absmax over the smallest
			// v code, 2^-15 of the normaliser). Where the two sides' gradients differ in their
			// last bits (bf16 products: ~1e-2) a code can flip, so one weight may differ by up to
			// 2·lr + 2·2·3.7·lr ≈ 1.7e-2: 3.5e-2 of max |w| (~0.6 here). That bound is loose, so
			// the share of weights that moved by more than lr/10 apart is checked too: code flips
			// are rare with the fp32 kernels' 1e-4-close gradients, a fraction with bf16 products;
			// a wrong decode or normaliser would move nearly every weight apart.
			off, total := 0, 0
			for i := range ce.Params {
				compareSlices(t, fmt.Sprintf("%s weights %s after 3 steps", name, ce.Params[i].Name), ge.Params[i].W, ce.Params[i].W, 3.5e-2)
				for j, w := range ce.Params[i].W {
					total++
					if math.Abs(float64(ge.Params[i].W[j])-float64(w)) > 1e-4 {
						off++
					}
				}
			}
			share := float64(off) / float64(total)
			t.Logf("%s: %d of %d weights (%.2f %%) differ by more than lr/10 after 3 steps", name, off, total, 100*share)
			if bound := map[bool]float64{true: 0.02, false: 0.5}[c.simt]; share > bound {
				t.Errorf("%s: %.2f %% of the weights differ by more than lr/10 (bound %.0f %%)", name, 100*share, 100*bound)
			}
		})
	}
}
