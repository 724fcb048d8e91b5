// Package jobs holds qwenrepl's non-interactive subcommands that drive the engine — train,
// probe and generate — registered in the kernel/cli table. They share the scripts' flag
// convention (--k v, --k=v, bare --k) and a --json switch for machine-readable output.
package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"

	"github.com/qwengo/qwengo/engine"
	"github.com/qwengo/qwengo/engine/cpu"
	"github.com/qwengo/qwengo/engine/data"
	"github.com/qwengo/qwengo/engine/format"
	"github.com/qwengo/qwengo/engine/grad"
	"github.com/qwengo/qwengo/engine/optim"
	"github.com/qwengo/qwengo/engine/qwen3"
	"github.com/qwengo/qwengo/engine/tensor"
	"github.com/qwengo/qwengo/engine/tokenizer"
	"github.com/qwengo/qwengo/engine/train"
	"github.com/qwengo/qwengo/kernel/cli"
)

func init() {
	cli.Register(cli.Command{Name: "train", Summary: "full-parameter fine-tune a model on TSV/JSONL/text data (on the GPU in a cuda build, else the CPU reference)", Run: runTrain})
	cli.Register(cli.Command{Name: "probe", Summary: "one training step with time and memory per phase (the seed's one-step report)", Run: runProbe})
}

// trainModel is a model opened for training with its tokenizer and data codec.
type trainModel struct {
	path  string
	cfg   *qwen3.Config
	m     *grad.Model
	tok   *tokenizer.Tokenizer
	chat  *data.Chat
	dat   *format.Dat // the source when it was a seed .dat (export template)
	tokAt string
	close func()
}

func (tm *trainModel) tokPathOrEmpty() string { return tm.tokAt }

func openForTraining(path, tokPath string) (*trainModel, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	dir := path
	if !fi.IsDir() {
		dir = filepath.Dir(path)
	}
	cfg, err := qwen3.LoadConfig(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, err
	}
	src, err := format.Open(path)
	if err != nil {
		return nil, err
	}
	m, err := grad.Load(cfg, src)
	if err != nil {
		src.Close()
		return nil, err
	}
	tm := &trainModel{path: path, cfg: cfg, m: m, close: func() { src.Close() }}
	if d, ok := src.(*format.Dat); ok {
		tm.dat = d
	}
	if tokPath == "" {
		tokPath = filepath.Join(dir, "tokenizer.json")
		if _, err := os.Stat(tokPath); err != nil {
			tokPath = engine.DefaultTokenizerPath()
		}
	}
	tm.tokAt = tokPath
	if tm.tok, err = tokenizer.Load(tokPath); err != nil {
		tm.close()
		return nil, fmt.Errorf("tokenizer: %w (pass --tokenizer, or run `make tokenizer`)", err)
	}
	imEnd, ok1 := tm.tok.TokenID(tokenizer.ImEnd)
	pad, ok2 := tm.tok.TokenID(tokenizer.EndOfText)
	if !ok1 || !ok2 {
		tm.close()
		return nil, fmt.Errorf("tokenizer %s has no %s/%s: not a Qwen chat tokenizer", tokPath, tokenizer.ImEnd, tokenizer.EndOfText)
	}
	if tm.tok.VocabSize() > cfg.VocabSize {
		tm.close()
		return nil, fmt.Errorf("tokenizer has %d tokens but the model's vocabulary is %d", tm.tok.VocabSize(), cfg.VocabSize)
	}
	tm.chat = &data.Chat{
		Encode: tm.tok.Encode,
		Render: func(msgs []data.Message, gen bool) string {
			tmsg := make([]tokenizer.Message, len(msgs))
			for i, x := range msgs {
				tmsg[i] = tokenizer.Message{Role: x.Role, Content: x.Content}
			}
			return tokenizer.RenderChat(tmsg, gen)
		},
		EndOfTurn: imEnd,
		Pad:       pad,
	}
	return tm, nil
}

