package parity

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/cpu"
	"github.com/qwengo/qwengo/engine/format"
	"github.com/qwengo/qwengo/engine/nvfp4"
	"github.com/qwengo/qwengo/engine/qwen3"
	"github.com/qwengo/qwengo/engine/tensor"
)

var tinyModels = []string{"../qwen3/testdata/tiny-tied", "../qwen3/testdata/tiny-untied"}

// promptIDs are 9 ids of the tiny models' vocabulary of 512.
var promptIDs = []int{1, 17, 250, 3, 499, 64, 128, 7, 300}

func compare(t *testing.T, model, a, b string, opt Options) *Report {
	t.Helper()
	r, err := Compare(context.Background(), model, MustParseSpec(a), MustParseSpec(b), promptIDs, opt)
	if err != nil {
		t.Fatalf("%s vs %s: %v", a, b, err)
	}
	if len(r.Layers) != r.NumLayers+2 || r.Layers[0].Layer != -1 || r.Layers[len(r.Layers)-1].Layer != r.NumLayers {
		t.Fatalf("%s vs %s: layer rows %d, want embedding..final norm (%d)", a, b, len(r.Layers), r.NumLayers+2)
	}
	checkTop(t, r.A)
	checkTop(t, r.B)
	if _, err := json.Marshal(r); err != nil {
		t.Fatalf("report is not JSON: %v", err)
	}
	return r
}

// checkTop checks that a next-token list is a sorted prefix of a probability distribution.
func checkTop(t *testing.T, s Side) {
	t.Helper()
	if len(s.Top) != DefaultTopK {
		t.Fatalf("%s: %d top tokens, want %d", s.Name, len(s.Top), DefaultTopK)
	}
	sum := 0.0
	for i, tok := range s.Top {
		if !(tok.Prob > 0 && tok.Prob <= 1) {
			t.Fatalf("%s: top[%d] probability %v", s.Name, i, tok.Prob)
		}
		if i > 0 && tok.Prob > s.Top[i-1].Prob {
			t.Fatalf("%s: top list not sorted at %d", s.Name, i)
		}
		sum += float64(tok.Prob)
	}
	if sum > 1+1e-9 || s.Argmax != s.Top[0].ID {
		t.Fatalf("%s: top-10 mass %v, argmax %d vs top[0] %d", s.Name, sum, s.Argmax, s.Top[0].ID)
	}
}

func maxAbsAll(r *Report) float64 {
	m := 0.0
	for _, l := range r.Layers {
		m = math.Max(m, float64(l.MaxAbs))
		for _, p := range l.Positions {
			m = math.Max(m, float64(p.MaxAbs))
		}
	}
	return m
}

func TestSamePathsAgree(t *testing.T) {
	// Paths that must compute the same numbers (the CPU kernels are batch invariant, and the
	// QAT image is exactly what the NVFP4 matmul decodes).
	for _, model := range tinyModels {
		for _, c := range [][2]string{
			{"cpu:f32:kv", "cpu:f32"},
			{"cpu:nvfp4:kv", "cpu:nvfp4"},
			{"cpu:stored", "cpu:f32"},
			{"cpu:f32:qat", "cpu:nvfp4:kv"},
			{"cpu:f32:kv:cache=bf16", "cpu:f32:cache=bf16"}, // bf16 caches: the same keys either way
		} {
			t.Run(filepath.Base(model)+"/"+c[0]+"_vs_"+c[1], func(t *testing.T) {
				r := compare(t, model, c[0], c[1], Options{AllPositions: true})
				if m := maxAbsAll(r); m > 1e-5 {
					t.Errorf("max_abs %g over all layers and positions, want ≤ 1e-5\n%s", m, r)
				}
				if r.Diverges() || r.FirstDiverging != NoDivergence || r.FirstDivergingName != "none" {
					t.Errorf("first diverging %d (%s), want none", r.FirstDiverging, r.FirstDivergingName)
				}
				for _, l := range r.Layers {
					if len(l.Positions) != len(promptIDs) || l.Cosine < 1-1e-6 {
						t.Errorf("%s: %d positions, cosine %v", l.Name, len(l.Positions), l.Cosine)
					}
				}
				if !r.ArgmaxAgree || math.Abs(float64(r.KL)) > 1e-9 || r.TopOverlap != DefaultTopK {
					t.Errorf("next token: agree %v, KL %v, overlap %d", r.ArgmaxAgree, r.KL, r.TopOverlap)
				}
				if strings.Contains(r.String(), "first diverging:") {
					t.Errorf("table marks a divergence:\n%s", r)
				}
			})
		}
	}
}

