package engine

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/data"
	"github.com/qwengo/qwengo/engine/devtrain"
	"github.com/qwengo/qwengo/engine/embedded"
	"github.com/qwengo/qwengo/engine/format"
	"github.com/qwengo/qwengo/engine/grad"
	"github.com/qwengo/qwengo/engine/qwen3"
	"github.com/qwengo/qwengo/engine/tensor"
	"github.com/qwengo/qwengo/engine/tokenizer"
)

// Trainer is a model opened for full-parameter training on the engine's backend: masters,
// gradients and AdamW moments stay resident (engine/devtrain), batches come from a seeded data
// mixture tokenised with the model's chat template (<|im_end|> supervised), and Inference turns
// the current weights into a Model for probes — the cell-level API of the notebooks.
//
//	tr, _ := engine.NewTrainer("qwengo-mini", engine.TrainOptions{Batch: 8})
//	tr.AddData("identity.tsv", 1)
//	st, _ := tr.Step(1e-4)
type Trainer struct {
	Path      string
	Config    *qwen3.Config
	Tokenizer *tokenizer.Tokenizer
	Chat      *data.Chat
	Dev       *devtrain.Model
	opt       TrainOptions
	tokPath   string // the tokenizer.json the trainer loaded (copied into checkpoints)
	sources   []data.Source
	mix       *data.Mixture
}

// TrainOptions configure NewTrainer: the devtrain options (masters, moments, AdamW, recompute,
// fused optimizer) plus batching.
type TrainOptions struct {
	devtrain.Options
	Batch  int    // sequences per step (default 8)
	SeqLen int    // longest sequence; longer chats are cut keeping the answer (default 256)
	Seed   uint64 // data order
	// Tokenizer is a tokenizer.json path (default: beside the weights, else the cached Qwen3 one).
	Tokenizer string
}

// DefaultTrainOptions are devtrain.DefaultOptions with batches of 8 sequences of ≤ 256 tokens.
func DefaultTrainOptions() TrainOptions {
	return TrainOptions{Options: devtrain.DefaultOptions(), Batch: 8, SeqLen: 256}
}

