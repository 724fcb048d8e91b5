package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/qwen3"
)

// Workloads Options.Only may name.
var Workloads = []string{"decode", "prefill", "optim", "train"}

// Options control Run.
type Options struct {
	// Layers is the number of decoder layers (0: all of them). Rooflines follow it.
	Layers int
	// Quick selects the tiny shapes and sizes of QuickConfig and QuickPlan.
	Quick bool
	// Only restricts the workloads ("decode", "prefill", "optim", "train"); empty runs all.
	Only []string
	// Seed makes the weights and token ids reproducible.
	Seed uint64
	// DecodeSteps overrides the plan's one-token forwards per decode repetition.
	DecodeSteps int
	// MaxSeconds bounds the whole run (0: none): figures not started by then are reported
	// "not run", and a figure stops repeating once past it.
	MaxSeconds float64
	// FigureSeconds is each figure's repetition budget (0: 6 s; 0.5 s with Quick).
	FigureSeconds float64
	// LMHead is the inference model's lm_head format (qwen3.LoadOptions.LMHead): "" for the
	// tied bf16 embedding itself (the rooflines' assumption), "nvfp4" for an NVFP4 copy.
	LMHead string
	// Log receives progress lines (nil: none).
	Log io.Writer
}

// Repetition policy of measure.
const (
	minReps = 3
	maxReps = 5
	// LongRun is the duration past which a warm-up is the figure's only sample.
	LongRun = 10 * time.Second
)

// runner holds one run's state.
type runner struct {
	ctx      context.Context
	b        backend.Backend
	opt      Options
	cfg      *qwen3.Config
	plan     Plan
	m        *qwen3.Model
	rep      *Report
	roof     Roofline
	start    time.Time
	deadline time.Time
	budget   time.Duration
	rng      *rand.Rand
}

// Run builds the random model on b and measures the selected figures. The report lists every
// figure of the plan: measured ones with StatusOK, the others with the reason. The error is
// non-nil only for invalid options; a failure while measuring is a figure's status.
func Run(ctx context.Context, b backend.Backend, opt Options) (*Report, error) {
	for _, w := range opt.Only {
		if !slices.Contains(Workloads, w) {
			return nil, fmt.Errorf("bench: unknown workload %q (want %s)", w, strings.Join(Workloads, ", "))
		}
	}
	if opt.Layers < 0 {
		return nil, fmt.Errorf("bench: %d layers", opt.Layers)
	}
	if opt.LMHead != "" && opt.LMHead != qwen3.NVFP4 {
		return nil, fmt.Errorf("bench: unknown lm_head format %q (want \"\" or nvfp4)", opt.LMHead)
	}
	r := &runner{ctx: ctx, b: b, opt: opt, start: time.Now(), rng: rand.New(rand.NewPCG(opt.Seed, 7))}
	full := FullLayers
	if opt.Quick {
		r.cfg, r.plan, r.budget, full = QuickConfig(opt.Layers), QuickPlan(), 500*time.Millisecond, QuickConfig(0).NumLayers
	} else {
		r.cfg, r.plan, r.budget = Qwen4B(opt.Layers), FullPlan(), 6*time.Second
	}
	if opt.DecodeSteps > 0 {
		r.plan.DecodeSteps = opt.DecodeSteps
	}
	if opt.FigureSeconds > 0 {
		r.budget = time.Duration(opt.FigureSeconds * float64(time.Second))
	}
	if opt.MaxSeconds > 0 {
		r.deadline = r.start.Add(time.Duration(opt.MaxSeconds * float64(time.Second)))
	}
	r.roof = Roofline{Cfg: r.cfg}
	if g, err := trainGrad(); err == nil {
		r.roof.GradBF16 = g == "bf16"
	}
	c := r.cfg
	r.rep = &Report{Side: "qwengo", Device: b.Name(), Software: "qwengo engine, backend " + b.Name(), Quick: opt.Quick,
		Model: ModelInfo{Layers: c.NumLayers, FullLayers: full, Hidden: c.HiddenSize, Intermediate: c.IntermediateSize,
			Heads: c.NumHeads, KVHeads: c.NumKVHeads, HeadDim: c.HeadDim, Vocab: c.VocabSize, Tied: c.TieEmbeddings,
			Params: c.NumParams(), Weights: "NVFP4 linears, bf16 embedding = lm_head"}}
	if opt.LMHead == qwen3.NVFP4 {
		r.rep.Model.Weights = "NVFP4 linears, bf16 embedding, NVFP4 copy of it as lm_head (--lm-head nvfp4; rooflines still count a bf16 lm_head)"
	}
	r.rep.Figures = r.figures()
	r.rep.Notes = append(r.rep.Notes,
		"decode: every step is one qwen3.Forward in LogitsGreedy mode: the next token is picked on the device (backend.ArgMaxer) and only its id is downloaded",
		"timings: wall clock around calls that end with a download; warm-up, then the median of up to 5 repetitions")
	defer func() { r.rep.TotalSeconds = time.Since(r.start).Seconds() }()

	if r.want("prefill") || r.want("decode") {
		if r.build() {
			r.inference()
			if r.want("decode") {
				r.batchDecode()
			}
			r.m.Free() // training figures start without the inference weights
			r.m = nil
		}
	}
	if r.want("optim") {
		r.optimizer()
	}
	if r.want("train") {
		if rc, ok := b.(interface{ ReleaseCache() error }); ok {
			if err := rc.ReleaseCache(); err != nil {
				r.logf("release cached blocks before training: %v", err)
			}
		}
		r.train()
		r.train4bit()
	}
	return r.rep, nil
}

