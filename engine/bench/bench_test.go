package bench

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/cpu"
	"github.com/qwengo/qwengo/engine/format"
	"github.com/qwengo/qwengo/engine/tensor"
)

// TestQuickRunCPU runs the whole benchmark in --quick mode on the CPU backend, writes and
// reads back its JSON, and checks every figure of the plan is there with a value or a reason.
func TestQuickRunCPU(t *testing.T) {
	rep, err := Run(context.Background(), cpu.New(), Options{Quick: true, Seed: 1, FigureSeconds: 0.05})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "ours.json")
	if err := rep.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	back, err := ReadReport(path)
	if err != nil {
		t.Fatal(err)
	}
	if back.Side != "qwengo" || !back.Quick || back.Model.Layers != 2 || back.Model.WeightBytes <= 0 || back.BuildSeconds <= 0 {
		t.Errorf("report header: %+v", back)
	}
	p := QuickPlan()
	want := map[string]bool{}
	for _, s := range p.PrefillLengths {
		want[prefillKey(s)] = true
	}
	for _, c := range p.DecodeContexts {
		want[decodeKey(c)] = true
	}
	for k := range want {
		f := back.Figure(k)
		if f == nil {
			t.Errorf("figure %s missing", k)
			continue
		}
		if !f.OK() || f.Value <= 0 || len(f.Samples) == 0 || f.PeakBytes < back.Model.WeightBytes || f.Roofline != 0 || f.Unit != "tok/s" {
			t.Errorf("figure %s: %+v", k, f)
		}
		if f.Value != median(f.Samples) {
			t.Errorf("figure %s: value %v is not the median of %v", k, f.Value, f.Samples)
		}
	}
	// The batched decode figure is measured (qwen3.ForwardBatch with the CPU's batched ops),
	// not reported as StatusNoBatch.
	if f := back.Figure(batchKey(p)); f == nil || !f.OK() || f.Value <= 0 || len(f.Samples) == 0 || f.Unit != "tok/s" ||
		f.Value != median(f.Samples) || f.PeakBytes < back.Model.WeightBytes || !strings.Contains(f.Note, "ForwardBatch") ||
		!strings.Contains(f.Note, "one launch per op") {
		t.Errorf("batched decode: %+v", f)
	}
	nTrain := 0
	for _, f := range back.Figures {
		if strings.HasPrefix(f.Key, "train_") {
			nTrain++
			if f.Status == "not run" || f.Status == "" {
				t.Errorf("training figure %s left without a reason: %q", f.Key, f.Status)
			}
		}
	}
	if want := 3*len(p.TrainLengths)*len(p.TrainBatches) + 1; nTrain != want {
		t.Errorf("%d training figures, want %d", nTrain, want)
	}
	// The standalone optimizer steps and the 4-bit training step run on the CPU too, and the
	// 4-bit states take about half the int8 ones' bytes (tiny shapes: row and column maxima
	// weigh more than at 4B).
	for _, k := range []string{optimKey("int8"), optimKey("4bit"), train4Key(p) + "_tps", train4Key(p) + "_peak"} {
		f := back.Figure(k)
		if f == nil || !f.OK() || f.Value <= 0 || len(f.Samples) == 0 || f.Roofline != 0 {
			t.Errorf("figure %s: %+v", k, f)
			continue
		}
		if strings.HasPrefix(k, "optim_") && (f.Value != slices.Min(f.Samples) || !strings.Contains(f.Note, "B/param") || f.PeakBytes <= 0) {
			t.Errorf("figure %s: value %v is not the best of %v, or note %q", k, f.Value, f.Samples, f.Note)
		}
	}
	if f8, f4 := back.Figure(optimKey("int8")), back.Figure(optimKey("4bit")); f8 != nil && f4 != nil && f4.PeakBytes >= f8.PeakBytes {
		t.Errorf("optimizer step peak: 4bit %d bytes, int8 %d", f4.PeakBytes, f8.PeakBytes)
	}
	if f := back.Figure(train4Key(p) + "_peak"); f != nil && !strings.Contains(f.Note, "4-bit AdamW states") {
		t.Errorf("4-bit peak note %q", f.Note)
	}
	md := Markdown(back, nil)
	for _, f := range back.Figures {
		if !strings.Contains(md, f.Label) {
			t.Errorf("markdown lacks %q:\n%s", f.Label, md)
		}
	}
	t.Log("\n" + md)
}