func TestNVFP4VersusF32(t *testing.T) {
	for _, model := range tinyModels {
		t.Run(filepath.Base(model), func(t *testing.T) {
			r := compare(t, model, "cpu:f32", "cpu:nvfp4:kv", Options{})
			emb := r.Layers[0]
			if emb.MaxAbs != 0 || emb.Diverges {
				t.Errorf("embedding differs (nvfp4 keeps embeddings as stored): %+v", emb)
			}
			for _, l := range r.Layers[1:] {
				if !(l.MaxAbs > 1e-3 && l.Cosine < 0.9999 && l.Cosine > 0.5 && l.RelErr > 1e-3 && l.RelErr < 1) {
					t.Errorf("%s: max_abs %v cosine %v rel %v: want a measurable but bounded NVFP4 error", l.Name, l.MaxAbs, l.Cosine, l.RelErr)
				}
				if l.MeanAbs > l.MaxAbs {
					t.Errorf("%s: mean_abs %v > max_abs %v", l.Name, l.MeanAbs, l.MaxAbs)
				}
			}
			if r.FirstDiverging != 0 {
				t.Errorf("first diverging %s, want layer 0 (the first NVFP4 linears)", r.FirstDivergingName)
			}
			if !(r.KL > 0 && r.KL < 1) || r.Logits.MaxAbs == 0 {
				t.Errorf("KL %v, logits max_abs %v", r.KL, r.Logits.MaxAbs)
			}
			s := r.String()
			for _, want := range []string{"a = cpu:f32:stored", "b = cpu:nvfp4:kv", "← first diverging", "KL(a‖b)", "embedding", "final norm", "logits"} {
				want = strings.Replace(want, "cpu:f32:stored", "cpu:f32", 1)
				if !strings.Contains(s, want) {
					t.Errorf("table lacks %q:\n%s", want, s)
				}
			}
			if !strings.Contains(lineOf(s, "0 "), "← first diverging") {
				t.Errorf("layer 0 not marked:\n%s", s)
			}
		})
	}
}

// lineOf returns the first line of s that starts with prefix.
func lineOf(s, prefix string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	return ""
}

func TestBF16(t *testing.T) {
	r := compare(t, tinyModels[0], "cpu:f32", "cpu:bf16", Options{})
	if r.Layers[0].MaxAbs == 0 || r.Layers[0].Cosine < 0.999 || r.KL > 1e-3 {
		t.Errorf("bf16 vs f32: embedding max_abs %v cosine %v, KL %v: want a small nonzero difference", r.Layers[0].MaxAbs, r.Layers[0].Cosine, r.KL)
	}
}