// build makes the inference model (NVFP4 linears); on failure every inference figure says why.
func (r *runner) build() bool {
	c := r.cfg
	r.logf("building a random %d-layer Qwen3-4B-shaped model on %s", c.NumLayers, r.b.Name())
	t0 := time.Now()
	m, err := NewModel(c, r.b, qwen3.LoadOptions{Precision: qwen3.NVFP4, LMHead: r.opt.LMHead}, r.opt.Seed)
	r.rep.BuildSeconds = time.Since(t0).Seconds()
	if err != nil {
		for i := range r.rep.Figures {
			f := &r.rep.Figures[i]
			if f.Status == "not run" && (strings.HasPrefix(f.Key, "prefill_") || strings.HasPrefix(f.Key, "decode_")) {
				f.Status = "not run: model build failed: " + err.Error()
			}
		}
		return false
	}
	r.m = m
	r.rep.Model.WeightBytes = m.WeightBytes()
	r.logf("built in %.1f s: %s", r.rep.BuildSeconds, m)
	return true
}

func (r *runner) logf(format string, a ...any) {
	if r.opt.Log != nil {
		fmt.Fprintf(r.opt.Log, "bench: "+format+"\n", a...)
	}
}

// want reports whether workload w was selected.
func (r *runner) want(w string) bool { return len(r.opt.Only) == 0 || slices.Contains(r.opt.Only, w) }

func decodeKey(ctx int) string    { return fmt.Sprintf("decode_b1_ctx%d", ctx) }
func batchKey(p Plan) string      { return fmt.Sprintf("decode_b%d_ctx%d", p.BatchDecode, p.BatchContext) }
func prefillKey(s int) string     { return fmt.Sprintf("prefill_s%d", s) }
func trainKey(s, b int) string    { return fmt.Sprintf("train_s%d_b%d", s, b) }
func bytesPerParamKey() string    { return "train_bytes_per_param" }
func train4Key(p Plan) string     { return fmt.Sprintf("train4bit_s%d_b1", p.TrainLengths[0]) }
func notSelected(w string) string { return "not run: not selected (--only without " + w + ")" }

