package jobs

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/qwengo/qwengo/engine"
	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/corpus"
	"github.com/qwengo/qwengo/engine/data"
	"github.com/qwengo/qwengo/engine/devtrain"
	"github.com/qwengo/qwengo/engine/format"
	"github.com/qwengo/qwengo/engine/grad"
	"github.com/qwengo/qwengo/engine/optim"
	"github.com/qwengo/qwengo/engine/qwen3"
	"github.com/qwengo/qwengo/engine/tensor"
	"github.com/qwengo/qwengo/engine/tokenizer"
	"github.com/qwengo/qwengo/kernel/cli"
)

func init() {
	cli.Register(cli.Command{Name: "pretrain", Summary: "train a Qwen3-architecture model from random weights on a corpus (the embedded model's recipe)", Run: runPretrain})
}

// pretrainOptions are the flags of `qwenrepl pretrain`.
type pretrainOptions struct {
	corpusDir, out, tokPath                   string
	layers, hidden, inter, heads, kvHeads, hd int
	steps, batch, seqLen, warmup, evalEvery   int
	evalSamples, accSamples, logEvery         int
	lr, minLRFrac, wd, std                    float64
	state, master                             string
	quantEmbed                                bool
	seed                                      uint64
	timeLimit                                 time.Duration
}

// pretrainMetric is one line of metrics.jsonl.
type pretrainMetric struct {
	Step      int     `json:"step"`
	Loss      float64 `json:"loss,omitempty"`
	LR        float64 `json:"lr,omitempty"`
	TokPerSec float64 `json:"tok_per_s,omitempty"`
	Seconds   float64 `json:"elapsed_s"`
	// held-out loss per set (mean over scored tokens)
	Eval map[string]float64 `json:"eval_loss,omitempty"`
}

func runPretrain(args []string, stdout, stderr io.Writer) int {
	f := cli.New("pretrain")
	f.SetOutput(stderr)
	corpusDir := f.String("corpus", ".cache/corpus/v1", "corpus folder written by `qwenrepl corpus` (train.jsonl, heldout_*.jsonl, manifest.json)")
	out := f.String("out", "", "output folder (bf16/ and nvfp4/ checkpoints, metrics.jsonl, MODEL_CARD.md)")
	tokPath := f.String("tokenizer", "", "tokenizer.json (default: the Qwen3 tokenizer of `make tokenizer`)")
	layers := f.Int("layers", 6, "decoder layers")
	hidden := f.Int("hidden", 256, "hidden size")
	inter := f.Int("intermediate", 768, "MLP intermediate size")
	heads := f.Int("heads", 4, "query heads")
	kvHeads := f.Int("kv-heads", 2, "key/value heads")
	hd := f.Int("head-dim", 64, "head dimension")
	steps := f.Int("steps", 3000, "optimizer steps")
	batch := f.Int("batch", 64, "sequences per step")
	seqLen := f.Int("seq-len", 160, "longest training sequence (longer samples are cut keeping the answer)")
	warmup := f.Int("warmup", 100, "linear warm-up steps")
	evalEvery := f.Int("eval-every", 250, "held-out loss every N steps (0: only at the end)")
	evalSamples := f.Int("eval-samples", 256, "held-out samples per set for the loss")
	accSamples := f.Int("accuracy-samples", 100, "held-out questions per set and language for the answer accuracy (greedy generation)")
	quantEmbed := f.Bool("quantize-embedding", true, "store the tied embedding as NVFP4 too (the embedded model's size; other engines expect a bf16 embedding)")
	logEvery := f.Int("log-every", 20, "print a progress line every N steps")
	lr := f.Float("lr", 2e-3, "peak learning rate")
	minLRFrac := f.Float("min-lr-frac", 0.1, "cosine floor as a fraction of --lr")
	wd := f.Float("weight-decay", 0.1, "AdamW decoupled weight decay")
	std := f.Float("init-std", 0.02, "initial weight standard deviation")
	state := f.Choice("optimizer-state", "fp32", []string{"fp32", "int8"}, "storage of AdamW's m and v")
	master := f.Choice("master", "fp32", []string{"fp32", "bf16"}, "master weight precision")
	seed := f.Int("seed", 1, "initialisation and data order seed")
	timeLimit := f.Duration("time-limit", 0, "stop (and export) after this much training time, e.g. 8m (0: none)")
	jsonOut := f.JSON()
	f.Required("out")
	if code, ok := f.ParseCommand(args); !ok {
		return code
	}
	o := pretrainOptions{corpusDir: *corpusDir, out: *out, tokPath: *tokPath, layers: *layers, hidden: *hidden, inter: *inter,
		heads: *heads, kvHeads: *kvHeads, hd: *hd, steps: *steps, batch: *batch, seqLen: *seqLen, warmup: *warmup,
		evalEvery: *evalEvery, evalSamples: *evalSamples, accSamples: *accSamples, logEvery: max(1, *logEvery),
		quantEmbed: *quantEmbed, lr: *lr, minLRFrac: *minLRFrac, wd: *wd, std: *std, state: *state, master: *master, seed: uint64(*seed), timeLimit: *timeLimit}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	sum, err := pretrain(ctx, o, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "pretrain:", err)
		return cli.ExitError
	}
	if *jsonOut {
		jsonLine(stdout, sum)
	} else {
		fmt.Fprintf(stdout, "pretrain: %d steps, final loss %.4f, held-out accuracy %v → %s\n", sum.Steps, sum.FinalLoss, sum.Accuracy, o.out)
	}
	return 0
}