// loadData reads FILE[:RATIO],… into a seeded mixture of tokenised samples.
func loadData(tm *trainModel, spec string, seqLen int, seed uint64, system string, stderr io.Writer) (*data.Mixture, error) {
	sources, err := loadSources(tm.chat, spec, seqLen, system, stderr)
	if err != nil {
		return nil, err
	}
	return data.NewMixture(sources, seed)
}

// loadSources reads FILE[:RATIO],… and tokenises every example with chat, reporting each file
// on stderr.
func loadSources(chat *data.Chat, spec string, seqLen int, system string, stderr io.Writer) ([]data.Source, error) {
	mix, err := data.ParseMix(spec)
	if err != nil {
		return nil, err
	}
	var sources []data.Source
	for _, ms := range mix {
		ex, rep, err := data.ReadFile(ms.Path, data.ReadOptions{System: system})
		if err != nil {
			return nil, err
		}
		var ss []*data.Sample
		cut := 0
		for _, e := range ex {
			s, err := chat.Tokenize(e, seqLen)
			if err != nil {
				return nil, err
			}
			if s.AnswerCut > 0 {
				cut++
			}
			ss = append(ss, s)
		}
		if len(ss) == 0 {
			return nil, fmt.Errorf("%s: no examples", ms.Path)
		}
		fmt.Fprintf(stderr, "data %s: %d examples (%d comments, %d headers skipped), ratio %.3g", ms.Path, len(ss), rep.Comments, rep.Headers, ms.Ratio)
		if cut > 0 {
			fmt.Fprintf(stderr, "; %d answers cut to --seq-len %d", cut, seqLen)
		}
		fmt.Fprintln(stderr)
		sources = append(sources, data.Source{Name: ms.Path, Samples: ss, Ratio: ms.Ratio})
	}
	return sources, nil
}

// heldOut reads and tokenises the --eval file with chat.
func heldOut(chat *data.Chat, path string, seqLen int, system string) ([]*data.Sample, error) {
	ex, _, err := data.ReadFile(path, data.ReadOptions{System: system})
	if err != nil {
		return nil, err
	}
	var held []*data.Sample
	for _, e := range ex {
		s, err := chat.Tokenize(e, seqLen)
		if err != nil {
			return nil, err
		}
		held = append(held, s)
	}
	return held, nil
}

