package jobs

import (
	"context"
	"fmt"
	"io"

	"github.com/qwengo/qwengo/engine/backend"
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
	jsonOut := f.JSON()
	f.Required("model", "data")
	if code, ok := f.ParseCommand(args); !ok {
		return code
	}
	fail := func(err error) int {
		fmt.Fprintln(stderr, "probe:", err)
		return cli.ExitError
	}
	p := train.NewProbe("cpu", nil)
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
	if *report != "" {
		if err := p.Write(*report); err != nil {
			return fail(err)
		}
	}
	if *jsonOut {
		cli.WriteJSON(stdout, map[string]any{"step": res, "report": p})
		return cli.ExitOK
	}
	fmt.Fprintf(stdout, "one step: loss %.4f, grad norm %.3f, %d tokens, %.2f s\n", res.Loss, res.GradNorm, res.Tokens, res.Seconds)
	fmt.Fprintf(stdout, "%-22s %9s %12s\n", "phase", "seconds", "host RSS")
	prev := 0.0
	for _, s := range p.Samples {
		fmt.Fprintf(stdout, "%-22s %9.3f %12s   (+%.3f s)\n", s.Phase, s.Seconds, backend.Human(s.HostRSSMiB<<20), s.Seconds-prev)
		prev = s.Seconds
	}
	return cli.ExitOK
}
