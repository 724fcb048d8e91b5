package jobs

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/qwengo/qwengo/engine"
	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/cpu"
	"github.com/qwengo/qwengo/engine/optim"
	"github.com/qwengo/qwengo/engine/train"
	"github.com/qwengo/qwengo/kernel/cli"
)

// runProbe is the seed's one-step probe: load, one batch, forward, backward, optimizer, with
// time and memory after each phase, written as the seed's JSON report plus our fields.
func runProbe(args []string, stdout, stderr io.Writer) int {
	f := cli.New("probe")
	f.SetOutput(stderr)
	model := f.String("model", "", "model directory or weight file")
	tokPath := f.String("tokenizer", "", "tokenizer.json (default: beside the model, else the cached Qwen3 one)")
	dataSpec := f.String("data", "", "data file (first batch is used)")
	seqLen := f.Int("seq-len", 192, "maximum tokens per sequence")
	batch := f.Int("batch", 1, "sequences in the batch")
	state := f.Choice("optimizer-state", "int8", []string{"fp32", "int8", "4bit"}, "storage of AdamW's m and v")
	lr := f.Float("lr", 1e-5, "learning rate of the one step")
	report := f.String("mem-report", "", "write the report JSON here (atomically)")
	on := f.Choice("on", "auto", []string{"auto", "host", "backend"},
		"where the step runs: host (engine/train, float32 on the CPU) or backend (engine.Trainer on the engine's backend, the GPU in a cuda build); auto: backend when that is a GPU")
	jsonOut := f.JSON()
	f.Required("model", "data")
	if code, ok := f.ParseCommand(args); !ok {
		return code
	}
	fail := func(err error) int {
		fmt.Fprintln(stderr, "probe:", err)
		return cli.ExitError
	}
	onBackend := *on == "backend"
	if *on == "auto" {
		_, cpuOnly := engine.Backend().(*cpu.Backend)
		onBackend = !cpuOnly
	}
	if onBackend {
		p, st, err := probeBackend(*model, *tokPath, *dataSpec, *seqLen, *batch, *state, *lr, stderr)
		if err != nil {
			return fail(err)
		}
		return probeOutput(p, *report, *jsonOut, st, stdout, fail)
	}
	p := train.NewProbe("CPU (host float32 reference)", nil)
	tm, err := openForTraining(*model, *tokPath)
	if err != nil {
		return fail(err)
	}
	defer tm.close()
	p.Mark("model_loaded")
	mix, err := loadData(tm, *dataSpec, *seqLen, 0, "", stderr)
	if err != nil {
		return fail(err)
	}
	oc := optim.DefaultConfig()
	oc.LR = *lr
	if oc.State, err = optim.ParseStateFormat(*state); err != nil {
		return fail(err)
	}
	tr, err := train.New(tm.m.Trainable(), mix, train.Config{Optim: oc, BatchSize: *batch, Pad: tm.chat.Pad})
	if err != nil {
		return fail(err)
	}
	p.Mark("optimizer_ready")
	p.Mark("batch_ready")
	tm.m.OnPhase = p.Mark
	res, err := tr.Step(context.Background())
	tm.m.OnPhase = nil
	if err != nil {
		return fail(err)
	}
	p.Mark("optimizer_step_done")
	return probeOutput(p, *report, *jsonOut, res, stdout, fail)
}

// probeOutput writes the probe's report file, then the step and its phases to stdout: JSON, or
// a table of time, engine memory (the backend's bytes in use, or its peak for the step's own
// phases) and host RSS.
func probeOutput(p *train.Probe, report string, jsonOut bool, res train.StepResult, stdout io.Writer, fail func(error) int) int {
	if report != "" {
		if err := p.Write(report); err != nil {
			return fail(err)
		}
	}
	if jsonOut {
		cli.WriteJSON(stdout, map[string]any{"step": res, "report": p})
		return cli.ExitOK
	}
	fmt.Fprintf(stdout, "one step on %s: loss %.4f, grad norm %.3f, %d tokens, %.2f s\n", p.Device, res.Loss, res.GradNorm, res.Tokens, res.Seconds)
	fmt.Fprintf(stdout, "%-22s %9s %12s %12s\n", "phase", "seconds", "engine", "host RSS")
	prev := 0.0
	for _, s := range p.Samples {
		fmt.Fprintf(stdout, "%-22s %9.3f %12s %12s   (+%.3f s)\n", s.Phase, s.Seconds, backend.Human(s.PidMemoryMiB<<20), backend.Human(s.HostRSSMiB<<20), s.Seconds-prev)
		prev = s.Seconds
	}
	return cli.ExitOK
}

// probeBackend is the probe on the engine's backend (engine.Trainer): the model and its
// optimizer state are put there, one batch is drawn, one step runs, and the step's own phases
// (forward with the chunked loss, backward, optimizer) are recorded with the backend's peak
// memory in each.
func probeBackend(model, tokPath, dataSpec string, seqLen, batch int, state string, lr float64, stderr io.Writer) (*train.Probe, train.StepResult, error) {
	p := train.NewProbe(engine.Device(), func() backend.MemStats { return engine.Backend().Memory() })
	opt := engine.DefaultTrainOptions()
	opt.Batch, opt.SeqLen, opt.Tokenizer, opt.State = max(1, batch), seqLen, tokPath, state
	tr, err := engine.NewTrainer(model, opt)
	if err != nil {
		return nil, train.StepResult{}, err
	}
	defer tr.Close()
	p.Mark("model_loaded")
	p.Mark("optimizer_ready") // the moments were allocated with the model
	sources, err := loadSources(tr.Chat, dataSpec, seqLen, "", stderr)
	if err != nil {
		return nil, train.StepResult{}, err
	}
	for _, src := range sources {
		if err := tr.AddSamples(src.Name, src.Samples, src.Ratio); err != nil {
			return nil, train.StepResult{}, err
		}
	}
	p.Mark("batch_ready")
	engine.ResetPeak()
	t0 := time.Now()
	st, err := tr.Step(lr)
	if err != nil {
		return nil, train.StepResult{}, err
	}
	d := time.Since(t0)
	at := t0
	for _, ph := range st.Phases {
		at = at.Add(ph.Dur)
		p.MarkAt(ph.Name+"_done", at, ph.Peak)
	}
	p.Mark("optimizer_step_done")
	res := train.StepResult{Step: 1, Loss: st.Loss, Targets: st.Targets, Tokens: st.Tokens, GradNorm: st.GradNorm, LR: lr,
		Skipped: st.Skipped, Clipped: st.Clipped, Seconds: d.Seconds(), TokensPerSec: float64(st.Tokens) / d.Seconds()}
	return p, res, nil
}