// figures lists every figure of the plan, in table order, with its roofline.
func (r *runner) figures() []Figure {
	p := r.plan
	var fs []Figure
	add := func(w string, f Figure) {
		f.Status = notSelected(w)
		if r.want(w) {
			f.Status = "not run"
		}
		if r.opt.Quick {
			f.Roofline, f.Basis = 0, "" // H200 bounds mean nothing for the tiny shapes
		}
		fs = append(fs, f)
	}
	for _, ctx := range p.DecodeContexts {
		add("decode", Figure{Key: decodeKey(ctx), Label: fmt.Sprintf("decode batch 1, context %d", ctx), Unit: "tok/s", Better: "higher",
			Roofline: r.roof.Decode(1, ctx), Basis: DecodeBasis})
	}
	add("decode", Figure{Key: batchKey(p), Label: fmt.Sprintf("decode batch %d (all sequences), context %d", p.BatchDecode, p.BatchContext),
		Unit: "tok/s", Better: "higher", Roofline: r.roof.Decode(p.BatchDecode, p.BatchContext), Basis: DecodeBasis})
	for _, s := range p.PrefillLengths {
		add("prefill", Figure{Key: prefillKey(s), Label: fmt.Sprintf("prefill S=%d (to last-row logits)", s), Unit: "tok/s", Better: "higher",
			Roofline: r.roof.Prefill(s), Basis: PrefillBasis})
	}
	for _, s := range p.TrainLengths {
		for _, b := range p.TrainBatches {
			k := trainKey(s, b)
			add("train", Figure{Key: k + "_tps", Label: fmt.Sprintf("train step S=%d batch %d", s, b), Unit: "tok/s", Better: "higher",
				Roofline: r.roof.Train(s), Basis: TrainBasis})
			add("train", Figure{Key: k + "_peak", Label: fmt.Sprintf("train peak memory S=%d batch %d", s, b), Unit: "GiB", Better: "lower"})
			add("train", Figure{Key: k + "_optim", Label: fmt.Sprintf("optimizer step S=%d batch %d", s, b), Unit: "ms", Better: "lower",
				Roofline: r.roof.Optimizer(r.cfg.NumParams()), Basis: r.roof.OptimizerBasis()})
		}
	}
	add("train", Figure{Key: bytesPerParamKey(), Label: "optimizer state per parameter", Unit: "B/param", Better: "lower"})
	k4 := train4Key(p)
	add("train", Figure{Key: k4 + "_tps", Label: fmt.Sprintf("train step S=%d batch 1, 4-bit states", p.TrainLengths[0]), Unit: "tok/s",
		Better: "higher", Roofline: r.roof.Train(p.TrainLengths[0]), Basis: TrainBasis})
	add("train", Figure{Key: k4 + "_peak", Label: fmt.Sprintf("train peak memory S=%d batch 1, 4-bit states", p.TrainLengths[0]), Unit: "GiB",
		Better: "lower"})
	for _, f := range optimFormats {
		add("optim", Figure{Key: optimKey(f), Label: fmt.Sprintf("optimizer step, %s parameters, %s states", paramCount(r.cfg.NumParams()), f),
			Unit: "ms", Better: "lower", Roofline: r.roof.OptimizerStep(f), Basis: r.roof.OptimizerStepBasis(f)})
	}
	return fs
}

// failAll gives every figure still to run the status s.
func (r *runner) failAll(s string) {
	for i := range r.rep.Figures {
		if r.rep.Figures[i].Status == "not run" {
			r.rep.Figures[i].Status = s
		}
	}
}

// stopReason says why no new figure may start ("" when one may).
func (r *runner) stopReason() string {
	if err := r.ctx.Err(); err != nil {
		return "not run: interrupted (" + err.Error() + ")"
	}
	if !r.deadline.IsZero() && time.Now().After(r.deadline) {
		return fmt.Sprintf("not run: time budget spent (--max-seconds %g)", r.opt.MaxSeconds)
	}
	return ""
}

// failure turns an error into a figure status.
func failure(err error) string {
	var ob *backend.OverBudget
	if errors.As(err, &ob) || strings.Contains(strings.ToLower(err.Error()), "out of memory") {
		return "oom: " + err.Error()
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return "not run: interrupted (" + err.Error() + ")"
	}
	return "error: " + err.Error()
}

// profileStart opens the profiler's capture range around the first timed repetition of the
// figure QWENGO_BENCH_PROFILE names (backends with ProfileRange: CUDA), so that
// `ncu --profile-from-start off` or `nsys --capture-range=cudaProfilerApi` sees exactly one
// warm repetition; it returns the function that closes the range (a no-op otherwise).
func (r *runner) profileStart(f *Figure, first bool) func() {
	p, ok := r.b.(backend.Profiler)
	if !ok || !first || os.Getenv("QWENGO_BENCH_PROFILE") != f.Key {
		return func() {}
	}
	if err := p.ProfileRange(true); err != nil {
		r.logf("%s: profiler range: %v", f.Key, err)
		return func() {}
	}
	r.logf("%s: profiling one repetition (QWENGO_BENCH_PROFILE)", f.Key)
	return func() {
		if err := p.ProfileRange(false); err != nil {
			r.logf("%s: profiler range: %v", f.Key, err)
		}
		r.logKernelTimes(f.Key, p.KernelTimes())
	}
}

