package grad

import (
	"context"
	"fmt"
	"github.com/qwengo/qwengo/engine/nvfp4"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qwengo/qwengo/engine/cpu"
	"github.com/qwengo/qwengo/engine/data"
	"github.com/qwengo/qwengo/engine/format"
	"github.com/qwengo/qwengo/engine/internal/testmodel"
	"github.com/qwengo/qwengo/engine/optim"
	"github.com/qwengo/qwengo/engine/qwen3"
	"github.com/qwengo/qwengo/engine/tensor"
	"github.com/qwengo/qwengo/engine/train"
)

func tiny(t testing.TB, name string) *Model {
	t.Helper()
	return testmodel.Load(t, name, Load)
}

func ints(h *tensor.Host) []int {
	out := make([]int, h.Numel())
	for i := range out {
		var v int64
		for j := 0; j < 8; j++ {
			v |= int64(h.Data[8*i+j]) << (8 * j)
		}
		out[i] = int(v)
	}
	return out
}

// TestTorchParity compares loss and every parameter gradient with PyTorch autograd
// (transformers Qwen3ForCausalLM, fp32, batch 2 × 24, masked prompts).
func TestTorchParity(t *testing.T) {
	for _, name := range []string{"tiny-tied", "tiny-untied"} {
		t.Run(name, func(t *testing.T) {
			m := tiny(t, name)
			ref, err := format.Open(filepath.Join("..", "qwen3", "testdata", name, "train_reference.safetensors"))
			if err != nil {
				t.Fatal(err)
			}
			defer ref.Close()
			idsT, _ := ref.Read("input_ids")
			labT, _ := ref.Read("labels")
			lossT, _ := ref.Read("loss")
			ids, labels := ints(idsT), ints(labT)
			wantLoss, _ := lossT.Float32s(nil)
			b := &data.Batch{B: idsT.Shape[0], T: idsT.Shape[1], IDs: ids, Mask: make([]bool, len(ids))}
			for i, l := range labels {
				b.Mask[i] = l != -100 && i%b.T != 0
			}
			sum, n, grads, err := m.Grad(context.Background(), b, train.CrossEntropy{})
			if err != nil {
				t.Fatal(err)
			}
			loss := sum / float64(n)
			if math.Abs(loss-float64(wantLoss[0])) > 1e-4*math.Abs(float64(wantLoss[0])) {
				t.Fatalf("loss %.7f, torch %.7f", loss, wantLoss[0])
			}
			worst, worstName := 0.0, ""
			for i, p := range m.Params {
				gt, err := ref.Read("grad." + p.Name)
				if err != nil {
					t.Fatalf("%s: %v", p.Name, err)
				}
				want, _ := gt.Float32s(nil)
				var num, den float64
				for j := range want {
					num = math.Max(num, math.Abs(float64(grads[i][j]-want[j])))
					den = math.Max(den, math.Abs(float64(want[j])))
				}
				if e := num / den; e > worst {
					worst, worstName = e, p.Name
				}
			}
			t.Logf("loss %.6f (torch %.6f); worst gradient relative error %.2g (%s) over %d tensors", loss, wantLoss[0], worst, worstName, len(m.Params))
			if worst > 1e-4 {
				t.Fatalf("gradient %s: relative error %.3g > 1e-4", worstName, worst)
			}
		})
	}
}

// TestFiniteDifferences checks a few gradient entries of every parameter of a whole model.
func TestFiniteDifferences(t *testing.T) {
	m := tiny(t, "tiny-untied")
	ids := []int{5, 17, 300, 2, 99, 41}
	b := &data.Batch{B: 1, T: len(ids), IDs: ids, Mask: []bool{false, false, true, true, true, true}}
	lossAt := func() float64 {
		s, n, err := m.LossOnly(context.Background(), b, train.CrossEntropy{})
		if err != nil {
			t.Fatal(err)
		}
		return s / float64(n)
	}
	_, _, grads, _ := m.Grad(context.Background(), b, train.CrossEntropy{})
	for i, p := range m.Params {
		// the entry with the largest gradient: well above finite-difference noise
		j := 0
		for k, g := range grads[i] {
			if math.Abs(float64(g)) > math.Abs(float64(grads[i][j])) {
				j = k
			}
		}
		if grads[i][j] == 0 {
			continue
		}
		x := p.W[j]
		h := float32(1e-2) * max(1, float32(math.Abs(float64(x))))
		p.W[j] = x + h
		up := lossAt()
		p.W[j] = x - h
		down := lossAt()
		p.W[j] = x
		num := (up - down) / float64(2*h)
		if rel := math.Abs(num-float64(grads[i][j])) / math.Abs(num); rel > 0.02 {
			t.Errorf("%s[%d]: analytic %.6g, numeric %.6g", p.Name, j, grads[i][j], num)
		}
	}
}