func TestScaleBugLocalised(t *testing.T) {
	for _, model := range tinyModels {
		for _, c := range [][2]string{
			{"cpu:nvfp4", "cpu:nvfp4:scalebug=1"},
			{"cpu:f32", "cpu:f32:scalebug=1:kv"},
			{"cpu:f32:qat", "cpu:bf16:qat:scalebug=1"},
			{"cpu:nvfp4:kv", "cpu:nvfp4:scalebug=0"},
		} {
			t.Run(filepath.Base(model)+"/"+c[1], func(t *testing.T) {
				r := compare(t, model, c[0], c[1], Options{})
				want := MustParseSpec(c[1]).ScaleBugLayer
				if r.FirstDiverging != want {
					t.Fatalf("first diverging %s, want layer %d\n%s", r.FirstDivergingName, want, r)
				}
				for _, l := range r.Layers {
					if l.Layer < want && l.Layer >= 0 && l.MaxAbs != 0 && !strings.Contains(c[1], "bf16") {
						t.Errorf("%s before the bug differs: %v", l.Name, l.MaxAbs)
					}
					if l.Layer < want && l.Diverges {
						t.Errorf("%s before the bug diverges", l.Name)
					}
				}
				if len(r.B.Notes) == 0 || !strings.Contains(r.B.Notes[len(r.B.Notes)-1], "read as integers") {
					t.Errorf("notes %q", r.B.Notes)
				}
				if !strings.Contains(lineOf(r.String(), itoa(want)+" "), "← first diverging") {
					t.Errorf("layer %d not marked:\n%s", want, r)
				}
			})
		}
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestScaleBugImage(t *testing.T) {
	// Two blocks: scale bytes 0x38 (E4M3 1.0, the integer 56) and 0x04 (2^-7, the integer 4).
	q := &nvfp4.Matrix{Rows: 1, Cols: 32, Packed: make([]byte, 16), Scales: []byte{0x38, 0x04}, Global: 0.5}
	q.Packed[0] = 0x2a // element 0: code 0xa (-1.0), element 1: code 0x2 (1.0)
	q.Packed[8] = 0x07 // element 16: code 7 (6.0)
	got := ScaleBugDequantize(q)
	want := map[int]float32{0: -1 * 56 * 0.5, 1: 1 * 56 * 0.5, 16: 6 * 4 * 0.5}
	for i, v := range got {
		if v != want[i] {
			t.Errorf("element %d: %v, want %v", i, v, want[i])
		}
	}
	if dec := q.Dequantize(); dec[0] != -0.5 || dec[16] != 6*0.0078125*0.5 {
		t.Fatalf("the correct decode changed: %v %v", dec[0], dec[16])
	}
	p := ReadScalesAsIntegers(q)
	if nvfp4.DecodeE4M3(p.Scales[0]) != 56 || nvfp4.DecodeE4M3(p.Scales[1]) != 4 || q.Scales[0] != 0x38 {
		t.Errorf("re-encoded scales %#x %#x decode to %v %v (original %#x)", p.Scales[0], p.Scales[1],
			nvfp4.DecodeE4M3(p.Scales[0]), nvfp4.DecodeE4M3(p.Scales[1]), q.Scales[0])
	}
	// Every byte: the re-encoded scale is within E4M3's rounding of the integer.
	for b := 0; b < 256; b++ {
		m := &nvfp4.Matrix{Rows: 1, Cols: 16, Packed: make([]byte, 8), Scales: []byte{byte(b)}, Global: 1}
		d := float64(nvfp4.DecodeE4M3(ReadScalesAsIntegers(m).Scales[0]))
		if math.Abs(d-float64(b)) > float64(b)/16+1e-9 || (b <= 16 && d != float64(b)) {
			t.Fatalf("byte %d re-encodes to %v", b, d)
		}
	}
}

// seedStyle writes the tiny model with its linears quantised the seed's way (no tensor
// scale, X.weight.qdata + X.weight.scale) and returns the directory.
func seedStyle(t *testing.T, from string) string {
	t.Helper()
	src, err := format.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	var out []*tensor.Host
	for _, ti := range src.Tensors() {
		h, err := src.Read(ti.Name)
		if err != nil {
			t.Fatal(err)
		}
		prefix, _ := strings.CutSuffix(ti.Name, ".weight")
		if _, lin := linearParam(prefix); !lin {
			out = append(out, h)
			continue
		}
		v, _ := h.Float32s(nil)
		q, err := nvfp4.QuantizeSeed(v, h.Shape[0], h.Shape[1])
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, &tensor.Host{Name: prefix + ".weight.qdata", DType: tensor.U8, Shape: []int{q.Rows, q.Cols / 2}, Data: q.Packed},
			&tensor.Host{Name: prefix + ".weight.scale", DType: tensor.F8E4M3, Shape: []int{q.Rows, q.Cols / 16}, Data: q.Scales})
	}
	dir := t.TempDir()
	if err := format.WriteSafetensors(filepath.Join(dir, "model.safetensors"), out, nil); err != nil {
		t.Fatal(err)
	}
	cfg, err := os.ReadFile(filepath.Join(from, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestScaleBugOnSeedWeights(t *testing.T) {
	// The seed's weights have no tensor scale: block scales are tiny, and read as integers
	// they multiply the layer's weights by hundreds.
	dir := seedStyle(t, tinyModels[0])
	for _, c := range [][2]string{{"cpu:stored", "cpu:stored:scalebug=1"}, {"cpu:f32", "cpu:f32:scalebug=1"}} {
		r, err := Compare(context.Background(), dir, MustParseSpec(c[0]), MustParseSpec(c[1]), promptIDs, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if r.FirstDiverging != 1 || r.Layers[1].MaxAbs != 0 || r.Layers[2].RelErr < 10 {
			t.Errorf("%s: first diverging %s, layer 0 max_abs %v, layer 1 rel_err %v: want layer 1 blown up\n%s",
				c[1], r.FirstDivergingName, r.Layers[1].MaxAbs, r.Layers[2].RelErr, r)
		}
		if !strings.Contains(r.B.Notes[0], "weight RMS ×") {
			t.Errorf("notes %q", r.B.Notes)
		}
		t.Logf("%s: %s", c[1], r.B.Notes[0])
	}
}

func TestAllPositionsKVCapture(t *testing.T) {
	// The prefill rows and the cached last row land at their positions: position p of the
	// cached path equals position p of a forward over ids[:p+1].
	r := compare(t, tinyModels[1], "cpu:f32:kv", "cpu:nvfp4", Options{AllPositions: true})
	T := len(promptIDs)
	for _, l := range r.Layers {
		if len(l.Positions) != T {
			t.Fatalf("%s: %d positions", l.Name, len(l.Positions))
		}
		if l.Positions[T-1] != (Diff{l.MaxAbs, l.MeanAbs, l.Cosine, l.RelErr}) {
			t.Errorf("%s: last position %+v differs from the row %+v", l.Name, l.Positions[T-1], l)
		}
		if l.WorstPosition < 0 || l.WorstPosition >= T || l.WorstCosine > l.Cosine {
			t.Errorf("%s: worst position %d cosine %v (last %v)", l.Name, l.WorstPosition, l.WorstCosine, l.Cosine)
		}
	}
	// Independent check of one layer at one position against a plain forward.
	m, _, err := LoadModel(tinyModels[1], MustParseSpec("cpu:f32"), cpu.New(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Free()
	var first []float32
	lg, err := m.ForwardWith(context.Background(), promptIDs[:4], nil, qwen3.LogitsLast, qwen3.ForwardOptions{OnHidden: func(layer int, h []float32) {
		if layer == m.Config.NumLayers {
			first = append([]float32(nil), h...)
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	m2, _, _ := LoadModel(tinyModels[1], MustParseSpec("cpu:f32"), cpu.New(), nil)
	defer m2.Free()
	c, err := run(context.Background(), m2, MustParseSpec("cpu:f32:kv"), promptIDs[:4], true)
	if err != nil {
		t.Fatal(err)
	}
	if d := Compute(first, c.rows[m.Config.NumLayers+1][3]); d.MaxAbs > 1e-5 {
		t.Errorf("final norm at position 3: max_abs %v", d.MaxAbs)
	}
	if d := Compute(lg.Row(0), c.logits); d.MaxAbs > 1e-5 {
		t.Errorf("logits: max_abs %v", d.MaxAbs)
	}
}

func TestDecodeAndTopK(t *testing.T) {
	r, err := Compare(context.Background(), tinyModels[0], Spec{}, Spec{KVCache: true}, promptIDs[:1],
		Options{TopK: 3, Decode: func(ids []int) string { return "tok" + itoa(ids[0]) }})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.A.Top) != 3 || r.A.Top[0].Text != "tok"+itoa(r.A.Top[0].ID) || r.Position != 0 {
		t.Fatalf("top %+v position %d", r.A.Top, r.Position)
	}
	if !strings.Contains(r.String(), `"tok`+itoa(r.A.Top[0].ID)+`"`) {
		t.Errorf("decoded text missing from the table:\n%s", r)
	}
}

func TestParseSpec(t *testing.T) {
	good := []struct {
		in   string
		want Spec
		text string
	}{
		{"cpu:nvfp4:kv", Spec{Backend: "cpu", Precision: "nvfp4", KVCache: true}, "cpu:nvfp4:kv"},
		{"kv:nvfp4:cpu", Spec{Backend: "cpu", Precision: "nvfp4", KVCache: true}, "cpu:nvfp4:kv"},
		{"CPU:F32", Spec{Backend: "cpu", Precision: "f32"}, "cpu:f32"},
		{"bf16", Spec{Backend: "cpu", Precision: "bf16"}, "cpu:bf16"},
		{"cpu", Spec{Backend: "cpu", Precision: "stored"}, "cpu:stored"},
		{"cuda:bf16:qat", Spec{Backend: "cuda", Precision: "bf16", QAT: true}, "cuda:bf16:qat"},
		{"qat:kv", Spec{Backend: "cpu", Precision: "f32", QAT: true, KVCache: true}, "cpu:f32:qat:kv"},
		{"cpu:nvfp4:nokv", Spec{Backend: "cpu", Precision: "nvfp4"}, "cpu:nvfp4"},
		{"scalebug=3:nvfp4", Spec{Backend: "cpu", Precision: "nvfp4", ScaleBug: true, ScaleBugLayer: 3}, "cpu:nvfp4:scalebug=3"},
		{" cpu : stored ", Spec{Backend: "cpu", Precision: "stored"}, "cpu:stored"},
		{"cache=BF16:cuda:kv:nvfp4", Spec{Backend: "cuda", Precision: "nvfp4", KVCache: true, Cache: "bf16"}, "cuda:nvfp4:kv:cache=bf16"},
		{"cpu:cache=f32", Spec{Backend: "cpu", Precision: "stored", Cache: "f32"}, "cpu:stored:cache=f32"},
	}
	for _, c := range good {
		got, err := ParseSpec(c.in)
		if err != nil || got != c.want || got.String() != c.text {
			t.Errorf("ParseSpec(%q) = %+v (%q), %v; want %+v (%q)", c.in, got, got.String(), err, c.want, c.text)
		}
		if again, err := ParseSpec(got.String()); err != nil || again != got {
			t.Errorf("%q does not round-trip: %+v, %v", got.String(), again, err)
		}
	}
	bad := []struct{ in, want string }{
		{"", "empty"},
		{"cpu::f32", "empty token"},
		{"cpu:fp16", `unknown token "fp16"`},
		{"gpu:f32", "want a backend cpu|cuda"},
		{"cpu:cuda", "backend given twice"},
		{"f32:bf16", "precision given twice"},
		{"kv:nokv", "kv cache given twice"},
		{"qat:qat", "qat given twice"},
		{"nvfp4:qat", "qat computes densely"},
		{"scalebug", "want scalebug=LAYER"},
		{"scalebug=x", "want scalebug=LAYER"},
		{"scalebug=-1", "0 or more"},
		{"scalebug=1:scalebug=2", "scalebug given twice"},
		{"cache=f16", "want cache=f32 or cache=bf16"},
		{"cache", "want cache=f32 or cache=bf16"},
		{"cache=f32:cache=bf16", "cache given twice"},
	}
	for _, c := range bad {
		_, err := ParseSpec(c.in)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ParseSpec(%q) error %v, want one containing %q", c.in, err, c.want)
		}
	}
	if err := (Spec{Precision: "fp8"}).Validate(); err == nil || !strings.Contains(err.Error(), "unknown precision") {
		t.Errorf("Validate fp8: %v", err)
	}
	if err := (Spec{Cache: "fp8"}).Validate(); err == nil || !strings.Contains(err.Error(), "unknown KV cache type") {
		t.Errorf("Validate cache fp8: %v", err)
	}
}

// TestKVCacheType: bf16 caches (cache=bf16) against float32 ones on the same backend: the
// embedding agrees exactly, the layers differ by bf16's rounding of keys and values (small, not
// zero), and each side reports its cache type.
func TestKVCacheType(t *testing.T) {
	r := compare(t, tinyModels[0], "cpu:f32:kv:cache=bf16", "cpu:f32:kv", Options{})
	if r.A.Cache != "bf16" || r.B.Cache != "f32" || !strings.Contains(r.String(), "kv cache bf16") {
		t.Errorf("sides report caches %q and %q:\n%s", r.A.Cache, r.B.Cache, r)
	}
	if r.Layers[0].MaxAbs != 0 {
		t.Errorf("the embedding differs by %g", r.Layers[0].MaxAbs)
	}
	if l := r.Layers[1]; l.MaxAbs == 0 || l.Cosine < 0.9999 || r.Diverges() {
		t.Errorf("layer 0: max_abs %g, cosine %v, diverges %v; want a small non-zero difference\n%s", l.MaxAbs, l.Cosine, r.Diverges(), r)
	}
}

func TestCompareErrors(t *testing.T) {
	ctx := context.Background()
	m := tinyModels[0]
	cases := []struct {
		name  string
		model string
		a, b  Spec
		ids   []int
		opt   Options
		want  string
	}{
		{"cuda without the tag", m, Spec{}, MustParseSpec("cuda:bf16"), promptIDs, Options{}, "go build -tags cuda"},
		{"unknown backend", m, Spec{}, Spec{Backend: "tpu"}, promptIDs, Options{}, `unknown backend "tpu" (available: cpu`},
		{"no ids", m, Spec{}, Spec{}, nil, Options{}, "no token ids"},
		{"id outside the vocabulary", m, Spec{}, Spec{}, []int{1, 512}, Options{}, "token id 512 at position 1 is outside the vocabulary (0..511)"},
		{"negative id", m, Spec{}, Spec{}, []int{-1}, Options{}, "token id -1 at position 0"},
		{"scale-bug layer missing", m, Spec{}, MustParseSpec("scalebug=2"), promptIDs, Options{}, "scale-bug layer 2 does not exist (the model has layers 0..1)"},
		{"bad spec", m, Spec{Precision: "int4"}, Spec{}, promptIDs, Options{}, "unknown precision"},
		{"missing model", "/nonexistent/model", Spec{}, Spec{}, promptIDs, Options{}, "no such file"},
		{"backend constructor fails", m, Spec{}, Spec{}, promptIDs, Options{OpenBackend: func(string) (backend.Backend, error) {
			return nil, errors.New("device lost")
		}}, "device lost"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Compare(ctx, c.model, c.a, c.b, c.ids, c.opt)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one containing %q", err, c.want)
			}
		})
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := Compare(cctx, m, Spec{}, Spec{}, promptIDs, Options{}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
}

func TestRegistry(t *testing.T) {
	if !backend.Registered("cpu") {
		t.Fatal("cpu is not registered")
	}
	names := backend.Names()
	if len(names) == 0 || names[0] > names[len(names)-1] {
		t.Fatalf("names %v", names)
	}
	b, err := backend.Open("cpu")
	if err != nil || !strings.HasPrefix(b.Name(), "cpu") {
		t.Fatalf("open cpu: %v %v", b, err)
	}
	for _, bad := range []func(){
		func() { backend.Register("cpu", func() (backend.Backend, error) { return cpu.New(), nil }) },
		func() { backend.Register("", func() (backend.Backend, error) { return cpu.New(), nil }) },
		func() { backend.Register("a:b", func() (backend.Backend, error) { return cpu.New(), nil }) },
		func() { backend.Register("nilfn", nil) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Error("bad registration did not panic")
				}
			}()
			bad()
		}()
	}
	if !backend.Registered("parity-test-nil") {
		backend.Register("parity-test-nil", func() (backend.Backend, error) { return nil, nil })
	}
	if _, err := backend.Open("parity-test-nil"); err == nil || !strings.Contains(err.Error(), "no backend and no error") {
		t.Errorf("nil backend: %v", err)
	}
}

func TestComputeAndFloatJSON(t *testing.T) {
	d := Compute([]float32{3, 4}, []float32{3, 5})
	if d.MaxAbs != 1 || d.MeanAbs != 0.5 || math.Abs(float64(d.RelErr)-0.2) > 1e-12 || math.Abs(float64(d.Cosine)-(9+20)/(5*math.Sqrt(34))) > 1e-12 {
		t.Errorf("Compute: %+v", d)
	}
	if d := Compute([]float32{0, 0}, []float32{0, 0}); d.Cosine != 1 || d.RelErr != 0 {
		t.Errorf("zeros: %+v", d)
	}
	if d := Compute([]float32{0, 0}, []float32{1, 0}); d.Cosine != 0 || !math.IsInf(float64(d.RelErr), 1) {
		t.Errorf("zero a: %+v", d)
	}
	nan := float32(math.NaN())
	d = Compute([]float32{1, nan}, []float32{1, 2})
	if !math.IsNaN(float64(d.Cosine)) || !d.diverges(Options{}.withDefaults()) {
		t.Errorf("NaN: %+v must be NaN and diverge", d)
	}
	b, err := json.Marshal(d)
	if err != nil || !strings.Contains(string(b), `"cosine":"NaN"`) {
		t.Fatalf("NaN JSON %s, %v", b, err)
	}
	var back Diff
	if err := json.Unmarshal(b, &back); err != nil || !math.IsNaN(float64(back.MaxAbs)) {
		t.Fatalf("NaN JSON round trip: %+v %v", back, err)
	}
	for _, f := range []Float{Float(math.Inf(1)), Float(math.Inf(-1)), 0.25, -3e-9} {
		b, _ := json.Marshal(f)
		var g Float
		if err := json.Unmarshal(b, &g); err != nil || g != f {
			t.Errorf("%v → %s → %v (%v)", f, b, g, err)
		}
	}
	var g Float
	if err := json.Unmarshal([]byte(`"big"`), &g); err == nil {
		t.Error(`"big" accepted as a Float`)
	}
}

func TestReportJSONRoundTrip(t *testing.T) {
	r := compare(t, tinyModels[0], "cpu:nvfp4", "cpu:nvfp4:scalebug=1", Options{AllPositions: true})
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.FirstDiverging != 1 || back.B.Spec != r.B.Spec || len(back.Layers) != len(r.Layers) || back.Layers[2].Cosine != r.Layers[2].Cosine ||
		len(back.Layers[2].Positions) != len(promptIDs) || back.KL != r.KL {
		t.Errorf("round trip lost data: %+v", back)
	}
}

func TestPackedCheckpointPaths(t *testing.T) {
	// On a checkpoint stored as NVFP4 the QAT image of a linear is the linear itself, and the
	// dense precisions decode it exactly, so all these paths agree.
	dir := seedStyle(t, tinyModels[1])
	for _, c := range [][2]string{{"cpu:stored", "cpu:f32:qat"}, {"cpu:stored:kv", "cpu:f32"}, {"cpu:nvfp4", "cpu:stored"}} {
		r, err := Compare(context.Background(), dir, MustParseSpec(c[0]), MustParseSpec(c[1]), promptIDs, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if m := maxAbsAll(r); m > 1e-5 || r.Diverges() {
			t.Errorf("%s vs %s: max_abs %g, first diverging %s", c[0], c[1], m, r.FirstDivergingName)
		}
		if len(r.B.Notes) != 0 {
			t.Errorf("%s: notes %q, want none (nothing rewritten)", c[1], r.B.Notes)
		}
		if !strings.Contains(r.A.Weights, "nvfp4 (seed .dat") {
			t.Errorf("%s weights %q", c[0], r.A.Weights)
		}
	}
}

func TestModelOptCheckpoint(t *testing.T) {
	// A checkpoint in the ModelOpt layout (weight U8 + weight_scale + weight_scale_2): the bug
	// rewrites its stored scale bytes, kept as NVFP4 or decoded densely.
	m, _, err := LoadModel(tinyModels[0], MustParseSpec("cpu:nvfp4"), cpu.New(), nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "modelopt")
	err = m.Save(dir, qwen3.SaveOptions{Format: "nvfp4"})
	m.Free()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range [][2]string{{"cpu:stored", "cpu:stored:scalebug=0"}, {"cpu:f32", "cpu:bf16:scalebug=1:kv"}, {"cpu:stored", "cpu:f32:qat"}} {
		r, err := Compare(context.Background(), dir, MustParseSpec(c[0]), MustParseSpec(c[1]), promptIDs, Options{})
		if err != nil {
			t.Fatal(err)
		}
		want := NoDivergence
		if s := MustParseSpec(c[1]); s.ScaleBug {
			want = s.ScaleBugLayer
		}
		if r.FirstDiverging != want || !strings.Contains(r.A.Weights, "nvfp4 (modelopt)") {
			t.Errorf("%s vs %s: first diverging %s, want %s; weights %q\n%s", c[0], c[1], r.FirstDivergingName, LayerName(want, r.NumLayers), r.A.Weights, r)
		}
	}
}
