package bench

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/data"
	"github.com/qwengo/qwengo/engine/devtrain"
	"github.com/qwengo/qwengo/engine/grad"
)

// trainMemory returns the training figures' memory settings (devtrain.Options). By default each
// layer runs (forward, recomputation, backward) over at most four 2048-token sequences at a
// time, so its activations and their gradients take [8192, width] buffers (3.1 GB at
// Qwen3-4B's widths) instead of [B·S, width] (6.2 GB at S=2048 × 8), and each layer's input
// is kept as bf16 (3.0 GB instead of 6.0 GB at S=2048 × 8); shorter batches run whole. Four
// sequences rather than two since the flash kernels take a span's sequences in one launch
// (session 6): more sequences a launch balance the causal triangle's uneven blocks.
// QWENGO_TRAIN_LAYER_CHUNK_ROWS (0 = all rows at once) and QWENGO_TRAIN_CHECKPOINT_BF16 (0
// or 1) override them, so that one GPU session can compare the settings' speed and peak.
func trainMemory() (chunkRows int, bf16 bool, err error) {
	chunkRows, bf16 = 8192, true
	if v := os.Getenv("QWENGO_TRAIN_LAYER_CHUNK_ROWS"); v != "" {
		if chunkRows, err = strconv.Atoi(v); err != nil || chunkRows < 0 {
			return 0, false, fmt.Errorf("QWENGO_TRAIN_LAYER_CHUNK_ROWS=%q: want a row count ≥ 0", v)
		}
	}
	if v := os.Getenv("QWENGO_TRAIN_CHECKPOINT_BF16"); v != "" {
		if bf16, err = strconv.ParseBool(v); err != nil {
			return 0, false, fmt.Errorf("QWENGO_TRAIN_CHECKPOINT_BF16=%q: want 0 or 1", v)
		}
	}
	return chunkRows, bf16, nil
}

// trainGrad is the matrices' gradient type of the training and optimizer figures: devtrain's
// default, bf16 (as PyTorch keeps them for a bf16 model), unless QWENGO_TRAIN_GRAD=fp32 asks
// for float32 (for A/B runs in one GPU session).
func trainGrad() (string, error) {
	switch v := os.Getenv("QWENGO_TRAIN_GRAD"); v {
	case "", "bf16":
		return "bf16", nil
	case "fp32":
		return "fp32", nil
	default:
		return "", fmt.Errorf("QWENGO_TRAIN_GRAD=%q: want bf16 or fp32", v)
	}
}

// trainable builds the benchmark's trainable model with the given AdamW state format: a random
// host grad.Model (freed once uploaded), bf16 masters, per-layer recompute, the optimizer fused
// into the backward, and the layer-chunk and bf16-checkpoint settings of trainMemory. A failure
// comes back as a figure status ("not run: …" or a failure line).
func (r *runner) trainable(tb backend.Training, state string) (*devtrain.Model, int, bool, error) {
	chunkRows, bf16, err := trainMemory()
	if err != nil {
		return nil, 0, false, fmt.Errorf("not run: %w", err)
	}
	gradType, err := trainGrad()
	if err != nil {
		return nil, 0, false, fmt.Errorf("not run: %w", err)
	}
	gm, err := grad.New(r.cfg)
	if err != nil {
		return nil, 0, false, fmt.Errorf("not run: %w", err)
	}
	randomizeParallel(gm, r.opt.Seed)
	dm, err := devtrain.New(tb, gm, devtrain.Options{Master: "bf16", State: state, Grad: gradType, Recompute: true, FusedOptimizer: true,
		LayerChunkRows: chunkRows, CheckpointBF16: bf16})
	gm = nil
	runtime.GC()
	if err != nil {
		return nil, 0, false, errors.New(failure(fmt.Errorf("devtrain.New with %s states: %w", state, err)))
	}
	return dm, chunkRows, bf16, nil
}

