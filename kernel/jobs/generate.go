package jobs

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"

	"github.com/qwengo/qwengo/engine"
	"github.com/qwengo/qwengo/kernel/cli"
)

func init() {
	cli.Register(cli.Command{Name: "generate", Summary: "generate text (or ids) from a prompt, optionally with the chat template", Run: runGenerate})
}

// generateOutput is the --json document.
type generateOutput struct {
	Text          string      `json:"text"`
	IDs           []int       `json:"ids"`
	PromptIDs     []int       `json:"prompt_ids"`
	StopReason    string      `json:"stop_reason"`
	PrefillTokens int         `json:"prefill_tokens"`
	DecodeTokens  int         `json:"decode_tokens"`
	PrefillMs     float64     `json:"prefill_ms"`
	DecodeMs      float64     `json:"decode_ms"`
	PrefillTPS    float64     `json:"prefill_tokens_per_sec"`
	DecodeTPS     float64     `json:"decode_tokens_per_sec"`
	Logits        [][]float32 `json:"logits,omitempty"`
	Device        string      `json:"device"`
}

func runGenerate(args []string, stdout, stderr io.Writer) int {
	f := cli.New("generate")
	f.SetOutput(stderr)
	model := f.String("model", "", "model directory or weight file (safetensors, NVFP4 safetensors, seed .dat)")
	tok := f.String("tokenizer", "", "tokenizer.json (default: beside the model, else the cached Qwen3 one)")
	prompt := f.String("prompt", "", "prompt text")
	ids := f.IntList("ids", nil, "prompt token ids, comma-separated (instead of --prompt)")
	chat := f.Bool("chat", false, "wrap the prompt in the chat template (user turn + generation prompt)")
	system := f.String("system", "", "system prompt (implies --chat)")
	maxTok := f.Int("max-tokens", 128, "tokens to generate at most")
	temp := f.Float("temp", 0, "temperature (0 = greedy)")
	topP := f.Float("top-p", 0, "nucleus sampling mass (0 = off)")
	topK := f.Int("top-k", 0, "keep the k most likely tokens (0 = off)")
	minP := f.Float("min-p", 0, "drop tokens below min-p × the top probability")
	rep := f.Float("repetition-penalty", 1, "HF repetition penalty (1 = off)")
	seed := f.Int("seed", 0, "sampling seed")
	precision := f.Choice("precision", "", []string{"", "f32", "bf16", "nvfp4"}, "linear weight precision (default: as stored)")
	lmHead := f.Choice("lm-head", "", []string{"", "nvfp4"}, "the logits' matrix: as stored (or the tied embedding), or an NVFP4 copy (a quarter of the bytes a token reads)")
	noKV := f.Bool("no-kv-cache", false, "recompute the whole sequence for every token (reference path)")
	timing := f.Bool("timing", false, "print prefill/decode speed on stderr")
	logits := f.Choice("logits", "", []string{"", "last", "all"}, "also output logits of the prompt's last or all positions (with --json)")
	jsonOut := f.JSON()
	f.Required("model")
	if code, ok := f.ParseCommand(args); !ok {
		return code
	}
	fail := func(err error) int {
		fmt.Fprintln(stderr, "generate:", err)
		return cli.ExitError
	}
	if (*prompt == "") == (len(*ids) == 0) {
		fmt.Fprintln(stderr, "generate: give exactly one of --prompt and --ids")
		return cli.ExitUsage
	}
	m, err := engine.LoadWith(*model, engine.LoadOptions{Tokenizer: *tok, Precision: *precision, LMHead: *lmHead})
	if err != nil {
		return fail(err)
	}
	defer m.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	engine.CurrentContext = func() context.Context { return ctx }
	opt := engine.GenerateOptions{MaxTokens: *maxTok, Temperature: *temp, TopP: *topP, TopK: *topK, MinP: *minP,
		RepetitionPenalty: *rep, Seed: uint64(*seed), Chat: *chat, System: *system, NoKVCache: *noKV}
	if !*jsonOut {
		opt.Stream = func(s string) { io.WriteString(stdout, s) }
	}
	var g *engine.Generation
	if len(*ids) > 0 {
		g, err = m.GenerateIDs(*ids, opt)
	} else {
		g, err = m.Generate(*prompt, opt)
	}
	if g == nil {
		return fail(err)
	}
	out := generateOutput{Text: g.Text, IDs: g.IDs, PromptIDs: g.PromptIDs, StopReason: g.StopReason,
		PrefillTokens: g.PrefillTokens, DecodeTokens: g.DecodeTokens, PrefillMs: g.PrefillMs, DecodeMs: g.DecodeMs,
		PrefillTPS: g.PrefillTPS, DecodeTPS: g.DecodeTPS, Device: engine.Device()}
	if *logits != "" {
		lg, lerr := m.LogitsIDs(g.PromptIDs, *logits == "all")
		if lerr != nil {
			return fail(lerr)
		}
		for r := 0; r < lg.Rows; r++ {
			out.Logits = append(out.Logits, lg.Row(r))
		}
	}
	if *jsonOut {
		cli.WriteJSON(stdout, out)
	} else {
		fmt.Fprintln(stdout)
		if *logits != "" {
			last := out.Logits[len(out.Logits)-1]
			fmt.Fprintf(stdout, "logits: %d rows of %d; last row argmax %d\n", len(out.Logits), len(last), argmax(last))
		}
	}
	if *timing || (err != nil && !*jsonOut) {
		fmt.Fprintf(stderr, "prefill %d tokens in %.1f ms (%.1f tok/s); decode %d tokens in %.1f ms (%.1f tok/s); stop: %s; %s\n",
			g.PrefillTokens, g.PrefillMs, g.PrefillTPS, g.DecodeTokens, g.DecodeMs, g.DecodeTPS, g.StopReason, engine.Device())
	}
	if err != nil {
		return fail(err)
	}
	return cli.ExitOK
}

func argmax(v []float32) int {
	best := 0
	for i, x := range v {
		if x > v[best] {
			best = i
		}
	}
	return best
}
