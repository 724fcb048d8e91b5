//go:build ignore

// probe.go — the seed's one-step probe: one full-parameter step on a batch from a data file,
// with time and peak memory per phase, before committing to a run.
//
//	qwenrepl run notebooks/runners/probe.go [--model M] [--data notebooks/data/facts.tsv] [--batch 4] [--lr 1e-5]
import (
	"fmt"
	"os"

	"github.com/qwengo/qwengo/engine"
	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/kernel/cli"
)

f := cli.New("probe.go")
model := f.String("model", "qwengo-mini", "model")
dataFile := f.String("data", "notebooks/data/facts.tsv", "TSV (prompt<TAB>answer), JSONL chat or text")
batch := f.Int("batch", 4, "sequences in the batch")
lr := f.Float("lr", 1e-5, "learning rate of the one step")
f.MustParse()

opt := engine.DefaultTrainOptions()
opt.Batch = *batch
tr, err := engine.NewTrainer(*model, opt)
if err != nil {
	fmt.Fprintln(os.Stderr, "probe.go:", err)
	cli.Exit(cli.ExitError)
}
if err = tr.AddData(*dataFile, 1); err != nil {
	fmt.Fprintln(os.Stderr, "probe.go:", err)
	cli.Exit(cli.ExitError)
}
engine.ResetPeak()
st, err := tr.Step(*lr)
if err != nil {
	fmt.Fprintln(os.Stderr, "probe.go:", err)
	cli.Exit(cli.ExitError)
}
fmt.Printf("one step on %s: loss %.4f over %d tokens, grad norm %.3f; %.2f bytes/param of optimizer state\n",
	engine.Device(), st.Loss, st.Targets, st.GradNorm, tr.Dev.OptimizerBytesPerParam())
for _, p := range st.Phases {
	fmt.Printf("  %-10s %9.1f ms   peak %s\n", p.Name, float64(p.Dur.Microseconds())/1000, backend.Human(p.Peak))
}
tr.Close()