// pretrainSummary is what the run reports and the model card records.
type pretrainSummary struct {
	Steps        int                `json:"steps"`
	Tokens       int64              `json:"tokens"`
	Seconds      float64            `json:"train_seconds"`
	FinalLoss    float64            `json:"final_loss"`
	EvalLoss     map[string]float64 `json:"eval_loss"`
	Accuracy     map[string]float64 `json:"accuracy"` // per held-out set and language
	Examples     []qaExample        `json:"examples"`
	Params       int64              `json:"params"`
	NVFP4Bytes   int64              `json:"nvfp4_bytes"`
	Device       string             `json:"device"`
	PeakMemBytes int64              `json:"peak_memory_bytes"`
	Config       json.RawMessage    `json:"config"`
}

func pretrainConfig(o pretrainOptions, tok *tokenizer.Tokenizer) (*qwen3.Config, error) {
	eos, ok := tok.TokenID(tokenizer.ImEnd)
	if !ok {
		return nil, fmt.Errorf("tokenizer has no %s", tokenizer.ImEnd)
	}
	eot, _ := tok.TokenID(tokenizer.EndOfText)
	cfg := &qwen3.Config{
		VocabSize: 151936, HiddenSize: o.hidden, IntermediateSize: o.inter, NumLayers: o.layers,
		NumHeads: o.heads, NumKVHeads: o.kvHeads, HeadDim: o.hd, RMSNormEps: 1e-6, RopeTheta: 1e6,
		TieEmbeddings: true, MaxPositions: 4096, EOSTokenIDs: []int{eos, eot}, BOSTokenID: -1,
	}
	if tok.VocabSize() > cfg.VocabSize {
		return nil, fmt.Errorf("tokenizer has %d tokens, more than the vocabulary %d", tok.VocabSize(), cfg.VocabSize)
	}
	return cfg, cfg.Validate()
}