// TestLogitsMatchInference checks the training forward against the inference forward.
func TestLogitsMatchInference(t *testing.T) {
	m := tiny(t, "tiny-tied")
	dir := filepath.Join("..", "qwen3", "testdata", "tiny-tied")
	ref, _ := format.Open(filepath.Join(dir, "reference.safetensors"))
	defer ref.Close()
	idsT, _ := ref.Read("ids_64")
	lgT, _ := ref.Read("logits_64")
	want, _ := lgT.Float32s(nil)
	got, err := m.Logits(context.Background(), ints(idsT))
	if err != nil {
		t.Fatal(err)
	}
	var num, den float64
	for i := range want {
		num = math.Max(num, math.Abs(float64(got[i]-want[i])))
		den = math.Max(den, math.Abs(float64(want[i])))
	}
	if num/den > 1e-4 {
		t.Fatalf("training forward differs from transformers: %.3g", num/den)
	}
	if _, err := m.Logits(context.Background(), []int{512}); err == nil || !strings.Contains(err.Error(), "outside the vocabulary") {
		t.Fatalf("bad id: %v", err)
	}
}

// TestFineTuneLearnsAnswer trains the tiny model on one prompt→answer pair (answer plus an
// end-of-turn id) and checks that greedy decoding then produces the answer and stops.
func TestFineTuneLearnsAnswer(t *testing.T) {
	m := tiny(t, "tiny-tied")
	prompt, answer, eot := []int{10, 20, 30, 40}, []int{7, 77, 177}, 2
	ids := append(append(append([]int(nil), prompt...), answer...), eot)
	mask := make([]bool, len(ids))
	for i := len(prompt); i < len(ids); i++ {
		mask[i] = true
	}
	mix, _ := data.NewMixture([]data.Source{{Name: "qa", Samples: []*data.Sample{{IDs: ids, Mask: mask}}, Ratio: 1}}, 1)
	cfg := train.Config{Optim: optim.DefaultConfig(), BatchSize: 1}
	cfg.Optim.LR = 3e-3
	tr, err := train.New(m.Trainable(), mix, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var first, last float64
	tr.Fit(context.Background(), 40, train.Callbacks{OnStep: func(r train.StepResult) error {
		if r.Step == 1 {
			first = r.Loss
		}
		last = r.Loss
		return nil
	}})
	seq := append([]int(nil), prompt...)
	for len(seq) < len(ids)+2 {
		lg, _ := m.Logits(context.Background(), seq)
		row := lg[(len(seq)-1)*512 : len(seq)*512]
		best := 0
		for k := range row {
			if row[k] > row[best] {
				best = k
			}
		}
		if best == eot {
			break
		}
		seq = append(seq, best)
	}
	t.Logf("loss %.3f -> %.4f; greedy continuation %v", first, last, seq[len(prompt):])
	if fmt.Sprint(seq[len(prompt):]) != fmt.Sprint(answer) {
		t.Fatalf("after training the model says %v, want %v then stop", seq[len(prompt):], answer)
	}
}

func reload(t *testing.T, cfg *qwen3.Config, path string) *Model {
	t.Helper()
	src, err := format.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	m, err := Load(cfg, src)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func maxRel(a, b []float32) float64 {
	var num, den float64
	for i := range a {
		num = math.Max(num, math.Abs(float64(a[i]-b[i])))
		den = math.Max(den, math.Abs(float64(b[i])))
	}
	return num / den
}

func TestExportRoundTrips(t *testing.T) {
	m := tiny(t, "tiny-untied")
	ids := []int{3, 14, 15, 92, 65, 35}
	ref, _ := m.Logits(context.Background(), ids)
	dir := t.TempDir()
	// bf16 / f32 safetensors: every parameter, embeddings and norms included
	if err := m.SaveSafetensors(filepath.Join(dir, "f32"), tensor.F32); err != nil {
		t.Fatal(err)
	}
	back := reload(t, m.Config, filepath.Join(dir, "f32"))
	got, _ := back.Logits(context.Background(), ids)
	if e := maxRel(got, ref); e != 0 {
		t.Fatalf("f32 export: %.3g", e)
	}
	m.SaveSafetensors(filepath.Join(dir, "bf16"), tensor.BF16)
	got, _ = reload(t, m.Config, filepath.Join(dir, "bf16")).Logits(context.Background(), ids)
	t.Logf("bf16 export: logits relative error %.3g", maxRel(got, ref))
	if e := maxRel(got, ref); e > 0.03 {
		t.Fatalf("bf16 export: %.3g", e)
	}
	// NVFP4 with QAT: the exported model computes exactly what the QAT forward computed
	m.QAT = true
	qat, _ := m.Logits(context.Background(), ids)
	if err := m.SaveNVFP4(filepath.Join(dir, "nvfp4")); err != nil {
		t.Fatal(err)
	}
	nv := reload(t, m.Config, filepath.Join(dir, "nvfp4"))
	got, _ = nv.Logits(context.Background(), ids)
	t.Logf("nvfp4 export vs QAT forward: %.3g; QAT forward vs dense: %.3g", maxRel(got, qat), maxRel(qat, ref))
	if e := maxRel(got, qat); e > 0.01 { // embeddings and norms go through bf16
		t.Fatalf("nvfp4 export differs from the QAT forward: %.3g", e)
	}
	m.QAT = false
	// NVFP4 with the embedding and lm_head quantised too: smaller, loads back (grad and qwen3),
	// the tables equal their own NVFP4 images.
	if err := m.SaveNVFP4With(filepath.Join(dir, "nvfp4-all"), true); err != nil {
		t.Fatal(err)
	}
	st1, _ := os.Stat(filepath.Join(dir, "nvfp4", "model.safetensors"))
	st2, _ := os.Stat(filepath.Join(dir, "nvfp4-all", "model.safetensors"))
	if st2.Size() >= st1.Size() {
		t.Errorf("quantised embedding: %d bytes, not smaller than %d", st2.Size(), st1.Size())
	}
	all := reload(t, m.Config, filepath.Join(dir, "nvfp4-all"))
	emb := all.Params[all.embed].W
	q, err := nvfp4.QuantizeModelOpt(m.Params[m.embed].W, m.Params[m.embed].Rows, m.Params[m.embed].Cols)
	if err != nil {
		t.Fatal(err)
	}
	if e := maxRel(emb, q.Dequantize()); e != 0 {
		t.Errorf("quantised embedding read back differs from its NVFP4 image: %.3g", e)
	}
	if _, err := qwen3.Open(filepath.Join(dir, "nvfp4-all"), cpu.New(), qwen3.LoadOptions{}); err != nil {
		t.Errorf("inference loader: %v", err)
	}
	// seed .dat: written in the seed's layout, read back, rewritten from its template byte for byte
	p1 := filepath.Join(dir, "a.dat")
	if err := m.SaveDat(p1, nil); err != nil {
		t.Fatal(err)
	}
	d, err := format.OpenDat(p1)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	p2 := filepath.Join(dir, "b.dat")
	if err := m.SaveDat(p2, d); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(p1)
	b, _ := os.ReadFile(p2)
	if string(a) != string(b) {
		t.Fatal("rewriting a .dat from its template changed bytes")
	}
	for i, e := range d.Entries {
		if e.ElemType != d.Entries[i].ElemType {
			t.Fatal("elemType changed")
		}
	}
	got, _ = reload(t, m.Config, p1).Logits(context.Background(), ids)
	t.Logf(".dat export (seed NVFP4, f16 norms): logits relative error %.3g", maxRel(got, ref))
}

func TestSourceBuildsInferenceModel(t *testing.T) {
	m := tiny(t, "tiny-tied")
	ids := []int{4, 8, 15, 16, 23, 42}
	want, _ := m.Logits(context.Background(), ids)
	inf, err := qwen3.Load(m.Config, m.Source(), cpu.New(), qwen3.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	lg, err := inf.Forward(context.Background(), ids, nil, qwen3.LogitsAll)
	if err != nil {
		t.Fatal(err)
	}
	if e := maxRel(lg.Data, want); e > 1e-5 {
		t.Fatalf("inference model from the training weights differs: %.3g", e)
	}
}