func runTrain(args []string, stdout, stderr io.Writer) int {
	f := cli.New("train")
	f.SetOutput(stderr)
	model := f.String("model", "", "model directory or weight file (safetensors, NVFP4 safetensors, seed .dat)")
	tokPath := f.String("tokenizer", "", "tokenizer.json (default: beside the model, else the cached Qwen3 one)")
	dataSpec := f.String("data", "", "training data: FILE[:RATIO],… (.tsv prompt<TAB>target, .jsonl chat, .txt lines)")
	steps := f.Int("steps", 100, "optimizer steps")
	lr := f.Float("lr", 1e-5, "peak learning rate")
	batch := f.Int("batch", 1, "sequences per step")
	seqLen := f.Int("seq-len", 256, "maximum tokens per sequence (answers are kept)")
	state := f.Choice("optimizer-state", "int8", []string{"fp32", "int8", "4bit"}, "storage of AdamW's m and v")
	master := f.Choice("master", "bf16", []string{"bf16", "fp32"}, "master weight precision")
	clip := f.Float("grad-clip", 1, "global gradient-norm clip (0 = off)")
	wd := f.Float("weight-decay", 0.01, "decoupled weight decay")
	sched := f.Choice("schedule", "constant", []string{"constant", "cosine"}, "learning-rate schedule")
	warmup := f.Int("warmup", 0, "warm-up steps")
	qat := f.Bool("qat", false, "train through NVFP4-quantised projections (straight-through), so NVFP4 export loses nothing")
	evalSpec := f.String("eval", "", "held-out data file: loss and perplexity every --eval-every steps")
	evalEvery := f.Int("eval-every", 0, "steps between evaluations (default steps/5)")
	ckpt := f.String("checkpoint", "", "checkpoint directory, written at the end, every --checkpoint-every steps and on interrupt")
	ckptEvery := f.Int("checkpoint-every", 0, "steps between checkpoints (0 = end only)")
	resume := f.String("resume", "", "resume from this checkpoint directory")
	export := f.String("export", "", "export the trained model: DIR (safetensors), DIR with --export-format nvfp4, or FILE.dat")
	exportFmt := f.Choice("export-format", "bf16", []string{"bf16", "f32", "nvfp4"}, "safetensors export precision")
	seed := f.Int("seed", 0, "data order and stochastic rounding seed")
	system := f.String("system", "", "system prompt added to every chat example")
	on := f.Choice("on", "auto", []string{"auto", "host", "backend"},
		"where steps run: host (engine/train, float32 on the CPU, every option) or backend (engine.Trainer: masters, gradients and moments resident on the engine's backend, the GPU in a cuda build; no --qat); auto: backend when the engine's backend is a GPU and no host-only flag is given")
	jsonOut := f.JSON()
	f.Required("model", "data")
	if code, ok := f.ParseCommand(args); !ok {
		return code
	}
	fail := func(err error) int {
		fmt.Fprintln(stderr, "train:", err)
		return cli.ExitError
	}
	var schedule optim.Schedule = optim.Constant(*lr)
	if *sched == "cosine" {
		schedule = optim.WarmupCosine(*lr, *warmup, *steps, *lr/10)
	} else if *warmup > 0 {
		schedule = optim.WarmupCosine(*lr, *warmup, *warmup, *lr)
	}
	hostOnly := map[string]bool{"--qat": *qat}
	onBackend := *on == "backend"
	if *on == "auto" {
		if _, cpuOnly := engine.Backend().(*cpu.Backend); !cpuOnly {
			onBackend = true
			for flag, set := range hostOnly {
				if set {
					onBackend = false
					fmt.Fprintf(stderr, "train: %s needs the host trainer: training on the CPU (float32 reference), not on %s\n", flag, engine.Device())
					break
				}
			}
		}
	}
	if onBackend {
		return runTrainBackend(backendTrain{
			model: *model, tokPath: *tokPath, dataSpec: *dataSpec, evalSpec: *evalSpec, system: *system,
			steps: *steps, batch: *batch, seqLen: *seqLen, evalEvery: *evalEvery, seed: uint64(*seed),
			state: *state, master: *master, clip: *clip, wd: *wd, schedule: schedule,
			export: *export, exportFmt: *exportFmt, json: *jsonOut, hostOnly: hostOnly,
			checkpoint: *ckpt, checkpointEvery: *ckptEvery, resume: *resume,
		}, stdout, stderr)
	}
	tm, err := openForTraining(*model, *tokPath)
	if err != nil {
		return fail(err)
	}
	defer tm.close()
	tm.m.QAT = *qat
	mix, err := loadData(tm, *dataSpec, *seqLen, uint64(*seed), *system, stderr)
	if err != nil {
		return fail(err)
	}
	oc := optim.DefaultConfig()
	oc.LR, oc.ClipNorm, oc.WeightDecay, oc.Seed = *lr, *clip, *wd, uint64(*seed)
	if oc.State, err = optim.ParseStateFormat(*state); err != nil {
		return fail(err)
	}
	if oc.Master, err = optim.ParseMasterFormat(*master); err != nil {
		return fail(err)
	}
	tr, err := train.New(tm.m.Trainable(), mix, train.Config{Optim: oc, Schedule: schedule, BatchSize: *batch, Pad: tm.chat.Pad})
	if err != nil {
		return fail(err)
	}
	if *resume != "" {
		if err := tr.LoadCheckpoint(*resume); err != nil {
			return fail(err)
		}
		fmt.Fprintf(stderr, "resumed %s at step %d\n", *resume, tr.StepCount())
	}
	var held []*data.Sample
	if *evalSpec != "" {
		if held, err = heldOut(tm.chat, *evalSpec, *seqLen, *system); err != nil {
			return fail(err)
		}
		if *evalEvery <= 0 {
			*evalEvery = max(1, *steps/5)
		}
	}
	per, _, _ := tr.Opt.StateBytes()
	fmt.Fprintf(stderr, "model %s: %d parameter tensors, %.1fM parameters; optimizer %s m+v %.3f bytes/param, %s masters\n",
		*model, len(tm.m.Params), float64(tm.cfg.NumParams())/1e6, *state, per, *master)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	remaining := *steps - tr.StepCount()
	err = tr.Fit(ctx, max(0, remaining), train.Callbacks{
		OnStep: func(r train.StepResult) error {
			if *jsonOut {
				jsonLine(stdout, r)
			} else {
				fmt.Fprintf(stdout, "step %4d  loss %.4f  grad-norm %.3f  lr %.3g  %.0f tok/s%s\n", r.Step, r.Loss, r.GradNorm, r.LR, r.TokensPerSec, flags(r))
			}
			if *ckpt != "" && *ckptEvery > 0 && r.Step%*ckptEvery == 0 {
				return tr.SaveCheckpoint(*ckpt)
			}
			return nil
		},
		EvalEvery: *evalEvery,
		Eval: func(step int) error {
			if len(held) == 0 {
				return nil
			}
			h, err := train.EvalLoss(ctx, tm.m.Trainable(), held, max(1, *batch), tm.chat.Pad, nil)
			if err != nil {
				return err
			}
			if *jsonOut {
				jsonLine(stdout, map[string]any{"step": step, "eval_loss": h.Loss, "eval_perplexity": h.Perplexity, "eval_targets": h.Targets})
			} else {
				fmt.Fprintf(stdout, "eval after step %d: held-out loss %.4f, perplexity %.2f (%d targets)\n", step, h.Loss, h.Perplexity, h.Targets)
			}
			return nil
		},
	})
	interrupted := errors.Is(err, context.Canceled)
	if err != nil && !interrupted {
		return fail(err)
	}
	if interrupted {
		fmt.Fprintf(stderr, "interrupted after step %d (no step was left half applied)\n", tr.StepCount())
	}
	if *ckpt != "" {
		if err := tr.SaveCheckpoint(*ckpt); err != nil {
			return fail(err)
		}
		fmt.Fprintf(stderr, "checkpoint: %s (step %d)\n", *ckpt, tr.StepCount())
	}
	if *export != "" && !interrupted {
		if err := exportModel(tm, *export, *exportFmt); err != nil {
			return fail(err)
		}
		fmt.Fprintf(stderr, "exported %s\n", *export)
	}
	if skipped := tr.Opt.Skipped(); skipped > 0 {
		fmt.Fprintf(stderr, "%d steps skipped for non-finite loss or gradients\n", skipped)
	}
	if interrupted {
		return 130
	}
	return cli.ExitOK
}