// readSamplesRaw reads a corpus JSONL split (engine/corpus.Sample per line), naming file:line
// on bad input.
func readSamplesRaw(path string) (int, []corpus.Sample, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, nil, err
	}
	defer f.Close()
	var raw []corpus.Sample
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	line := 0
	for sc.Scan() {
		line++
		var cs corpus.Sample
		if err := json.Unmarshal(sc.Bytes(), &cs); err != nil {
			return 0, nil, fmt.Errorf("%s:%d: %v", path, line, err)
		}
		raw = append(raw, cs)
	}
	if err := sc.Err(); err != nil {
		return 0, nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(raw) == 0 {
		return 0, nil, fmt.Errorf("%s: no samples", path)
	}
	return line, raw, nil
}

// readSamples reads a corpus JSONL split and tokenises it (at most limit samples; 0 = all).
func readSamples(chat *data.Chat, path string, seqLen, limit int) ([]*data.Sample, []corpus.Sample, error) {
	_, raw, err := readSamplesRaw(path)
	if err != nil {
		return nil, nil, err
	}
	if limit > 0 && len(raw) > limit {
		raw = raw[:limit]
	}
	ss := make([]*data.Sample, len(raw))
	for i, cs := range raw {
		if ss[i], err = chat.Tokenize(data.Example{Messages: cs.Messages}, seqLen); err != nil {
			return nil, nil, fmt.Errorf("%s: sample %d: %w", path, i+1, err)
		}
	}
	return ss, raw, nil
}

func chatCodec(tok *tokenizer.Tokenizer) *data.Chat {
	imEnd, _ := tok.TokenID(tokenizer.ImEnd)
	pad, _ := tok.TokenID(tokenizer.EndOfText)
	return &data.Chat{
		Encode: tok.Encode,
		Render: func(msgs []data.Message, gen bool) string {
			t := make([]tokenizer.Message, len(msgs))
			for i, x := range msgs {
				t[i] = tokenizer.Message{Role: x.Role, Content: x.Content}
			}
			return tokenizer.RenderChat(t, gen)
		},
		EndOfTurn: imEnd,
		Pad:       pad,
	}
}