// train measures full-parameter training steps through engine/devtrain: bf16 master weights,
// int8 AdamW moments, activation recompute, the optimizer fused into the backward pass.
// Every (S, batch) of the plan: tokens/s over whole steps (B·S tokens each), the backend's peak
// memory, the optimizer phase's time; once, the optimizer's bytes per parameter. The peak's
// note splits it by memory category and lists devtrain's plan of it (Model.PeakPlan); the
// difference is the backend's own workspace. Blocks the backend cached for reuse are released
// before each figure, so that the peak is the step's and not also the earlier figures'
// leftover shapes.
func (r *runner) train() {
	fail := func(status string) {
		for i := range r.rep.Figures {
			if f := &r.rep.Figures[i]; f.Status == "not run" && strings.HasPrefix(f.Key, "train_") {
				f.Status = status
			}
		}
	}
	if s := r.stopReason(); s != "" {
		fail(s)
		return
	}
	tb, err := backend.AsTraining(r.b)
	if err != nil {
		fail("not run: " + err.Error())
		return
	}
	r.logf("building the trainable model (%d layers, host float32, then onto %s)", r.cfg.NumLayers, r.b.Name())
	t0 := time.Now()
	dm, chunkRows, bf16, err := r.trainable(tb, "int8")
	if err != nil {
		fail(err.Error())
		return
	}
	if c, ok := any(dm).(interface{ Free() }); ok {
		defer c.Free()
	} else if c, ok := any(dm).(interface{ Close() error }); ok {
		defer c.Close()
	}
	r.logf("trainable model ready in %.1f s (layers in spans of %d rows, 0 = all; bf16 layer inputs %v)", time.Since(t0).Seconds(), chunkRows, bf16)
	if f := r.rep.Figure(bytesPerParamKey()); f != nil {
		f.Value, f.Samples, f.Status = dm.OptimizerBytesPerParam(), []float64{dm.OptimizerBytesPerParam()}, StatusOK
		f.Note = "devtrain int8 AdamW state (m, v and block scales) per parameter"
	}
	for _, s := range r.plan.TrainLengths {
		for _, bsz := range r.plan.TrainBatches {
			k := trainKey(s, bsz)
			ft, fp, fo := r.rep.Figure(k+"_tps"), r.rep.Figure(k+"_peak"), r.rep.Figure(k+"_optim")
			batch := r.batch(bsz, s)
			if rc, ok := r.b.(interface{ ReleaseCache() error }); ok {
				if err := rc.ReleaseCache(); err != nil {
					r.logf("%s: release cached blocks: %v", k, err)
				}
			}
			var phases [][]devtrain.Phase
			var losses []float64
			r.measure(ft, func() (float64, time.Duration, error) {
				t0 := time.Now()
				st, err := dm.Step(r.ctx, batch, 1e-5)
				d := time.Since(t0)
				if err != nil {
					return 0, d, err
				}
				if l := float64(st.Loss); math.IsNaN(l) || math.IsInf(l, 0) {
					return 0, d, fmt.Errorf("step at S=%d batch %d: loss %v", s, bsz, st.Loss)
				}
				phases = append(phases, st.Phases)
				losses = append(losses, float64(st.Loss))
				return float64(bsz*s) / d.Seconds(), d, nil
			})
			if !ft.OK() {
				fp.Status, fo.Status = ft.Status, ft.Status
				continue
			}
			gib := float64(ft.PeakBytes) / (1 << 30)
			fp.Value, fp.Samples, fp.Status, fp.PeakBytes = gib, []float64{gib}, StatusOK, ft.PeakBytes
			// Step resets the peak when it starts: this is the last step's.
			fp.Note = fmt.Sprintf("LayerChunkRows %d, CheckpointBF16 %v; ", chunkRows, bf16) + peakNote(r.b.Memory(), dm.PeakPlan(bsz, s))
			r.logf("%s: %s", fp.Key, fp.Note)
			timed := phases[1:] // phases[0] is the warm-up
			if len(timed) == 0 {
				timed = phases
			}
			var opt []float64
			for _, ps := range timed {
				for _, p := range ps {
					if n := strings.ToLower(p.Name); strings.Contains(n, "optim") || strings.Contains(n, "adam") {
						opt = append(opt, float64(p.Dur)/float64(time.Millisecond))
					}
				}
			}
			if len(opt) > 0 {
				fo.Value, fo.Samples, fo.Status = median(opt), opt, StatusOK
			} else {
				fo.Status = "n/a (no optimizer phase: fused into the backward pass)"
			}
			ft.Note = fmt.Sprintf("loss %.3f; phases of the last step: %s", losses[len(losses)-1], phaseSummary(timed[len(timed)-1]))
		}
	}
}