// jsonLine writes v as one compact JSON line (the --json stream: one object per step).
func jsonLine(w io.Writer, v any) {
	json.NewEncoder(w).Encode(v)
}

func flags(r train.StepResult) string {
	var s []string
	if r.Clipped {
		s = append(s, "clipped")
	}
	if r.Skipped {
		s = append(s, "SKIPPED (non-finite)")
	}
	if len(s) == 0 {
		return ""
	}
	return "  [" + strings.Join(s, ", ") + "]"
}

// exportModel writes the trained weights; a .dat path keeps the source .dat's layout when the
// model came from one.
func exportModel(tm *trainModel, path, precision string) error {
	if strings.HasSuffix(path, ".dat") {
		return tm.m.SaveDat(path, tm.dat)
	}
	var err error
	switch precision {
	case "nvfp4":
		err = tm.m.SaveNVFP4(path)
	case "f32":
		err = tm.m.SaveSafetensors(path, tensor.F32)
	default:
		err = tm.m.SaveSafetensors(path, tensor.BF16)
	}
	if err != nil {
		return err
	}
	// carry the tokenizer along so the export loads as is
	if src, err := os.ReadFile(tm.tokPathOrEmpty()); err == nil {
		return format.WriteFileAtomic(filepath.Join(path, "tokenizer.json"), src)
	}
	return nil
}
