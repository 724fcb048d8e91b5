package jobs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"sort"
	"strings"
	"time"

	"github.com/qwengo/qwengo/engine"
	"github.com/qwengo/qwengo/engine/data"
	"github.com/qwengo/qwengo/engine/optim"
	"github.com/qwengo/qwengo/engine/train"
	"github.com/qwengo/qwengo/kernel/cli"
)

// backendTrain is `qwenrepl train --on backend`: the run's settings.
type backendTrain struct {
	model, tokPath, dataSpec, evalSpec, system string
	steps, batch, seqLen, evalEvery            int
	seed                                       uint64
	state, master                              string
	clip, wd                                   float64
	schedule                                   optim.Schedule
	export, exportFmt                          string
	json                                       bool
	hostOnly                                   map[string]bool // flags given that only the host trainer has
	checkpoint, resume                         string
	checkpointEvery                            int
}

// runTrainBackend trains through engine.Trainer (engine/devtrain on the engine's backend: on a
// GPU the masters, gradients and AdamW moments stay on the device), with the host trainer's
// data handling, schedule, evaluation, output lines, checkpoints (engine.Trainer.SaveCheckpoint:
// at the end, every --checkpoint-every steps and on interrupt; --resume continues from one) and
// export. Per-layer recompute is on; with --grad-clip 0 the optimizer is fused into the backward
// (one layer's gradients at a time). An interrupt stops between steps (a step in flight is
// abandoned whole) and skips the export.
func runTrainBackend(a backendTrain, stdout, stderr io.Writer) int {
	fail := func(err error) int {
		fmt.Fprintln(stderr, "train:", err)
		return cli.ExitError
	}
	var refused []string
	for flag, set := range a.hostOnly {
		if set {
			refused = append(refused, flag)
		}
	}
	if len(refused) > 0 {
		sort.Strings(refused)
		return fail(fmt.Errorf("%s needs the host trainer (--on host): the backend trainer has no QAT", strings.Join(refused, ", ")))
	}
	opt := engine.DefaultTrainOptions()
	opt.Batch, opt.SeqLen, opt.Seed, opt.Tokenizer = max(1, a.batch), a.seqLen, a.seed, a.tokPath
	opt.Options.Seed = a.seed
	opt.Master, opt.State, opt.WeightDecay, opt.ClipNorm = a.master, a.state, a.wd, a.clip
	opt.Recompute, opt.FusedOptimizer = true, a.clip == 0
	weights := a.model
	if a.resume != "" {
		weights = a.resume // a checkpoint is a model directory with the trained masters
	}
	tr, err := engine.NewTrainer(weights, opt)
	if err != nil {
		return fail(err)
	}
	defer tr.Close()
	sources, err := loadSources(tr.Chat, a.dataSpec, a.seqLen, a.system, stderr)
	if err != nil {
		return fail(err)
	}
	for _, src := range sources {
		if err := tr.AddSamples(src.Name, src.Samples, src.Ratio); err != nil {
			return fail(err)
		}
	}
	if a.resume != "" {
		if err := tr.Resume(a.resume); err != nil {
			return fail(err)
		}
		fmt.Fprintf(stderr, "resumed %s at step %d\n", a.resume, tr.Dev.Steps())
	}
	save := func() error {
		if err := tr.SaveCheckpoint(a.checkpoint); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "checkpoint: %s (step %d)\n", a.checkpoint, tr.Dev.Steps())
		return nil
	}
	var held []*data.Sample
	if a.evalSpec != "" {
		if held, err = heldOut(tr.Chat, a.evalSpec, a.seqLen, a.system); err != nil {
			return fail(err)
		}
		if a.evalEvery <= 0 {
			a.evalEvery = max(1, a.steps/5)
		}
	}
	fmt.Fprintf(stderr, "model %s on %s: %.1fM parameters; optimizer %s m+v %.3f bytes/param, %s masters, recompute, optimizer fused into the backward %v\n",
		a.model, engine.Device(), float64(tr.Dev.NumParams())/1e6, a.state, tr.Dev.OptimizerBytesPerParam(), a.master, opt.FusedOptimizer)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	prev := engine.CurrentContext
	engine.CurrentContext = func() context.Context { return ctx }
	defer func() { engine.CurrentContext = prev }()
	interrupted, skipped := false, 0
	for step := tr.Dev.Steps(); step < a.steps; step++ {
		lr := a.schedule.LR(step)
		t0 := time.Now()
		st, err := tr.Step(lr)
		if ctx.Err() != nil || errors.Is(err, context.Canceled) {
			interrupted = true
			break
		}
		if err != nil {
			return fail(fmt.Errorf("step %d: %w", step+1, err))
		}
		d := time.Since(t0).Seconds()
		r := train.StepResult{Step: step + 1, Loss: st.Loss, Targets: st.Targets, Tokens: st.Tokens, GradNorm: st.GradNorm, LR: lr,
			Skipped: st.Skipped, Clipped: st.Clipped, Seconds: d, TokensPerSec: float64(st.Tokens) / d}
		if st.Skipped {
			skipped++
		}
		if a.json {
			jsonLine(stdout, r)
		} else {
			fmt.Fprintf(stdout, "step %4d  loss %.4f  grad-norm %.3f  lr %.3g  %.0f tok/s%s\n", r.Step, r.Loss, r.GradNorm, r.LR, r.TokensPerSec, flags(r))
		}
		if a.checkpoint != "" && a.checkpointEvery > 0 && (step+1)%a.checkpointEvery == 0 {
			if err := save(); err != nil {
				return fail(err)
			}
		}
		if len(held) > 0 && ((step+1)%a.evalEvery == 0 || step+1 == a.steps) {
			loss, err := tr.Loss(held)
			if ctx.Err() != nil {
				interrupted = true
				break
			}
			if err != nil {
				return fail(fmt.Errorf("evaluation after step %d: %w", step+1, err))
			}
			if a.json {
				jsonLine(stdout, map[string]any{"step": step + 1, "eval_loss": loss, "eval_perplexity": math.Exp(loss)})
			} else {
				fmt.Fprintf(stdout, "eval after step %d: held-out loss %.4f, perplexity %.2f\n", step+1, loss, math.Exp(loss))
			}
		}
	}
	if interrupted {
		fmt.Fprintf(stderr, "interrupted after step %d (no step was left half applied)\n", tr.Dev.Steps())
	}
	if a.checkpoint != "" {
		if err := save(); err != nil {
			return fail(err)
		}
	}
	if a.export != "" && !interrupted {
		format := a.exportFmt
		if strings.HasSuffix(a.export, ".dat") {
			format = "dat"
		}
		if err := tr.Export(a.export, format); err != nil {
			return fail(err)
		}
		fmt.Fprintf(stderr, "exported %s\n", a.export)
	}
	if skipped > 0 {
		fmt.Fprintf(stderr, "%d steps skipped for non-finite loss or gradients\n", skipped)
	}
	if interrupted {
		return 130
	}
	return cli.ExitOK
}