// batch returns a batch of bsz random sequences of s tokens, every token after the first of
// each sequence a target.
func (r *runner) batch(bsz, s int) *data.Batch {
	b := &data.Batch{B: bsz, T: s, IDs: r.ids(bsz * s), Mask: make([]bool, bsz*s)}
	for i := range b.Mask {
		if i%s != 0 {
			b.Mask[i] = true
			b.Targets++
		}
	}
	for i := 0; i < bsz; i++ {
		b.Sources = append(b.Sources, "random")
	}
	return b
}

// peakNote splits a step's peak by category and lists the plan of it: "peak 27.31 GB =
// weights 7.49 GiB + …; plan (devtrain.PeakPlan) 26.95 GB: master weights (bf16) 7.49 GiB, …;
// backend workspace beyond the plan 0.36 GB".
func peakNote(ms backend.MemStats, plan []devtrain.PlanItem) string {
	var b strings.Builder
	fmt.Fprintf(&b, "peak %.2f GB =", float64(ms.Peak)/1e9)
	sep := " "
	for c, n := range ms.PeakBy {
		if n != 0 {
			fmt.Fprintf(&b, "%s%s %s", sep, backend.Category(c), backend.Human(n))
			sep = " + "
		}
	}
	var sum int64
	var items []string
	for _, it := range plan {
		sum += it.Bytes
		items = append(items, fmt.Sprintf("%s %s", it.What, backend.Human(it.Bytes)))
	}
	if len(items) == 0 {
		return b.String()
	}
	fmt.Fprintf(&b, "; plan (devtrain.PeakPlan) %.2f GB: %s; backend workspace beyond the plan %.2f GB",
		float64(sum)/1e9, strings.Join(items, ", "), float64(ms.Peak-sum)/1e9)
	return b.String()
}

// phaseSummary formats a step's phases: name, time and peak.
func phaseSummary(ps []devtrain.Phase) string {
	var out []string
	for _, p := range ps {
		out = append(out, fmt.Sprintf("%s %.1f ms (peak %s)", p.Name, float64(p.Dur)/float64(time.Millisecond), backend.Human(p.Peak)))
	}
	return strings.Join(out, ", ")
}

// randomizeParallel fills every matrix with uniform values of standard deviation 0.02 and
// every norm with 1, chunks on every core (grad.Model.Randomize is serial: minutes for 4B).
func randomizeParallel(m *grad.Model, seed uint64) {
	type job struct {
		w    []float32
		norm bool
		id   uint64
	}
	var jobs []job
	for i, p := range m.Params {
		for c := 0; c < len(p.W); c += chunk {
			jobs = append(jobs, job{p.W[c:min(len(p.W), c+chunk)], p.Rows == 1, uint64(i)<<32 | uint64(c/chunk)})
		}
	}
	sort.Slice(jobs, func(i, j int) bool { return len(jobs[i].w) > len(jobs[j].w) })
	a := float32(0.02 * math.Sqrt(3))
	var next int
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := 0; w < runtime.GOMAXPROCS(0); w++ {
		wg.Go(func() {
			for {
				mu.Lock()
				j := next
				next++
				mu.Unlock()
				if j >= len(jobs) {
					return
				}
				jb := jobs[j]
				rng := rand.New(rand.NewPCG(seed, jb.id))
				for i := range jb.w {
					if jb.norm {
						jb.w[i] = 1
					} else {
						jb.w[i] = (2*rng.Float32() - 1) * a
					}
				}
			}
		})
	}
	wg.Wait()
}
