package train

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"time"

	"github.com/qwengo/qwengo/engine/data"
	"github.com/qwengo/qwengo/engine/format"
	"github.com/qwengo/qwengo/engine/optim"
)

// Differentiable is a model the trainer can optimise.
type Differentiable interface {
	// Params lists the trainable parameters with their current values.
	Params() []optim.ParamSpec
	// SetParam replaces parameter i's values after an optimizer step.
	SetParam(i int, w []float32) error
	// Grad runs forward and backward over the batch, applying loss to each sequence, and
	// returns the summed loss, the number of targets and the gradients of the mean loss.
	Grad(ctx context.Context, b *data.Batch, loss Loss) (sum float64, count int, grads [][]float32, err error)
}

// Evaluator is optionally implemented by models that can score a batch without gradients.
type Evaluator interface {
	LossOnly(ctx context.Context, b *data.Batch, loss Loss) (sum float64, count int, err error)
}

// Config controls a Trainer.
type Config struct {
	Optim     optim.Config
	Schedule  optim.Schedule // default: constant Optim.LR
	BatchSize int            // sequences per step (default 1)
	Pad       int            // padding token id
	Loss      Loss           // default CrossEntropy
}

// StepResult describes one step.
type StepResult struct {
	Step         int     `json:"step"`
	Loss         float64 `json:"loss"`
	Targets      int     `json:"targets"`
	Tokens       int     `json:"tokens"`
	GradNorm     float64 `json:"grad_norm"`
	LR           float64 `json:"lr"`
	Skipped      bool    `json:"skipped,omitempty"`
	Clipped      bool    `json:"clipped,omitempty"`
	Seconds      float64 `json:"seconds"`
	TokensPerSec float64 `json:"tokens_per_sec"`
}

// Trainer runs optimizer steps over a data mixture.
type Trainer struct {
	Model   Differentiable
	Opt     *optim.AdamW
	Data    *data.Mixture
	cfg     Config
	step    int
	History []StepResult
}

// New builds a trainer; the optimizer takes the model's current parameters as its masters.
func New(model Differentiable, mix *data.Mixture, cfg Config) (*Trainer, error) {
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = 1
	}
	if cfg.Loss == nil {
		cfg.Loss = CrossEntropy{}
	}
	if cfg.Schedule == nil {
		cfg.Schedule = optim.Constant(cfg.Optim.LR)
	}
	opt, err := optim.NewAdamW(cfg.Optim, model.Params())
	if err != nil {
		return nil, err
	}
	t := &Trainer{Model: model, Opt: opt, Data: mix, cfg: cfg}
	// The model computes with what the optimizer stores (bf16 masters round the weights).
	if err := t.pushWeights(); err != nil {
		return nil, err
	}
	return t, nil
}

func (t *Trainer) pushWeights() error {
	var buf []float32
	for i := 0; i < t.Opt.NumParams(); i++ {
		buf = t.Opt.Weights(i, buf)
		if err := t.Model.SetParam(i, buf); err != nil {
			return fmt.Errorf("train: update %s: %w", t.Opt.Name(i), err)
		}
	}
	return nil
}

// StepCount is the number of steps taken (applied or skipped).
func (t *Trainer) StepCount() int { return t.step }

// Step runs one step: a batch, forward and backward, and the optimizer update. It is atomic:
// on an error or cancellation the weights, the optimizer and the data position are unchanged.
func (t *Trainer) Step(ctx context.Context) (StepResult, error) {
	if err := ctx.Err(); err != nil {
		return StepResult{}, err
	}
	state, err := t.Data.State()
	if err != nil {
		return StepResult{}, err
	}
	t0 := time.Now()
	batch := t.Data.NextBatch(t.cfg.BatchSize, t.cfg.Pad)
	sum, count, grads, err := t.Model.Grad(ctx, batch, t.cfg.Loss)
	if err == nil {
		if k, ok := t.cfg.Loss.(*KLToReference); ok && k.Err != nil {
			err, k.Err = k.Err, nil
		}
	}
	if err != nil {
		if rerr := t.Data.Restore(state); rerr != nil {
			return StepResult{}, errors.Join(err, rerr)
		}
		return StepResult{}, err
	}
	res := StepResult{Step: t.step + 1, Targets: count, Tokens: batch.B * batch.T, LR: t.cfg.Schedule.LR(t.step)}
	if count > 0 {
		res.Loss = sum / float64(count)
	}
	if math.IsNaN(res.Loss) || math.IsInf(res.Loss, 0) {
		res.Skipped = true
		res.GradNorm = math.NaN()
	} else {
		st, err := t.Opt.Step(grads, res.LR)
		if err != nil {
			t.Data.Restore(state)
			return StepResult{}, err
		}
		res.GradNorm, res.Skipped, res.Clipped = st.GradNorm, st.Skipped, st.Clipped
		if !st.Skipped {
			if err := t.pushWeights(); err != nil {
				return StepResult{}, err
			}
		}
	}
	t.step++
	res.Seconds = time.Since(t0).Seconds()
	if res.Seconds > 0 {
		res.TokensPerSec = float64(res.Tokens) / res.Seconds
	}
	t.History = append(t.History, res)
	return res, nil
}

