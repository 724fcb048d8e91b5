package bench

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/format"
	"github.com/qwengo/qwengo/engine/tensor"
)

// optimFormats are the moment formats of the standalone optimizer-step figures.
var optimFormats = []string{"int8", "4bit"}

func optimKey(format string) string { return "optim_step_" + format }

// paramCount formats a parameter count as the labels print it ("4.02B").
func paramCount(n int64) string {
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.2fB", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.2fM", float64(n)/1e6)
	}
	return fmt.Sprintf("%.1fk", float64(n)/1e3)
}

// optimParam is one parameter of the optimizer-step figures with its resident weight.
type optimParam struct {
	rows, cols int
	w          backend.Weight
	grad       backend.Tensor // shared by the same parameter of every layer
}

// optimizer measures one standalone AdamW step over every parameter of the model shape, per
// moment format: the backend's Training.AdamW on each parameter in model order (the
// embedding, each layer's norms and projections, the final norm), masters as devtrain keeps
// them (bf16 matrices, f32 norms), resident gradients of devtrain's types (trainGrad: bf16
// matrices unless QWENGO_TRAIN_GRAD=fp32, f32 norms), then a download of a few bytes (the
// sync). The gradient of a layer's q_proj (say) is shared by every layer's q_proj: one per
// parameter would add 16 GB at 4.02B parameters and time nothing more, and consecutive
// updates never share one (k_proj and v_proj have their own), so none is read from cache. The
// figure is the best of its repetitions in ms (a bandwidth figure: the fastest run is the
// closest to what the kernels can do; peer.py reports its best too, the note both sides'
// median); the note gives the bytes it moves per parameter and the fraction of 4.3 TB/s.
func (r *runner) optimizer() {
	figs := map[string]*Figure{}
	for _, f := range optimFormats {
		if fig := r.rep.Figure(optimKey(f)); fig != nil {
			figs[f] = fig
		}
	}
	fail := func(status string) {
		for _, f := range figs {
			if f.Status == "not run" {
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
	gradType, err := trainGrad()
	if err != nil {
		fail("not run: " + err.Error())
		return
	}
	r.logf("optimizer step: uploading %s parameters (bf16 matrices, f32 norms) and their gradients (%s matrices)", paramCount(r.cfg.NumParams()), gradType)
	t0 := time.Now()
	params, free, err := r.optimParams(gradType)
	defer free()
	if err != nil {
		fail(failure(fmt.Errorf("optimizer-step parameters: %w", err)))
		return
	}
	r.logf("optimizer step: %d tensors ready in %.1f s", len(params), time.Since(t0).Seconds())
	last := params[0].grad // the smallest gradient: its download is the sync
	for _, p := range params {
		if p.rows*p.cols < last.Rows()*last.Cols() {
			last = p.grad
		}
	}
	sync := make([]float32, 0, last.Rows()*last.Cols())
	for _, state := range optimFormats {
		f := figs[state]
		if f == nil || f.Status != "not run" {
			continue
		}
		if s := r.stopReason(); s != "" {
			f.Status = s
			continue
		}
		states := make([]backend.AdamWState, 0, len(params))
		var stateBytes, n int64
		err := func() error {
			for _, p := range params {
				st, err := tb.NewAdamWState(state, p.rows, p.cols)
				if err != nil {
					return fmt.Errorf("%s AdamW state [%d, %d]: %w", state, p.rows, p.cols, err)
				}
				states = append(states, st)
				stateBytes += st.Bytes()
				n += int64(p.rows) * int64(p.cols)
			}
			return nil
		}()
		var enqueue []float64 // ms from a step's start until AdamWMany returns (the host's part)
		if err != nil {
			f.Status = failure(err)
		} else {
			step := 0
			r.measure(f, func() (float64, time.Duration, error) {
				step++
				t0 := time.Now()
				jobs := make([]backend.AdamWJob, len(params))
				for i, p := range params {
					h := backend.AdamWHyper{LR: 1e-5, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.01, Step: step, GradScale: 1,
						NoDecay: p.rows == 1, StochasticRound: p.w.Kind() == "bf16", Seed: r.opt.Seed, Param: uint64(i)}
					jobs[i] = backend.AdamWJob{W: p.w, Grad: p.grad, State: states[i], Hyper: h}
				}
				// One batch, as engine/devtrain updates its parameters (backend.AdamWMany).
				if err := backend.AdamWMany(tb, jobs); err != nil {
					return 0, 0, fmt.Errorf("AdamW of %d parameters: %w", len(jobs), err)
				}
				enqueue = append(enqueue, float64(time.Since(t0))/float64(time.Millisecond))
				var err error
				if sync, err = r.b.Download(last, sync); err != nil {
					return 0, 0, err
				}
				d := time.Since(t0)
				return float64(d) / float64(time.Millisecond), d, nil
			})
		}
		for _, st := range states {
			tb.FreeAdamWState(st)
		}
		if !f.OK() {
			continue
		}
		med := f.Value
		f.Value = slices.Min(f.Samples)
		bytes, _ := r.roof.optimStep(state)
		perParam := bytes / float64(n)
		note := fmt.Sprintf("best of %d (median %.3g ms; the host's part until the last launch is queued, median %.3g ms); %d tensors, states %.3f B/param; moves %.2f B/param",
			len(f.Samples), med, median(enqueue), len(params), float64(stateBytes)/float64(n), perParam)
		if !r.opt.Quick {
			rate := bytes / (f.Value / 1e3)
			note += fmt.Sprintf(" = %.2f TB/s, %.0f %% of 4.3 TB/s", rate/1e12, 100*rate/HBMBytesPerSec)
		}
		f.Note = note
	}
}

// optimParams uploads the optimizer-step figures' parameters and gradients: each distinct
// parameter of a layer gets one random host tensor (randomSource: norms 1, matrices uniform
// with standard deviation 0.02) that is uploaded as every layer's weight and as the gradient
// they share (matrices' of element type gradType, "bf16" or "fp32"; norms' f32). free
// releases whatever was uploaded.
func (r *runner) optimParams(gradType string) (params []optimParam, free func(), err error) {
	var weights []backend.Weight
	grads := map[string]backend.Tensor{}
	free = func() {
		for _, w := range weights {
			r.b.FreeWeight(w)
		}
		for _, g := range grads {
			r.b.Free(g)
		}
		if rc, ok := r.b.(interface{ ReleaseCache() error }); ok {
			rc.ReleaseCache()
		}
	}
	src := &randomSource{seed: r.opt.Seed}
	hosts := map[string]*tensor.Host{}
	for _, ps := range paramShapes(r.cfg) {
		if err := r.ctx.Err(); err != nil {
			return nil, free, err
		}
		slot := ps.name // model.layers.N.x → x
		if rest, ok := strings.CutPrefix(slot, "model.layers."); ok {
			_, slot, _ = strings.Cut(rest, ".")
		}
		rows, cols := 1, ps.shape[0]
		if len(ps.shape) == 2 {
			rows, cols = ps.shape[0], ps.shape[1]
		}
		h := hosts[slot]
		if h == nil {
			src.infos = []format.TensorInfo{{Name: slot, DType: tensor.BF16, Shape: ps.shape, File: "random", Size: int64(2 * rows * cols)}}
			if h, err = src.Read(slot); err != nil {
				return nil, free, err
			}
			h.Shape = []int{rows, cols}
			hosts[slot] = h
			dt := tensor.F32
			if rows > 1 && gradType == "bf16" {
				dt = tensor.BF16
			}
			g, err := backend.AllocGradient(r.b, rows, cols, dt)
			if err != nil {
				return nil, free, fmt.Errorf("gradient of %s: %w", slot, err)
			}
			grads[slot] = g
			v, err := h.Float32s(nil)
			if err != nil {
				return nil, free, err
			}
			if err := r.b.Upload(g, v); err != nil {
				return nil, free, fmt.Errorf("gradient of %s: %w", slot, err)
			}
		}
		keep := "bf16"
		if rows == 1 {
			keep = "f32"
		}
		w, err := r.b.UploadWeight(backend.HostWeight{Name: ps.name, Dense: h, Keep: keep})
		if err != nil {
			return nil, free, fmt.Errorf("weight %s: %w", ps.name, err)
		}
		weights = append(weights, w)
		params = append(params, optimParam{rows: rows, cols: cols, w: w, grad: grads[slot]})
	}
	return params, free, nil
}
