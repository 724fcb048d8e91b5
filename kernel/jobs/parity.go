package jobs

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"

	"github.com/qwengo/qwengo/engine"
	"github.com/qwengo/qwengo/engine/parity"
	"github.com/qwengo/qwengo/engine/qwen3"
	"github.com/qwengo/qwengo/engine/tokenizer"
	"github.com/qwengo/qwengo/kernel/cli"
)

func init() {
	cli.Register(cli.Command{Name: "parity", Summary: "compare two numeric paths (backend, precision, QAT, KV cache) layer by layer", Run: runParity})
}

// runParity is `qwenrepl parity`: engine/parity's Compare on the command line.
func runParity(args []string, stdout, stderr io.Writer) int {
	f := cli.New("parity")
	f.SetOutput(stderr)
	model := f.String("model", "", "model directory or weight file (safetensors, NVFP4 safetensors, seed .dat)")
	specA := f.String("a", "", "first path, e.g. cpu:f32 (tokens in any order: cpu|cuda, nvfp4|bf16|f32|stored, kv, qat, cache=f32|bf16, scalebug=N)")
	specB := f.String("b", "", "second path, e.g. cpu:nvfp4:kv")
	prompt := f.String("prompt", "", "prompt text (needs a tokenizer)")
	ids := f.IntList("ids", nil, "prompt token ids, comma-separated (instead of --prompt)")
	chat := f.Bool("chat", false, "wrap the prompt in the chat template (user turn + generation prompt)")
	system := f.String("system", "", "system prompt (implies --chat)")
	tokPath := f.String("tokenizer", "", "tokenizer.json (default: beside the model, else the cached Qwen3 one)")
	all := f.Bool("all-positions", false, "compare every position, not only the last")
	bugLayer := f.Int("scale-bug-layer", -1, "inject the seed's fp8-scale bug (E4M3 scale bytes read as integers) into this layer of --b")
	cosTh := f.Float("cos-threshold", parity.DefaultCosineThreshold, "a layer diverges when its cosine is below this")
	relTh := f.Float("rel-threshold", parity.DefaultRelThreshold, "a layer diverges when ‖a−b‖/‖a‖ is above this (negative: off)")
	topK := f.Int("top", parity.DefaultTopK, "next tokens listed per side")
	failOn := f.Bool("fail-on-diverge", false, "exit 1 when a layer diverges")
	jsonOut := f.JSON()
	f.Required("model", "a", "b")
	if code, ok := f.ParseCommand(args); !ok {
		return code
	}
	usage := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "parity: "+format+"\n", a...)
		return cli.ExitUsage
	}
	fail := func(err error) int {
		fmt.Fprintln(stderr, "parity:", err)
		return cli.ExitError
	}
	a, err := parity.ParseSpec(*specA)
	if err != nil {
		return usage("--a: %v", err)
	}
	b, err := parity.ParseSpec(*specB)
	if err != nil {
		return usage("--b: %v", err)
	}
	if (*prompt == "") == (len(*ids) == 0) {
		return usage("give exactly one of --prompt and --ids")
	}
	if (*chat || *system != "") && *prompt == "" {
		return usage("--chat and --system need --prompt")
	}
	if f.IsSet("scale-bug-layer") {
		if *bugLayer < 0 {
			return usage("--scale-bug-layer %d: want a layer number 0 or more", *bugLayer)
		}
		if b.ScaleBug && b.ScaleBugLayer != *bugLayer {
			return usage("--scale-bug-layer %d contradicts scalebug=%d in --b", *bugLayer, b.ScaleBugLayer)
		}
		b.ScaleBug, b.ScaleBugLayer = true, *bugLayer
	}
	if !(*cosTh > 0 && *cosTh <= 1) {
		return usage("--cos-threshold %g: want a value in (0, 1]", *cosTh)
	}
	if *relTh == 0 {
		return usage("--rel-threshold 0: every difference would diverge; give a positive bound or a negative value for off")
	}
	if *topK < 1 {
		return usage("--top %d: want at least 1", *topK)
	}

	fi, err := os.Stat(*model)
	if err != nil {
		return fail(err)
	}
	dir := *model
	if !fi.IsDir() {
		dir = filepath.Dir(*model)
	}
	cfg, err := qwen3.LoadConfig(filepath.Join(dir, "config.json"))
	if err != nil {
		return fail(err)
	}
	tok, err := parityTokenizer(*tokPath, dir, cfg, *prompt != "", stderr)
	if err != nil {
		return fail(err)
	}
	promptIDs := *ids
	if *prompt != "" {
		text := *prompt
		if *chat || *system != "" {
			var msgs []tokenizer.Message
			if *system != "" {
				msgs = append(msgs, tokenizer.Message{Role: "system", Content: *system})
			}
			text = tokenizer.RenderChat(append(msgs, tokenizer.Message{Role: "user", Content: *prompt}), true)
		}
		promptIDs = tok.Encode(text)
		if len(promptIDs) == 0 {
			return usage("--prompt %q encodes to no tokens", *prompt)
		}
	}
	opt := parity.Options{CosineThreshold: *cosTh, RelThreshold: *relTh, AllPositions: *all, TopK: *topK}
	if tok != nil {
		opt.Decode = tok.Decode
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	r, err := parity.Compare(ctx, *model, a, b, promptIDs, opt)
	if err != nil {
		return fail(err)
	}
	if *jsonOut {
		if err := cli.WriteJSON(stdout, r); err != nil {
			return fail(err)
		}
	} else {
		if *prompt != "" {
			fmt.Fprintf(stdout, "prompt: %q (%d tokens)\n", *prompt, len(promptIDs))
		}
		io.WriteString(stdout, r.String())
	}
	if *failOn && r.Diverges() {
		return cli.ExitError
	}
	return cli.ExitOK
}

// parityTokenizer finds the tokenizer: --tokenizer, else tokenizer.json beside the model, else
// the cached Qwen3 one. A prompt needs one (Compare rejects ids outside the model's vocabulary);
// with --ids it only labels the next-token lists, so a missing one is skipped and one larger
// than the model's vocabulary (it belongs to another model) is skipped with a note.
func parityTokenizer(explicit, dir string, cfg *qwen3.Config, need bool, stderr io.Writer) (*tokenizer.Tokenizer, error) {
	path := explicit
	if path == "" {
		path = filepath.Join(dir, "tokenizer.json")
		if _, err := os.Stat(path); err != nil {
			path = engine.DefaultTokenizerPath()
		}
	}
	if _, err := os.Stat(path); err != nil && explicit == "" && !need {
		return nil, nil
	}
	tok, err := tokenizer.Load(path)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w (pass --tokenizer, or run `make tokenizer`)", err)
	}
	if tok.VocabSize() > cfg.VocabSize && !need {
		fmt.Fprintf(stderr, "parity: tokenizer %s (%d tokens) does not fit the model's vocabulary of %d: next tokens shown as ids only\n", path, tok.VocabSize(), cfg.VocabSize)
		return nil, nil
	}
	return tok, nil
}