// logKernelTimes logs the kernels of a timed profiling range (QWENGO_CUDA_KERNEL_TIMES=1 on
// CUDA), longest total first: the top 30 and what the rest add up to.
func (r *runner) logKernelTimes(key string, times []backend.KernelTime) {
	table := backend.FormatKernelTimes(times, 30)
	if table == "" {
		return
	}
	lines := strings.Split(strings.TrimSuffix(table, "\n"), "\n")
	r.logf("%s: kernel times of one repetition: %s", key, lines[0])
	for _, l := range lines[1:] {
		r.logf("%s", l)
	}
}

// measure fills f from repetitions of once, which returns one sample in f's unit and the
// time it took: a warm-up, then samples until maxReps, or minReps and the figure's budget, or
// twice the budget, or the run's deadline. A warm-up longer than LongRun is the only sample.
func (r *runner) measure(f *Figure, once func() (float64, time.Duration, error)) {
	if s := r.stopReason(); s != "" {
		f.Status = s
		return
	}
	r.b.ResetPeak()
	v, d, err := once()
	if err != nil {
		f.Status = failure(err)
		r.logf("%s: %s", f.Key, f.Status)
		return
	}
	var samples []float64
	if d > LongRun {
		samples = []float64{v}
		f.Note = fmt.Sprintf("one run (the warm-up, %.1f s): a run takes longer than %v", d.Seconds(), LongRun)
	} else {
		var spent time.Duration
		for len(samples) < maxReps {
			if len(samples) > 0 {
				past := !r.deadline.IsZero() && time.Now().After(r.deadline)
				if past || r.ctx.Err() != nil || (spent > r.budget && len(samples) >= minReps) || spent > 2*r.budget {
					break
				}
			}
			stop := r.profileStart(f, len(samples) == 0)
			v, d, err := once()
			stop()
			if err != nil && len(samples) > 0 && strings.HasPrefix(failure(err), "not run: interrupted") {
				f.Note = fmt.Sprintf("interrupted after %d samples", len(samples))
				break
			}
			if err != nil {
				f.Status = failure(err)
				r.logf("%s: %s", f.Key, f.Status)
				return
			}
			samples = append(samples, v)
			spent += d
		}
	}
	f.Samples = samples
	f.Value = median(samples)
	f.Status = StatusOK
	f.PeakBytes = r.b.Memory().Peak
	r.logf("%s: %s %s (samples %v, peak %s)", f.Key, num(f.Value), f.Unit, roundAll(samples), backend.Human(f.PeakBytes))
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func roundAll(xs []float64) []string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = num(x)
	}
	return out
}

// ids returns n random token ids.
func (r *runner) ids(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = r.rng.IntN(r.cfg.VocabSize)
	}
	return out
}

// inference measures prefill and decode figures, ascending in length: a prefill of S tokens
// leaves its cache filled, and the decode figure at context S continues from it.
func (r *runner) inference() {
	p := r.plan
	var sizes []int
	if r.want("prefill") {
		sizes = append(sizes, p.PrefillLengths...)
	}
	if r.want("decode") {
		sizes = append(sizes, p.DecodeContexts...)
	}
	slices.Sort(sizes)
	sizes = slices.Compact(sizes)
	for _, s := range sizes {
		pf, df := r.rep.Figure(prefillKey(s)), r.rep.Figure(decodeKey(s))
		if !r.want("prefill") {
			pf = nil
		}
		if !r.want("decode") {
			df = nil
		}
		if pf == nil && df == nil {
			continue
		}
		if reason := r.stopReason(); reason != "" {
			for _, f := range []*Figure{pf, df} {
				if f != nil {
					f.Status = reason
				}
			}
			continue
		}
		cache, err := r.m.NewKVCache(s + p.DecodeSteps)
		if err != nil {
			for _, f := range []*Figure{pf, df} {
				if f != nil {
					f.Status = failure(fmt.Errorf("kv cache for %d tokens: %w", s+p.DecodeSteps, err))
				}
			}
			continue
		}
		prompt := r.ids(s)
		prefill := func() (float64, time.Duration, error) {
			cache.Reset()
			t0 := time.Now()
			_, err := r.m.Forward(r.ctx, prompt, cache, qwen3.LogitsLast)
			d := time.Since(t0)
			return float64(s) / d.Seconds(), d, err
		}
		if pf != nil {
			r.measure(pf, prefill)
		}
		if df != nil {
			if reason := r.stopReason(); reason != "" {
				df.Status = reason
			} else if cache.Len() != s {
				if _, _, err := prefill(); err != nil {
					df.Status = failure(fmt.Errorf("prefill of %d tokens: %w", s, err))
				}
			}
			if cache.Len() == s {
				r.measure(df, func() (float64, time.Duration, error) { return r.decode(cache, s) })
			}
		}
		cache.Free()
	}
}