// Callbacks observe Fit.
type Callbacks struct {
	// OnStep is called after every step; an error stops Fit.
	OnStep func(StepResult) error
	// EvalEvery > 0 calls Eval after every EvalEvery steps (and after the last).
	EvalEvery int
	Eval      func(step int) error
}

// Fit runs steps steps, stopping early on cancellation (between steps: a step is never left
// half applied) or a callback error.
func (t *Trainer) Fit(ctx context.Context, steps int, cb Callbacks) error {
	for i := 0; i < steps; i++ {
		res, err := t.Step(ctx)
		if err != nil {
			return err
		}
		if cb.OnStep != nil {
			if err := cb.OnStep(res); err != nil {
				return err
			}
		}
		if cb.EvalEvery > 0 && cb.Eval != nil && ((i+1)%cb.EvalEvery == 0 || i == steps-1) {
			if err := cb.Eval(t.step); err != nil {
				return err
			}
		}
	}
	return nil
}

type trainerState struct {
	Step    int          `json:"step"`
	History []StepResult `json:"history"`
	Loss    string       `json:"loss"`
	Batch   int          `json:"batch_size"`
}

// SaveCheckpoint writes weights (inside the optimizer state), moments, step, data position and
// history into dir, replacing any previous checkpoint there atomically.
func (t *Trainer) SaveCheckpoint(dir string) error {
	opt, err := t.Opt.MarshalBinary()
	if err != nil {
		return err
	}
	ds, err := t.Data.State()
	if err != nil {
		return err
	}
	meta, err := json.MarshalIndent(trainerState{t.step, t.History, t.cfg.Loss.Name(), t.cfg.BatchSize}, "", " ")
	if err != nil {
		return err
	}
	return format.ReplaceDirAtomic(dir, func(tmp string) error {
		for name, b := range map[string][]byte{"optimizer.bin": opt, "data.bin": ds, "trainer.json": meta} {
			if err := format.WriteFileAtomic(filepath.Join(tmp, name), b); err != nil {
				return fmt.Errorf("checkpoint %s: %w", dir, err)
			}
		}
		return nil
	})
}

// LoadCheckpoint restores a checkpoint written by SaveCheckpoint into this trainer (same model
// shapes, data sources and seed) and pushes its weights to the model.
func (t *Trainer) LoadCheckpoint(dir string) error {
	read := func(name string) ([]byte, error) {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("checkpoint %s: %w", dir, err)
		}
		return b, nil
	}
	ob, err := read("optimizer.bin")
	if err != nil {
		return err
	}
	db, err := read("data.bin")
	if err != nil {
		return err
	}
	mb, err := read("trainer.json")
	if err != nil {
		return err
	}
	var st trainerState
	if err := json.Unmarshal(mb, &st); err != nil {
		return fmt.Errorf("checkpoint %s: trainer.json: %w", dir, err)
	}
	opt := &optim.AdamW{}
	if err := opt.UnmarshalBinary(ob); err != nil {
		return fmt.Errorf("checkpoint %s: %w", dir, err)
	}
	if opt.NumParams() != t.Opt.NumParams() {
		return fmt.Errorf("checkpoint %s: %d parameters, model has %d", dir, opt.NumParams(), t.Opt.NumParams())
	}
	for i := 0; i < opt.NumParams(); i++ {
		if opt.Name(i) != t.Opt.Name(i) {
			return fmt.Errorf("checkpoint %s: parameter %d is %q, model has %q", dir, i, opt.Name(i), t.Opt.Name(i))
		}
	}
	if err := t.Data.Restore(db); err != nil {
		return fmt.Errorf("checkpoint %s: %w", dir, err)
	}
	t.Opt, t.step, t.History = opt, st.Step, st.History
	return t.pushWeights()
}
