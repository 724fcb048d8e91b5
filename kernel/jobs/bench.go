package jobs

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/qwengo/qwengo/engine"
	"github.com/qwengo/qwengo/engine/bench"
	"github.com/qwengo/qwengo/kernel/cli"
)

func init() {
	cli.Register(cli.Command{Name: "bench", Summary: "benchmark a random Qwen3-4B-shaped model (decode, prefill, training) and compare with PyTorch (engine/bench)", Run: runBench})
}

// runBench runs engine/bench on engine.Backend() and prints the markdown table (with the
// peer's figures when --peer names peer.py's JSON); with --report it only combines two
// reports written earlier.
func runBench(args []string, stdout, stderr io.Writer) int {
	f := cli.New("bench")
	f.SetOutput(stderr)
	layers := f.Int("layers", 0, "decoder layers (0: all 36; fewer for quick runs, rooflines follow)")
	quick := f.Bool("quick", false, "tiny shapes and sizes (CI, the CPU)")
	only := f.StringList("only", nil, "workloads to run: decode, prefill, train, optim (comma-separated; default all)")
	jsonPath := f.String("json", "", "write our report (JSON) to this file")
	mdPath := f.String("markdown", "", "also write the table to this file")
	peer := f.String("peer", "", "peer.py's JSON report, shown beside ours")
	report := f.String("report", "", "our earlier report: combine it with --peer instead of running")
	combine := f.Bool("combine", false, "do not run: print the table of --report and/or --peer (either may be missing)")
	seed := f.Int("seed", 1, "seed of the weights and token ids")
	steps := f.Int("decode-steps", 0, "one-token forwards per timed decode repetition (0: 32; 8 with --quick)")
	maxSec := f.Float("max-seconds", 0, "stop starting figures after this many seconds (0: no limit)")
	figSec := f.Float("figure-seconds", 0, "repetition budget per figure in seconds (0: 6; 0.5 with --quick)")
	lmHead := f.String("lm-head", "", "the inference model's lm_head: \"\" the tied bf16 embedding, nvfp4 an NVFP4 copy of it")
	if code, ok := f.ParseCommand(args); !ok {
		return code
	}
	fail := func(err error) int {
		fmt.Fprintln(stderr, "bench:", err)
		return cli.ExitError
	}
	var peerRep *bench.Report
	if *peer != "" {
		r, err := bench.ReadReport(*peer)
		if err != nil {
			// The table still shows our side: run.sh is tolerant of one side failing.
			fmt.Fprintln(stderr, "bench: peer report unusable:", err)
		}
		peerRep = r
	}
	var ours *bench.Report
	switch {
	case *report != "":
		r, err := bench.ReadReport(*report)
		if err != nil {
			if !*combine {
				return fail(err)
			}
			fmt.Fprintln(stderr, "bench: our report unusable:", err)
		}
		ours = r
	case *combine:
		if peerRep == nil {
			return fail(fmt.Errorf("--combine: no usable --report or --peer"))
		}
	default:
		// SIGTERM too: run.sh bounds each side with timeout(1), and a cancelled run still
		// writes its report (unfinished figures say "interrupted").
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		b := engine.Backend()
		if engine.BackendNote != "" {
			fmt.Fprintln(stderr, "bench:", engine.BackendNote)
		}
		r, err := bench.Run(ctx, b, bench.Options{Layers: *layers, Quick: *quick, Only: *only, Seed: uint64(*seed),
			DecodeSteps: *steps, MaxSeconds: *maxSec, FigureSeconds: *figSec, LMHead: *lmHead, Log: stderr})
		if err != nil {
			return fail(err)
		}
		if engine.BackendNote != "" {
			r.Notes = append(r.Notes, engine.BackendNote)
		}
		ours = r
		if *jsonPath != "" {
			if err := r.WriteFile(*jsonPath); err != nil {
				return fail(err)
			}
		}
	}
	if ours == nil && peerRep == nil {
		return fail(fmt.Errorf("no usable report to show"))
	}
	md := bench.Markdown(ours, peerRep)
	if *mdPath != "" {
		if err := bench.WriteAtomic(*mdPath, []byte(md)); err != nil {
			return fail(err)
		}
	}
	io.WriteString(stdout, md)
	return cli.ExitOK
}