// batchDecode measures the batched decode figure as peer.py does: BatchDecode sequences
// prefilled to BatchContext tokens (each its own prompt, in its own rows of one batch KV cache,
// untimed), then DecodeSteps steps of qwen3.ForwardBatch in LogitsGreedy mode, every sequence
// fed its own greedy pick; tokens/s counts all sequences (B × steps / seconds).
func (r *runner) batchDecode() {
	p := r.plan
	f := r.rep.Figure(batchKey(p))
	if f == nil {
		return
	}
	if reason := r.stopReason(); reason != "" {
		f.Status = reason
		return
	}
	cache, err := r.m.NewBatchKVCache(p.BatchDecode, p.BatchContext+p.DecodeSteps)
	if err != nil {
		f.Status = failure(fmt.Errorf("batch kv cache for %d sequences of %d tokens: %w", p.BatchDecode, p.BatchContext+p.DecodeSteps, err))
		return
	}
	defer cache.Free()
	for i := 0; i < p.BatchDecode; i++ {
		if _, err := r.m.Forward(r.ctx, r.ids(p.BatchContext), cache.Seq(i), qwen3.LogitsNone); err != nil {
			f.Status = failure(fmt.Errorf("prefill of sequence %d (%d tokens): %w", i, p.BatchContext, err))
			return
		}
	}
	r.measure(f, func() (float64, time.Duration, error) {
		next := make([]int, p.BatchDecode)
		for i := range next {
			if err := cache.Seq(i).Truncate(p.BatchContext); err != nil {
				return 0, 0, err
			}
			next[i] = r.rng.IntN(r.cfg.VocabSize)
		}
		t0 := time.Now()
		for step := 0; step < p.DecodeSteps; step++ {
			lg, err := r.m.ForwardBatch(r.ctx, next, cache, qwen3.LogitsGreedy)
			if err != nil {
				return 0, 0, fmt.Errorf("batched decode step %d: %w", step, err)
			}
			copy(next, lg.Greedy)
		}
		d := time.Since(t0)
		return float64(p.DecodeSteps*p.BatchDecode) / d.Seconds(), d, nil
	})
	if f.OK() {
		how := "one launch per op for all sequences (backend.Batched)"
		if _, ok := backend.UseBatched(r.b); !ok {
			how = "the per-sequence ops one sequence at a time (no backend.Batched)"
		}
		note := fmt.Sprintf("qwen3.ForwardBatch over one batch KV cache: %d sequences of %d tokens, %d steps; %s", p.BatchDecode, p.BatchContext, p.DecodeSteps, how)
		if f.Note != "" {
			note += "; " + f.Note
		}
		f.Note = note
	}
}

// decode runs the plan's decode steps from context s (truncating the cache back to s
// first): one token per forward, logits on the host, the greedy pick fed back.
func (r *runner) decode(cache *qwen3.KVCache, s int) (float64, time.Duration, error) {
	if err := cache.Truncate(s); err != nil {
		return 0, 0, err
	}
	next := []int{r.rng.IntN(r.cfg.VocabSize)}
	t0 := time.Now()
	for i := 0; i < r.plan.DecodeSteps; i++ {
		lg, err := r.m.Forward(r.ctx, next, cache, qwen3.LogitsGreedy)
		if err != nil {
			return 0, 0, fmt.Errorf("decode step %d at position %d: %w", i, cache.Len(), err)
		}
		next[0] = lg.Greedy
	}
	d := time.Since(t0)
	return float64(r.plan.DecodeSteps) / d.Seconds(), d, nil
}