// NewTrainer opens path (as Load does; "qwengo-mini" is the embedded model) for training on
// Backend().
func NewTrainer(path string, opt TrainOptions) (*Trainer, error) {
	if path == embedded.Name || path == "" {
		dir, err := embedded.Dir()
		if err != nil {
			return nil, fmt.Errorf("engine: trainer: %w", err)
		}
		path = dir
	}
	if opt.Batch <= 0 {
		opt.Batch = 8
	}
	if opt.SeqLen <= 0 {
		opt.SeqLen = 256
	}
	if opt.Options == (devtrain.Options{}) {
		opt.Options = devtrain.DefaultOptions()
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("engine: trainer: %w", err)
	}
	dir := path
	if !fi.IsDir() {
		dir = filepath.Dir(path)
	}
	cfg, err := qwen3.LoadConfig(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, fmt.Errorf("engine: trainer %s: %w", path, err)
	}
	src, err := format.Open(path)
	if err != nil {
		return nil, fmt.Errorf("engine: trainer %s: %w", path, err)
	}
	gm, err := grad.Load(cfg, src)
	src.Close()
	if err != nil {
		return nil, fmt.Errorf("engine: trainer %s: %w", path, err)
	}
	tokPath := opt.Tokenizer
	if tokPath == "" {
		tokPath = filepath.Join(dir, "tokenizer.json")
		if _, err := os.Stat(tokPath); err != nil {
			tokPath = DefaultTokenizerPath()
		}
	}
	tok, err := tokenizer.Load(tokPath)
	if err != nil {
		return nil, fmt.Errorf("engine: trainer: tokenizer: %w (run `make tokenizer`)", err)
	}
	imEnd, ok1 := tok.TokenID(tokenizer.ImEnd)
	pad, ok2 := tok.TokenID(tokenizer.EndOfText)
	if !ok1 || !ok2 {
		return nil, fmt.Errorf("engine: trainer: %s is not a Qwen chat tokenizer (no %s/%s)", tokPath, tokenizer.ImEnd, tokenizer.EndOfText)
	}
	b, err := backend.AsTraining(Backend())
	if err != nil {
		return nil, fmt.Errorf("engine: trainer: %w", err)
	}
	dev, err := devtrain.New(b, gm, opt.Options)
	if err != nil {
		return nil, guardError(context.Background(), fmt.Errorf("engine: trainer %s: %w", path, err))
	}
	chat := &data.Chat{
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
	return &Trainer{Path: path, Config: cfg, Tokenizer: tok, Chat: chat, Dev: dev, opt: opt, tokPath: tokPath}, nil
}

// Samples tokenises examples with the chat template (what a step trains on).
func (t *Trainer) Samples(exs []data.Example) ([]*data.Sample, error) {
	out := make([]*data.Sample, len(exs))
	for i, e := range exs {
		s, err := t.Chat.Tokenize(e, t.opt.SeqLen)
		if err != nil {
			return nil, fmt.Errorf("example %d: %w", i+1, err)
		}
		out[i] = s
	}
	return out, nil
}

// ReadSamples reads a TSV (prompt<TAB>answer), JSONL chat or text file and tokenises it.
func (t *Trainer) ReadSamples(path string) ([]*data.Sample, error) {
	exs, _, err := data.ReadFile(path, data.ReadOptions{})
	if err != nil {
		return nil, err
	}
	return t.Samples(exs)
}

// AddSamples adds a named source to the training mixture with a sampling ratio (the share of
// batches' sequences drawn from it, relative to the other sources).
func (t *Trainer) AddSamples(name string, ss []*data.Sample, ratio float64) error {
	if len(ss) == 0 {
		return fmt.Errorf("engine: trainer: source %q has no samples", name)
	}
	t.sources = append(t.sources, data.Source{Name: name, Samples: ss, Ratio: ratio})
	mix, err := data.NewMixture(t.sources, t.opt.Seed)
	if err != nil {
		t.sources = t.sources[:len(t.sources)-1]
		return err
	}
	t.mix = mix
	return nil
}

// AddData reads a data file (ReadSamples) into the mixture with the given ratio.
func (t *Trainer) AddData(path string, ratio float64) error {
	ss, err := t.ReadSamples(path)
	if err != nil {
		return err
	}
	return t.AddSamples(path, ss, ratio)
}

// Shares reports each source's share of the sequences drawn so far.
func (t *Trainer) Shares() map[string]float64 {
	if t.mix == nil {
		return nil
	}
	return t.mix.Shares()
}

// Step trains on the mixture's next batch with learning rate lr, in the running cell's
// context (interruptible between layers; an interrupted step changes nothing).
func (t *Trainer) Step(lr float64) (devtrain.StepStats, error) {
	if t.mix == nil {
		return devtrain.StepStats{}, fmt.Errorf("engine: trainer: no data (AddData or AddSamples first)")
	}
	return t.StepBatch(t.mix.NextBatch(t.opt.Batch, t.Chat.Pad), lr)
}

// StepBatch trains on one given batch.
func (t *Trainer) StepBatch(b *data.Batch, lr float64) (devtrain.StepStats, error) {
	ctx, done := Watch(CurrentContext())
	defer done()
	st, err := t.Dev.Step(ctx, b, lr)
	return st, guardError(ctx, err)
}

// Loss is the mean loss per scored token over samples (held-out evaluation; no update).
func (t *Trainer) Loss(ss []*data.Sample) (float64, error) {
	ctx, done := Watch(CurrentContext())
	defer done()
	var sum float64
	var n int
	for i := 0; i < len(ss); i += t.opt.Batch {
		s, c, err := t.Dev.Loss(ctx, data.MakeBatch(ss[i:min(len(ss), i+t.opt.Batch)], t.Chat.Pad))
		if err != nil {
			return 0, guardError(ctx, err)
		}
		sum += s
		n += c
	}
	if n == 0 {
		return 0, fmt.Errorf("engine: trainer: no scored tokens")
	}
	return sum / float64(n), nil
}

// Export writes the current weights: format "nvfp4" (ModelOpt safetensors; the embedding too
// when the source model had it quantised), "bf16" or "f32" (safetensors) into dir, or "dat"
// (the seed's .dat, dir being the file path).
func (t *Trainer) Export(dir, format string) error {
	gm, err := t.Dev.Export()
	if err != nil {
		return err
	}
	switch format {
	case "nvfp4":
		return gm.SaveNVFP4With(dir, t.embeddingWasQuantised())
	case "bf16":
		return gm.SaveSafetensors(dir, tensor.BF16)
	case "f32":
		return gm.SaveSafetensors(dir, tensor.F32)
	case "dat":
		return gm.SaveDat(dir, nil)
	}
	return fmt.Errorf("engine: trainer: export format %q: want nvfp4, bf16, f32 or dat", format)
}

func (t *Trainer) embeddingWasQuantised() bool {
	src, err := format.Open(t.Path)
	if err != nil {
		return false
	}
	defer src.Close()
	for _, ti := range src.Tensors() {
		if ti.Name == "model.embed_tokens.weight_scale" {
			return true
		}
	}
	return false
}

// Inference returns a Model computing with the current weights (bf16 linears) for
// generation probes; Close it when done. The training state is untouched.
func (t *Trainer) Inference() (*Model, error) {
	gm, err := t.Dev.Export()
	if err != nil {
		return nil, err
	}
	net, err := qwen3.Load(t.Config, gm.Source(), Backend(), qwen3.LoadOptions{Precision: qwen3.BF16})
	if err != nil {
		return nil, guardError(context.Background(), fmt.Errorf("engine: trainer: inference model: %w", err))
	}
	m := &Model{Path: t.Path + " (training weights)", Config: t.Config, Net: net, Tokenizer: t.Tokenizer, MaxSeq: 2048}
	if t.Config.MaxPositions > 0 {
		m.MaxSeq = min(m.MaxSeq, t.Config.MaxPositions)
	}
	return m, nil
}

// Close frees the training state on the backend.
func (t *Trainer) Close() {
	if t.Dev != nil {
		t.Dev.Close()
		t.Dev = nil
	}
}