// TestLMHeadOption runs the quick decode figures with an NVFP4 copy of the lm_head and refuses
// an unknown head format by name.
func TestLMHeadOption(t *testing.T) {
	if _, err := Run(context.Background(), cpu.New(), Options{Quick: true, LMHead: "fp8"}); err == nil || !strings.Contains(err.Error(), `"fp8"`) {
		t.Errorf("lm_head fp8: %v", err)
	}
	rep, err := Run(context.Background(), cpu.New(), Options{Quick: true, Only: []string{"decode"}, FigureSeconds: 0.01, LMHead: "nvfp4"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(rep.Model.Weights, "NVFP4 copy") {
		t.Errorf("report's weights %q do not name the NVFP4 lm_head", rep.Model.Weights)
	}
	for _, f := range rep.Figures {
		if strings.HasPrefix(f.Key, "decode_") && !f.OK() {
			t.Errorf("%s: %s", f.Key, f.Status)
		}
	}
}

func TestOnlyAndDeadline(t *testing.T) {
	if _, err := Run(context.Background(), cpu.New(), Options{Quick: true, Only: []string{"decoding"}}); err == nil || !strings.Contains(err.Error(), "decoding") {
		t.Errorf("unknown workload: %v", err)
	}
	rep, err := Run(context.Background(), cpu.New(), Options{Quick: true, Only: []string{"prefill"}, FigureSeconds: 0.01})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range rep.Figures {
		isPrefill := strings.HasPrefix(f.Key, "prefill_")
		if isPrefill != f.OK() {
			t.Errorf("--only prefill: %s has status %q", f.Key, f.Status)
		}
		if !isPrefill && !strings.Contains(f.Status, "not selected") {
			t.Errorf("--only prefill: %s: %q", f.Key, f.Status)
		}
	}
	// A budget spent before the first figure: every figure says so.
	rep, err = Run(context.Background(), cpu.New(), Options{Quick: true, Only: []string{"decode"}, MaxSeconds: 1e-9})
	if err != nil {
		t.Fatal(err)
	}
	if f := rep.Figure(decodeKey(QuickPlan().DecodeContexts[0])); f == nil || !strings.Contains(f.Status, "time budget") {
		t.Errorf("past the deadline: %+v", f)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	rep, err = Run(ctx, cpu.New(), Options{Quick: true, Only: []string{"prefill"}})
	if err != nil {
		t.Fatal(err)
	}
	if f := rep.Figure(prefillKey(QuickPlan().PrefillLengths[0])); f == nil || !strings.Contains(f.Status, "interrupted") {
		t.Errorf("cancelled: %+v", f)
	}
}

// TestRooflineAnchors checks the rooflines reproduce shared/reference/anchors.md for 36 layers.
func TestRooflineAnchors(t *testing.T) {
	r := Roofline{Cfg: Qwen4B(0)}
	near := func(name string, got, want, tol float64) {
		t.Helper()
		if math.Abs(got-want) > tol*want {
			t.Errorf("%s = %.4g, want %.4g ±%.1f%%", name, got, want, 100*tol)
		}
	}
	near("decode at context 0 (NVFP4 linears, bf16 lm_head)", r.Decode(1, 0), 1524, 0.005)
	near("training FLOPs per token at S=2048", MatMulFLOPPerSec/r.Train(2048), 26e9, 0.01)
	near("prefill S=2048 at 40 % of the matmul rate", 0.4*r.Prefill(2048), 40e3, 0.02)
	if r.Decode(1, 8192) >= r.Decode(1, 512) || r.Decode(8, 1024) <= r.Decode(1, 1024) {
		t.Error("decode roofline should fall with context and rise with batch")
	}
	near("optimizer step over 4.02B parameters", r.Optimizer(Qwen4B(0).NumParams()), 11.45, 0.01)
	// The standalone step: 12.25 B/param for int8 (bf16 matrices), 14.56 for 4bit (the gradient
	// read twice), the norms' f32 masters a rounding error at 4B.
	near("standalone int8 step", r.OptimizerStep("int8"), 4.022e9*12.25/4.3e12*1e3, 0.002)
	near("standalone 4bit step", r.OptimizerStep("4bit"), 4.022e9*14.5625/4.3e12*1e3, 0.002)
	if b := r.OptimizerStepBasis("4bit"); !strings.Contains(b, "14.56 B/param") {
		t.Errorf("4bit basis %q", b)
	}
	// bf16 gradients (devtrain's default): 2 bytes less a matrix parameter, 4 less for 4bit's two reads.
	r16 := Roofline{Cfg: Qwen4B(0), GradBF16: true}
	near("int8 step, bf16 gradients", r16.OptimizerStep("int8"), 4.022e9*10.25/4.3e12*1e3, 0.002)
	near("4bit step, bf16 gradients", r16.OptimizerStep("4bit"), 4.022e9*10.5625/4.3e12*1e3, 0.002)
	near("in-training step, bf16 gradients", r16.Optimizer(Qwen4B(0).NumParams()), 4.022e9*10.25/4.3e12*1e3, 0.002)
	if b := r16.OptimizerStepBasis("int8"); !strings.Contains(b, "10.25 B/param") || !strings.Contains(b, "bf16 gradient") {
		t.Errorf("int8 basis with bf16 gradients %q", b)
	}
	if n := Qwen4B(0).NumParams(); n < 4.0e9 || n > 4.03e9 {
		t.Errorf("Qwen3-4B parameters %d", n)
	}
}

func TestMarkdownCombine(t *testing.T) {
	ours := &Report{Side: "qwengo", Device: "GPU A", Model: ModelInfo{Layers: 36, FullLayers: 36}, Figures: []Figure{
		{Key: "decode_b1_ctx512", Label: "decode", Unit: "tok/s", Better: "higher", Status: StatusOK, Value: 850, Roofline: 1700, Basis: DecodeBasis},
		{Key: "train_s192_b1_peak", Label: "peak", Unit: "GiB", Better: "lower", Status: StatusOK, Value: 10},
		{Key: "decode_b8_ctx1024", Label: "batch", Unit: "tok/s", Better: "higher", Status: StatusNoBatch},
		{Key: "prefill_s512", Label: "prefill", Unit: "tok/s", Better: "higher", Status: "oom: out of memory budget | x"},
	}}
	peer := &Report{Side: "pytorch", Device: "GPU A", Software: "torch", Model: ModelInfo{Layers: 36}, Figures: []Figure{
		{Key: "decode_b1_ctx512", Unit: "tok/s", Better: "higher", Status: StatusOK, Value: 8.5},
		{Key: "train_s192_b1_peak", Unit: "GiB", Better: "lower", Status: StatusOK, Value: 31.7},
		{Key: "decode_b8_ctx1024", Unit: "tok/s", Better: "higher", Status: StatusOK, Value: 67},
		{Key: "peer_only", Label: "extra", Unit: "s", Better: "lower", Status: StatusOK, Value: 1},
	}}
	md := Markdown(ours, peer)
	for _, want := range []string{
		"| decode (tok/s) | 850 | 8.50 | 100.00× | 1,700 tok/s | 50.0 % |",
		"| peak (GiB) | 10.0 | 31.7 | 3.17× | — | — |",
		"| batch (tok/s) | n/a (no batched decode) | 67.0 | — |",
		"| prefill (tok/s) | oom: out of memory budget / x | — | — |",
		"| extra (s) | — | 1.00 | — |",
		DecodeBasis,
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	if strings.Contains(md, "Warning") {
		t.Errorf("same models flagged:\n%s", md)
	}
	peer.Model.Layers = 2
	if md := Markdown(ours, peer); !strings.Contains(md, "different models") {
		t.Errorf("layer mismatch not flagged:\n%s", md)
	}
}

func TestReadReportErrors(t *testing.T) {
	dir := t.TempDir()
	for i, c := range []struct{ body, want string }{
		{`{"figures": []}`, "no \"side\""},
		{`{"side": "pytorch", "figures": [{"key": "a"}]}`, "lacks a key or a status"},
		{`{"side": "pytorch", "figures": [{"key": "a", "status": "ok", "better": "sideways"}]}`, "sideways"},
		{`{"side": "pytorch", "figures": [}`, "invalid character"},
	} {
		path := filepath.Join(dir, fmt.Sprintf("r%d.json", i))
		if err := os.WriteFile(path, []byte(c.body), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := ReadReport(path); err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: error %v, want one naming the file and %q", c.body, err, c.want)
		}
	}
}

func TestFailureStatus(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("layer 3: %w", &backend.OverBudget{Request: 1 << 30, Budget: 1 << 20}), "oom: "},
		{fmt.Errorf("cuMemAlloc: CUDA_ERROR_OUT_OF_MEMORY: out of memory"), "oom: "},
		{fmt.Errorf("forward: %w", context.Canceled), "not run: interrupted"},
		{fmt.Errorf("shape mismatch"), "error: shape mismatch"},
	} {
		if got := failure(c.err); !strings.HasPrefix(got, c.want) {
			t.Errorf("failure(%v) = %q, want prefix %q", c.err, got, c.want)
		}
	}
}

func TestRandomSourceDeterministic(t *testing.T) {
	a, b := &randomSource{seed: 3}, &randomSource{seed: 3}
	for _, src := range []*randomSource{a, b} {
		src.infos = append(src.infos, fakeInfo("n", 64), fakeInfo("w", 600, 1000)) // sorted by name
	}
	x, err := a.Read("w")
	if err != nil {
		t.Fatal(err)
	}
	y, _ := b.Read("w")
	if string(x.Data) != string(y.Data) {
		t.Error("same seed and name gave different tensors")
	}
	v, _ := x.Float32s(nil)
	var sum, sq float64
	for _, f := range v {
		sum += float64(f)
		sq += float64(f) * float64(f)
	}
	std := math.Sqrt(sq/float64(len(v)) - (sum/float64(len(v)))*(sum/float64(len(v))))
	if math.Abs(std-0.02) > 0.001 {
		t.Errorf("std %v, want 0.02", std)
	}
	n, _ := a.Read("n")
	if nv, _ := n.Float32s(nil); nv[0] != 1 || nv[63] != 1 {
		t.Errorf("norm weights %v", nv[:4])
	}
	if _, err := a.Read("missing"); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing tensor: %v", err)
	}
}

func fakeInfo(name string, shape ...int) format.TensorInfo {
	n := 1
	for _, s := range shape {
		n *= s
	}
	return format.TensorInfo{Name: name, DType: tensor.BF16, Shape: shape, Size: int64(2 * n)}
}

// TestLogKernelTimes checks the kernel-time table of a profiled repetition: every kernel up to
// thirty, then what the rest add up to; nothing for an untimed range.
func TestLogKernelTimes(t *testing.T) {
	var times []backend.KernelTime
	for i := 0; i < 33; i++ {
		times = append(times, backend.KernelTime{Name: fmt.Sprintf("k%02d", i), Count: i + 1, Total: time.Duration(100-i) * time.Microsecond})
	}
	for _, c := range []struct {
		times []backend.KernelTime
		want  []string
		lines int
	}{
		{nil, nil, 0},
		{times[:2], []string{"2 kernels, 0.199 ms", "k00", "k01"}, 3},
		{times, []string{"33 kernels", "k29", "... 3 more: 0.207 ms"}, 32},
	} {
		var buf strings.Builder
		r := &runner{opt: Options{Log: &buf}}
		r.logKernelTimes("decode_b1_ctx512", c.times)
		out := buf.String()
		if n := strings.Count(out, "\n"); n != c.lines {
			t.Errorf("%d kernels: %d lines, want %d:\n%s", len(c.times), n, c.lines, out)
		}
		for _, w := range c.want {
			if !strings.Contains(out, w) {
				t.Errorf("%d kernels: no %q in\n%s", len(c.times), w, out)
			}
		}
		if len(c.times) == 33 && strings.Contains(out, "k30") {
			t.Errorf("the 31st kernel is listed:\n%s", out)
		}
	}
}

// TestRooflineFraction: the table's last column is how much of the roofline a figure reaches,
// 100 % at the roofline whether higher (tokens/s) or lower (a step's time) is better.
func TestRooflineFraction(t *testing.T) {
	for _, c := range []struct {
		f    Figure
		want float64
	}{
		{Figure{Value: 356, Roofline: 1484, Better: "higher"}, 356.0 / 1484},
		{Figure{Value: 22.1, Roofline: 11.5, Better: "lower"}, 11.5 / 22.1},
		{Figure{Value: 11.5, Roofline: 11.5, Better: "lower"}, 1},
	} {
		if got := rooflineFraction(&c.f); math.Abs(got-c.want) > 1e-12 {
			t.Errorf("%+v: fraction %.4f, want %.4f", c.f, got, c.want)
		}
	}
	ours := &Report{Side: "qwengo", Figures: []Figure{{Key: "optim_step_int8", Label: "optimizer step", Unit: "ms", Value: 22.1, Roofline: 11.5, Better: "lower", Status: StatusOK}}}
	if md := Markdown(ours, nil); !strings.Contains(md, "52.0 %") && !strings.Contains(md, "52.0%") {
		t.Errorf("the optimizer step at 22.1 ms against an 11.5 ms roofline is not shown as 52 %%:\n%s", md)
	}
}