func pretrain(ctx context.Context, o pretrainOptions, log io.Writer) (*pretrainSummary, error) {
	tokPath := o.tokPath
	if tokPath == "" {
		tokPath = engine.DefaultTokenizerPath()
	}
	tok, err := tokenizer.Load(tokPath)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w (run `make tokenizer` or pass --tokenizer)", err)
	}
	cfg, err := pretrainConfig(o, tok)
	if err != nil {
		return nil, err
	}
	chat := chatCodec(tok)
	train, _, err := readSamples(chat, filepath.Join(o.corpusDir, corpus.TrainFile), o.seqLen, 0)
	if err != nil {
		return nil, fmt.Errorf("%w (build the corpus with `make corpus`)", err)
	}
	evalSets := map[string][]*data.Sample{}
	rawSets := map[string][]corpus.Sample{}
	for _, name := range []string{corpus.HeldoutPhrasingFile, corpus.HeldoutFactsFile} {
		ss, raw, err := readSamples(chat, filepath.Join(o.corpusDir, name), o.seqLen, 0)
		if err != nil {
			return nil, err
		}
		key := strings.TrimSuffix(name, ".jsonl")
		evalSets[key], rawSets[key] = ss, raw
	}
	mix, err := data.NewMixture([]data.Source{{Name: "train", Samples: train, Ratio: 1}}, o.seed)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return nil, err
	}

	b, err := backend.AsTraining(engine.Backend())
	if err != nil {
		return nil, err
	}
	gm, err := grad.New(cfg)
	if err != nil {
		return nil, err
	}
	gm.Randomize(o.seed, 0, o.std)
	var params int64
	for _, p := range gm.Params {
		params += int64(p.Rows * p.Cols)
	}
	opt := devtrain.DefaultOptions()
	opt.Master, opt.State = o.master, o.state
	opt.WeightDecay, opt.Seed, opt.ClipNorm = o.wd, o.seed, 1
	dm, err := devtrain.New(b, gm, opt)
	if err != nil {
		return nil, err
	}
	defer dm.Close()
	gm = nil // the masters live on the backend now
	fmt.Fprintf(log, "pretrain: %d parameters (%d layers, hidden %d, vocab %d) on %s; %d training samples; %d steps of %d sequences\n",
		params, cfg.NumLayers, cfg.HiddenSize, cfg.VocabSize, b.Name(), len(train), o.steps, o.batch)

	sched := optim.WarmupCosine(o.lr, o.warmup, o.steps, o.lr*o.minLRFrac)
	metrics, err := os.Create(filepath.Join(o.out, "metrics.jsonl"))
	if err != nil {
		return nil, err
	}
	defer metrics.Close()
	mw := json.NewEncoder(metrics)
	evalLoss := func() (map[string]float64, error) {
		res := map[string]float64{}
		for name, ss := range evalSets {
			n := min(len(ss), o.evalSamples)
			var sum float64
			var cnt int
			for i := 0; i < n; i += o.batch {
				bt := data.MakeBatch(ss[i:min(n, i+o.batch)], chat.Pad)
				s, c, err := dm.Loss(ctx, bt)
				if err != nil {
					return nil, err
				}
				sum += s
				cnt += c
			}
			res[name] = sum / float64(max(cnt, 1))
		}
		return res, nil
	}

	sum := &pretrainSummary{Params: params, Device: b.Name()}
	start := time.Now()
	var tokens int64
	var lossEMA float64
	winTok, winStart := 0, time.Now()
	step := 0
	for step < o.steps {
		if o.timeLimit > 0 && time.Since(start) > o.timeLimit {
			fmt.Fprintf(log, "pretrain: time limit %s reached at step %d\n", o.timeLimit, step)
			break
		}
		if ctx.Err() != nil {
			fmt.Fprintf(log, "pretrain: interrupted at step %d; exporting what was trained\n", step)
			break
		}
		bt := mix.NextBatch(o.batch, chat.Pad)
		lr := sched.LR(step)
		st, err := dm.Step(ctx, bt, lr)
		if err != nil {
			if errors.Is(err, context.Canceled) {
				continue
			}
			return nil, fmt.Errorf("step %d: %w", step+1, err)
		}
		step++
		tokens += int64(bt.B * bt.T)
		winTok += bt.B * bt.T
		if step == 1 {
			lossEMA = st.Loss
		}
		lossEMA = 0.95*lossEMA + 0.05*st.Loss
		sum.FinalLoss = lossEMA
		m := pretrainMetric{Step: step, Loss: st.Loss, LR: lr, Seconds: time.Since(start).Seconds()}
		if step%o.logEvery == 0 || step == o.steps {
			tps := float64(winTok) / time.Since(winStart).Seconds()
			m.TokPerSec = tps
			fmt.Fprintf(log, "step %5d  loss %.4f (avg %.4f)  lr %.2e  %.0f tok/s  %s\n", step, st.Loss, lossEMA, lr, tps, time.Since(start).Round(time.Second))
			winTok, winStart = 0, time.Now()
		}
		if o.evalEvery > 0 && step%o.evalEvery == 0 {
			if m.Eval, err = evalLoss(); err != nil {
				return nil, err
			}
			fmt.Fprintf(log, "eval  %5d  %v\n", step, fmtLosses(m.Eval))
		}
		if err := mw.Encode(m); err != nil {
			return nil, err
		}
	}
	sum.Steps, sum.Tokens, sum.Seconds = step, tokens, time.Since(start).Seconds()
	sum.PeakMemBytes = dm.Memory().Peak
	if sum.EvalLoss, err = evalLoss(); err != nil {
		return nil, err
	}
	_ = mw.Encode(pretrainMetric{Step: step, Seconds: sum.Seconds, Eval: sum.EvalLoss})

	// Export: bf16 safetensors (the training result) and NVFP4 (what is embedded and served).
	em, err := dm.Export()
	if err != nil {
		return nil, err
	}
	bf16Dir, nvDir := filepath.Join(o.out, "bf16"), filepath.Join(o.out, "nvfp4")
	if err := em.SaveSafetensors(bf16Dir, tensor.BF16); err != nil {
		return nil, err
	}
	if err := em.SaveNVFP4With(nvDir, o.quantEmbed); err != nil {
		return nil, err
	}
	if sum.NVFP4Bytes, err = dirBytes(nvDir); err != nil {
		return nil, err
	}
	if cj, err := json.Marshal(cfg.HFJSON("bfloat16", true)); err == nil {
		sum.Config = cj
	}
	dm.Close()

	// Held-out answer accuracy by greedy generation with the exported NVFP4 model.
	im, err := engine.LoadWith(nvDir, engine.LoadOptions{Tokenizer: tokPath})
	if err != nil {
		return nil, fmt.Errorf("loading the NVFP4 export: %w", err)
	}
	defer im.Close()
	if sum.Accuracy, sum.Examples, err = answerAccuracy(ctx, im, rawSets, o.accSamples); err != nil {
		return nil, err
	}
	if err := writeModelCard(o, sum); err != nil {
		return nil, err
	}
	return sum, nil
}

