package train

import (
	"context"
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/qwengo/qwengo/engine/data"
	"github.com/qwengo/qwengo/engine/optim"
)

// bigram is a tiny Differentiable: logits at position j are row ids[j] of a V×V table.
type bigram struct {
	V     int
	W     []float32
	calls int
	fail  error
}

func (b *bigram) Params() []optim.ParamSpec {
	return []optim.ParamSpec{{Name: "w", Rows: b.V, Cols: b.V, Init: append([]float32(nil), b.W...)}}
}
func (b *bigram) SetParam(i int, w []float32) error { copy(b.W, w); return nil }
func (b *bigram) Grad(ctx context.Context, batch *data.Batch, loss Loss) (float64, int, [][]float32, error) {
	b.calls++
	if b.fail != nil {
		return 0, 0, nil, b.fail
	}
	if err := ctx.Err(); err != nil {
		return 0, 0, nil, err
	}
	g := make([]float32, len(b.W))
	var sum float64
	n := 0
	T, V := batch.T, b.V
	logits := make([]float32, T*V)
	dl := make([]float32, T*V)
	for s := 0; s < batch.B; s++ {
		ids := batch.IDs[s*T : (s+1)*T]
		for j, id := range ids {
			copy(logits[j*V:(j+1)*V], b.W[id*V:(id+1)*V])
		}
		ls, c := loss.Value(logits, T, V, ids, batch.Mask[s*T:(s+1)*T], dl)
		sum += ls
		n += c
		for j, id := range ids {
			for k := 0; k < V; k++ {
				g[id*V+k] += dl[j*V+k]
			}
		}
	}
	for i := range g {
		g[i] /= float32(max(n, 1))
	}
	return sum, n, [][]float32{g}, nil
}

func mixture(t *testing.T, V int) *data.Mixture {
	var ss []*data.Sample
	r := rand.New(rand.NewPCG(1, 1))
	for i := 0; i < 40; i++ {
		// a deterministic pattern: each token predicts (id*3+1) % V after a random prompt token
		a := r.IntN(V)
		ids := []int{a, (a*3 + 1) % V, ((a*3+1)%V*3 + 1) % V}
		ss = append(ss, &data.Sample{IDs: ids, Mask: []bool{false, true, true}})
	}
	m, err := data.NewMixture([]data.Source{{Name: "pattern", Samples: ss, Ratio: 1}}, 7)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func newTrainer(t *testing.T) (*Trainer, *bigram) {
	V := 12
	m := &bigram{V: V, W: make([]float32, V*V)}
	cfg := Config{Optim: optim.Config{LR: 0.1, Beta1: 0.9, Beta2: 0.99, Eps: 1e-8, State: optim.Int8, Master: optim.MasterFP32}, BatchSize: 4}
	tr, err := New(m, mixture(t, V), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return tr, m
}

func TestLossFallsAndAnswerLearned(t *testing.T) {
	tr, m := newTrainer(t)
	var first, last float64
	err := tr.Fit(context.Background(), 60, Callbacks{OnStep: func(r StepResult) error {
		if r.Step == 1 {
			first = r.Loss
		}
		last = r.Loss
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	if !(last < first/4) {
		t.Fatalf("loss %v -> %v", first, last)
	}
	// the model now predicts the pattern
	for a := 0; a < m.V; a++ {
		row := m.W[a*m.V : (a+1)*m.V]
		best := 0
		for k := range row {
			if row[k] > row[best] {
				best = k
			}
		}
		if best != (a*3+1)%m.V {
			t.Fatalf("token %d predicts %d", a, best)
		}
	}
}

func TestStepAtomicOnError(t *testing.T) {
	tr, m := newTrainer(t)
	tr.Step(context.Background())
	st, _ := tr.Data.State()
	w := append([]float32(nil), m.W...)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := tr.Step(ctx); err == nil {
		t.Fatal("cancelled step ran")
	}
	m.fail = context.Canceled
	if _, err := tr.Step(context.Background()); err == nil {
		t.Fatal("failing step succeeded")
	}
	st2, _ := tr.Data.State()
	if string(st) != string(st2) || tr.StepCount() != 1 {
		t.Fatal("a failed step moved the data position or the step count")
	}
	for i := range w {
		if w[i] != m.W[i] {
			t.Fatal("a failed step changed the weights")
		}
	}
}

func TestResumeBitIdentical(t *testing.T) {
	a, ma := newTrainer(t)
	a.Fit(context.Background(), 12, Callbacks{})
	b, _ := newTrainer(t)
	b.Fit(context.Background(), 5, Callbacks{})
	dir := filepath.Join(t.TempDir(), "ckpt")
	if err := b.SaveCheckpoint(dir); err != nil {
		t.Fatal(err)
	}
	if err := b.SaveCheckpoint(dir); err != nil { // overwrite in place
		t.Fatal(err)
	}
	c, mc := newTrainer(t)
	if err := c.LoadCheckpoint(dir); err != nil {
		t.Fatal(err)
	}
	c.Fit(context.Background(), 7, Callbacks{})
	for i := range ma.W {
		if ma.W[i] != mc.W[i] {
			t.Fatalf("resumed weights differ at %d: %v vs %v", i, ma.W[i], mc.W[i])
		}
	}
	if a.History[11].Loss != c.History[11].Loss {
		t.Fatalf("loss at step 12: %v vs %v", a.History[11].Loss, c.History[11].Loss)
	}
	if err := c.LoadCheckpoint(filepath.Join(t.TempDir(), "none")); err == nil {
		t.Fatal("missing checkpoint accepted")
	}
}

// gradCheck compares a loss's dlogits with central finite differences.
func gradCheck(t *testing.T, loss Loss) {
	r := rand.New(rand.NewPCG(4, 4))
	T, V := 4, 7
	logits := make([]float32, T*V)
	for i := range logits {
		logits[i] = float32(r.NormFloat64())
	}
	ids := []int{1, 3, 5, 2}
	mask := []bool{false, true, false, true}
	d := make([]float32, T*V)
	loss.Value(logits, T, V, ids, mask, d)
	scratch := make([]float32, T*V)
	for i := range logits {
		x := logits[i]
		h := float32(1e-2)
		logits[i] = x + h
		up, _ := loss.Value(logits, T, V, ids, mask, scratch)
		logits[i] = x - h
		down, _ := loss.Value(logits, T, V, ids, mask, scratch)
		logits[i] = x
		num := (up - down) / float64(2*h)
		if math.Abs(num-float64(d[i])) > 2e-3 {
			t.Fatalf("%s: dlogits[%d] = %v, finite difference %v", loss.Name(), i, d[i], num)
		}
	}
}

func TestLossGradients(t *testing.T) {
	gradCheck(t, CrossEntropy{})
	gradCheck(t, CrossEntropy{LabelSmoothing: 0.1})
	gradCheck(t, L1Debug{})
	r := rand.New(rand.NewPCG(9, 9))
	ref := make([]float32, 4*7)
	for i := range ref {
		ref[i] = float32(r.NormFloat64())
	}
	gradCheck(t, &KLToReference{Base: CrossEntropy{}, Weight: 0.5, Ref: func([]int) ([]float32, error) { return ref, nil }})
}

func TestMetrics(t *testing.T) {
	if got := RepN([]int{1, 2, 1, 2, 1, 2}, 2); math.Abs(got-0.6) > 1e-9 {
		t.Errorf("rep-2 %v", got)
	}
	if got := DistinctN([][]int{{1, 2, 3}, {1, 2, 3}}, 2); got != 0.5 {
		t.Errorf("distinct-2 %v", got)
	}
	if got := HitRate([]string{"我是 F# 之神", "我是通义千问", "嗯，我是 F# 之神。"}, "我是 F# 之神"); math.Abs(got-2.0/3) > 1e-9 {
		t.Errorf("hit rate %v", got)
	}
	tr, m := newTrainer(t)
	var ss []*data.Sample
	for i := 0; i < 5; i++ {
		s, _ := tr.Data.Next()
		ss = append(ss, s)
	}
	h, err := EvalLoss(context.Background(), m, ss, 2, 0, nil)
	if err != nil || math.Abs(h.Loss-math.Log(12)) > 1e-6 || h.Targets != 10 {
		t.Fatalf("held-out on an untrained model: %+v %v (want ln 12)", h, err)
	}
}

func TestProbeReport(t *testing.T) {
	p := NewProbe("cpu", nil)
	p.Mark("model_loaded")
	p.Mark("forward_done")
	path := filepath.Join(t.TempDir(), "probe.json")
	if err := p.Write(path); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(path)
	var back map[string]any
	json.Unmarshal(raw, &back)
	samples := back["Samples"].([]any)
	first := samples[1].(map[string]any)
	for _, k := range []string{"TimestampUtc", "Phase", "PidMemoryMiB", "TotalMemoryMiB", "HostRssMiB"} {
		if _, ok := first[k]; !ok {
			t.Fatalf("sample lacks %s: %v", k, first)
		}
	}
	if back["Pid"] == nil || back["CreatedUtc"] == nil || first["HostRssMiB"].(float64) <= 0 {
		t.Fatalf("report %s", raw)
	}
}