// qaExample is one held-out question with the model's answer, for the model card.
type qaExample struct {
	Set, Lang, Question, Gold, Answer string
	Match                             bool
}

// answerAccuracy generates greedy answers to up to perLang questions per language of each
// held-out set and scores them with corpus.AnswerMatches against the sample's answer key.
// Keys are "set/lang" and "set/all".
func answerAccuracy(ctx context.Context, im *engine.Model, sets map[string][]corpus.Sample, perLang int) (map[string]float64, []qaExample, error) {
	acc := map[string]float64{}
	var examples []qaExample
	for _, name := range sortedSetNames(sets) {
		// The first perLang questions of each language, then greedy answers for them in
		// batches (engine.GenerateBatch: the same answers as one Generate each, one forward per
		// step for the whole batch).
		type question struct{ lang, q, gold string }
		var qs []question
		picked := map[string]int{}
		for _, s := range sets[name] {
			if picked[s.Lang] >= perLang {
				continue
			}
			picked[s.Lang]++
			q, gold := lastExchange(s.Messages)
			if s.Answer != "" {
				gold = s.Answer
			}
			qs = append(qs, question{s.Lang, q, gold})
		}
		hit, tot := map[string]int{}, map[string]int{}
		for i := 0; i < len(qs); i += evalBatch {
			if ctx.Err() != nil {
				return nil, nil, ctx.Err()
			}
			chunk := qs[i:min(i+evalBatch, len(qs))]
			prompts := make([]string, len(chunk))
			for j, q := range chunk {
				prompts[j] = q.q
			}
			gens, err := im.GenerateBatch(prompts, engine.GenerateOptions{Chat: true, MaxTokens: 96})
			if err != nil {
				return nil, nil, err
			}
			for j, q := range chunk {
				ok := corpus.AnswerMatches(gens[j].Text, q.gold)
				tot[q.lang]++
				tot["all"]++
				if ok {
					hit[q.lang]++
					hit["all"]++
				}
				if tot[q.lang] <= 2 {
					examples = append(examples, qaExample{Set: name, Lang: q.lang, Question: q.q, Gold: q.gold, Answer: gens[j].Text, Match: ok})
				}
			}
		}
		for lang, n := range tot {
			acc[name+"/"+lang] = float64(hit[lang]) / float64(n)
		}
	}
	return acc, examples, nil
}

// evalBatch is how many questions answerAccuracy generates for at once.
const evalBatch = 16

func sortedSetNames(m map[string][]corpus.Sample) []string {
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	sort.Strings(names)
	return names
}

func lastExchange(msgs []data.Message) (question, answer string) {
	for _, m := range msgs {
		switch m.Role {
		case "user":
			question = m.Content
		case "assistant":
			answer = m.Content
		}
	}
	return question, answer
}

func fmtLosses(m map[string]float64) string {
	var parts []string
	for k, v := range m {
		parts = append(parts, fmt.Sprintf("%s %.4f (ppl %.1f)", k, v, math.Exp(v)))
	}
	return strings.Join(parts, ", ")
}

func dirBytes(dir string) (int64, error) {
	var n int64
	err := filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if !fi.IsDir() {
			n += fi.Size()
		}
		return nil
	})
	return n, err
}

// writeModelCard records data, recipe, loss and held-out metrics next to the checkpoints.
func writeModelCard(o pretrainOptions, s *pretrainSummary) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# qwengo-mini\n\nA Qwen3-architecture model pretrained from random weights by `qwenrepl pretrain` on the bilingual corpus of `qwenrepl corpus` (see %s/manifest.json for sources, versions, licences and counts).\n\n", o.corpusDir)
	fmt.Fprintf(&b, "## Recipe\n\n| | |\n|---|---|\n")
	fmt.Fprintf(&b, "| parameters | %d (%d layers, hidden %d, intermediate %d, %d/%d heads × %d, vocabulary 151936, tied embeddings) |\n", s.Params, o.layers, o.hidden, o.inter, o.heads, o.kvHeads, o.hd)
	fmt.Fprintf(&b, "| steps | %d of %d sequences (≤ %d tokens), %d tokens in all |\n", s.Steps, o.batch, o.seqLen, s.Tokens)
	fmt.Fprintf(&b, "| optimizer | AdamW lr %.3g, warm-up %d, cosine to %.3g, weight decay %.3g, clip 1, %s states, %s masters |\n", o.lr, o.warmup, o.lr*o.minLRFrac, o.wd, o.state, o.master)
	fmt.Fprintf(&b, "| device | %s, %.1f s of training, peak %s |\n", s.Device, s.Seconds, backend.Human(s.PeakMemBytes))
	fmt.Fprintf(&b, "| NVFP4 export | %s |\n| seed | %d |\n\n", backend.Human(s.NVFP4Bytes), o.seed)
	fmt.Fprintf(&b, "## Held-out metrics\n\nLoss (mean per scored token) and answer accuracy (greedy, `corpus.AnswerMatches`) of the NVFP4 export. heldout_phrasing asks trained facts with unseen question templates; heldout_facts asks unseen facts (a floor).\n\n| set | value |\n|---|---|\n")
	for _, k := range sortedKeys(s.EvalLoss) {
		fmt.Fprintf(&b, "| loss %s | %.4f |\n", k, s.EvalLoss[k])
	}
	for _, k := range sortedKeys(s.Accuracy) {
		fmt.Fprintf(&b, "| accuracy %s | %.1f %% |\n", k, 100*s.Accuracy[k])
	}
	if len(s.Examples) > 0 {
		fmt.Fprintf(&b, "\n## Examples (greedy, first two questions per set and language)\n\n| set | question | answer key | model | match |\n|---|---|---|---|---|\n")
		for _, e := range s.Examples {
			fmt.Fprintf(&b, "| %s/%s | %s | %s | %s | %v |\n", e.Set, e.Lang, cell(e.Question), cell(e.Gold), cell(e.Answer), e.Match)
		}
	}
	fmt.Fprintf(&b, "\nThe loss curve is metrics.jsonl (one line per step; eval_loss every %d steps).\n", o.evalEvery)
	return format.WriteFileAtomic(filepath.Join(o.out, "MODEL_CARD.md"), []byte(b.String()))
}

func sortedKeys(m map[string]float64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// cell makes text safe inside a Markdown table cell.
func cell(s string) string {
	s = strings.ReplaceAll(s, "|", "\\|")
	s = strings.ReplaceAll(s, "\n", " ")
	if r := []rune(s); len(r) > 120 {
		s = string(r[:120]) + "…"
	}
	return s
}
