// Package engine is the façade notebook cells, console sessions and scripts use: load a Qwen3
// model once, then generate, chat, read logits, tokenize and look at memory. It is
// deliberately non-generic (the interpreter cannot use generics from compiled packages) and
// every long call honours CurrentContext, which the kernel sets to the running cell's context so
// that an interrupt stops generation between tokens.
//
// Memory is guarded (memguard.go): the backend's allocator refuses allocations past a budget
// (--gpu-limit-gb, $QWENGO_GPU_LIMIT_GB, else the device size minus a margin) with a
// *MemoryError, and a watchdog cancels the running call when device memory stays over the
// limit. MemoryReport, MemoryGuard and SetMemoryLimit show and change it from a cell.
//
//	m, err := engine.Load("/models/Qwen3-4B-Instruct-2507")
//	g, err := m.Generate("你是誰", engine.GenerateOptions{Chat: true, MaxTokens: 32})
//	fmt.Println(g.Text, g.DecodeTPS)
package engine

import (
	"context"
	"errors"
	"fmt"
	"github.com/qwengo/qwengo/engine/embedded"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/cpu"
	"github.com/qwengo/qwengo/engine/format"
	"github.com/qwengo/qwengo/engine/generate"
	"github.com/qwengo/qwengo/engine/parity"
	"github.com/qwengo/qwengo/engine/qwen3"
	"github.com/qwengo/qwengo/engine/sample"
	"github.com/qwengo/qwengo/engine/tensor"
	"github.com/qwengo/qwengo/engine/tokenizer"
)

// CurrentContext returns the context long engine calls honour. The kernel and console replace
// it with the running cell's context; scripts may too.
var CurrentContext = func() context.Context { return context.Background() }

var (
	defaultOnce sync.Once
	guardOnce   sync.Once
	defaultB    backend.Backend
)

// Backend returns the process-wide compute backend, shared by every model so memory is
// accounted in one place: $QWENGO_BACKEND when set ("cpu", "cuda"), else the GPU when this
// binary was built with -tags cuda and a device answers, else the CPU reference. Opening it
// applies the memory guard (ConfigureGuard): the budget, and the watchdog while one is set.
func Backend() backend.Backend {
	defaultOnce.Do(func() {
		name := os.Getenv("QWENGO_BACKEND")
		if name == "" && backend.Registered("cuda") {
			name = "cuda"
		}
		if name != "" && name != "cpu" {
			b, err := backend.Open(name)
			if err == nil {
				defaultB = b
				return
			}
			BackendNote = fmt.Sprintf("%s backend unavailable (%v); using the CPU", name, err)
		}
		defaultB = cpu.New()
	})
	guardOnce.Do(func() { applyGuard(defaultB) })
	return defaultB
}

// BackendNote says why the preferred backend was not used ("" when it was).
var BackendNote string

// Device names the compute device for banners ("CPU (2 threads)" or the GPU and its memory).
func Device() string { return Backend().Name() }

// Memory reports bytes in use by category and the peak.
func Memory() backend.MemStats { return Backend().Memory() }

// ResetPeak restarts peak tracking (the kernel does this per cell).
func ResetPeak() { Backend().ResetPeak() }

// DefaultProgress, when set, reports loading progress for loads that pass no Progress of their
// own: the kernel shows an updating progress bar in the cell, the console a terminal bar.
var DefaultProgress func(path string, done, total int64)

// ProgressBar returns a Progress function that redraws a one-line bar on w (a terminal).
func ProgressBar(w io.Writer) func(path string, done, total int64) {
	return func(path string, done, total int64) {
		if total <= 0 {
			return
		}
		const width = 30
		n := int(done * width / total)
		fmt.Fprintf(w, "\rloading %s [%s%s] %5.1f%% of %s", filepath.Base(path), strings.Repeat("=", n), strings.Repeat(" ", width-n),
			100*float64(done)/float64(total), backend.Human(total))
		if done >= total {
			fmt.Fprintln(w)
		}
	}
}

// ErrNoTokenizer is returned by text methods of a model loaded without a tokenizer.
var ErrNoTokenizer = errors.New("engine: no tokenizer: pass LoadOptions.Tokenizer, put tokenizer.json beside the weights, or run `make tokenizer`")

// LoadOptions control Load.
type LoadOptions struct {
	// Tokenizer is a tokenizer.json path; default: beside the weights, else the cached Qwen3
	// tokenizer ($QWENGO_CACHE/tokenizer/qwen3/tokenizer.json).
	Tokenizer string
	// Config is a config.json path; default: beside the weights.
	Config string
	// Precision of linear weights: "" (as stored), "f32", "bf16" or "nvfp4".
	Precision string
	// LMHead is the logits' matrix: "" (as stored, or the tied embedding) or "nvfp4", an NVFP4
	// copy that every decoded token reads in a quarter of the bytes (qwen3.LoadOptions.LMHead:
	// the logits then carry NVFP4's rounding).
	LMHead string
	// MaxSeq is the KV cache capacity of Generate and of each Chat (default min(4096, max positions)).
	MaxSeq int
	// KVCache is the element type of the model's KV caches: "" (the backend's: bf16 on a GPU,
	// f32 on the CPU), "bf16" (half the memory and the bytes a decode step reads, as a bf16
	// PyTorch model keeps them) or "f32" (keys and values exactly as computed, for comparing
	// numeric paths bit for bit).
	KVCache string
	// Progress is called during loading with bytes read and total.
	Progress func(done, total int64)
}

// Model is a loaded model with its tokenizer.
type Model struct {
	Path      string
	Config    *qwen3.Config
	Tokenizer *tokenizer.Tokenizer
	Net       *qwen3.Model
	MaxSeq    int
	mu        sync.Mutex // one engine call at a time per model
	cache     *qwen3.KVCache
}

// Load loads a model: a Hugging Face directory, a .safetensors file (NVFP4 ModelOpt layout
// included), a sharded index, or a seed .dat with config.json beside it. "qwengo-mini" (or "")
// is the embedded default model (engine/embedded), written to the user cache on first use.
func Load(path string) (*Model, error) { return LoadWith(path, LoadOptions{}) }

// LoadWith loads a model with options.
func LoadWith(path string, opt LoadOptions) (*Model, error) {
	if path == embedded.Name || path == "" {
		dir, err := embedded.Dir()
		if err != nil {
			return nil, fmt.Errorf("engine: load %s: %w", embedded.Name, err)
		}
		path = dir
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("engine: load %s: %w", path, err)
	}
	dir := path
	if !fi.IsDir() {
		dir = filepath.Dir(path)
	}
	kvType, err := parseKVCache(opt.KVCache)
	if err != nil {
		return nil, fmt.Errorf("engine: load %s: %w", path, err)
	}
	cfgPath := opt.Config
	if cfgPath == "" {
		cfgPath = filepath.Join(dir, "config.json")
	}
	cfg, err := qwen3.LoadConfig(cfgPath)
	if err != nil {
		return nil, fmt.Errorf("engine: load %s: %w", path, err)
	}
	src, err := format.Open(path)
	if err != nil {
		return nil, fmt.Errorf("engine: load %s: %w", path, err)
	}
	defer src.Close()
	progress := opt.Progress
	if progress == nil && DefaultProgress != nil {
		progress = func(done, total int64) { DefaultProgress(path, done, total) }
	}
	net, err := qwen3.Load(cfg, src, Backend(), qwen3.LoadOptions{Precision: opt.Precision, LMHead: opt.LMHead, Progress: progress})
	if err != nil {
		return nil, guardError(context.Background(), fmt.Errorf("engine: load %s: %w", path, err))
	}
	net.KVDType = kvType
	m := &Model{Path: path, Config: cfg, Net: net, MaxSeq: opt.MaxSeq}
	if m.MaxSeq <= 0 {
		m.MaxSeq = 4096
		if cfg.MaxPositions > 0 {
			m.MaxSeq = min(m.MaxSeq, cfg.MaxPositions)
		}
	}
	tokPath := opt.Tokenizer
	if tokPath == "" {
		for _, p := range []string{filepath.Join(dir, "tokenizer.json"), DefaultTokenizerPath()} {
			if _, err := os.Stat(p); err == nil {
				tokPath = p
				break
			}
		}
	}
	if tokPath != "" {
		if m.Tokenizer, err = tokenizer.Load(tokPath); err != nil {
			net.Free()
			return nil, fmt.Errorf("engine: load %s: %w", path, err)
		}
	}
	return m, nil
}

// DefaultTokenizerPath is where `make tokenizer` puts the Qwen3 tokenizer.json:
// $QWENGO_CACHE/tokenizer/qwen3/tokenizer.json, else <repo>/.cache/… found by walking up from
// the working directory or the executable, else the user cache directory.
func DefaultTokenizerPath() string {
	const rel = "tokenizer/qwen3/tokenizer.json"
	if c := os.Getenv("QWENGO_CACHE"); c != "" {
		return filepath.Join(c, rel)
	}
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if exe, err := os.Executable(); err == nil {
		starts = append(starts, filepath.Dir(exe))
	}
	for _, d := range starts {
		for {
			p := filepath.Join(d, ".cache", rel)
			if _, err := os.Stat(p); err == nil {
				return p
			}
			up := filepath.Dir(d)
			if up == d {
				break
			}
			d = up
		}
	}
	if home, err := os.UserCacheDir(); err == nil {
		return filepath.Join(home, "qwengo", rel)
	}
	return filepath.Join(".cache", rel)
}

// Close frees the model's weights and caches.
func (m *Model) Close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cache != nil {
		m.cache.Free()
		m.cache = nil
	}
	m.Net.Free()
}

// String summarises the model.
func (m *Model) String() string {
	c := m.Config
	kinds := map[string]int{}
	for _, how := range m.Net.Sources {
		kinds[how]++
	}
	var ks []string
	for k, n := range kinds {
		ks = append(ks, fmt.Sprintf("%s×%d", k, n))
	}
	return fmt.Sprintf("Qwen3 %.2fB params: %d layers, hidden %d, heads %d/%d×%d, vocab %d, tied %v; weights %s; on %s",
		float64(c.NumParams())/1e9, c.NumLayers, c.HiddenSize, c.NumHeads, c.NumKVHeads, c.HeadDim, c.VocabSize, c.TieEmbeddings, strings.Join(ks, ", "), Device())
}

// lm adapts a model and a cache to generate.LM.
type lm struct {
	net   *qwen3.Model
	cache *qwen3.KVCache
}

func (l *lm) Append(ctx context.Context, ids []int) ([]float32, error) {
	lg, err := l.net.Forward(ctx, ids, l.cache, qwen3.LogitsLast)
	if err != nil {
		return nil, err
	}
	return lg.Row(0), nil
}

// AppendGreedy implements generate.GreedyLM: the next token picked by the backend
// (qwen3.LogitsGreedy), so greedy generation on the GPU downloads one id per step.
func (l *lm) AppendGreedy(ctx context.Context, ids []int) (int, error) {
	lg, err := l.net.Forward(ctx, ids, l.cache, qwen3.LogitsGreedy)
	if err != nil {
		return 0, err
	}
	return lg.Greedy, nil
}

func (l *lm) Pos() int               { return l.cache.Len() }
func (l *lm) Truncate(pos int) error { return l.cache.Truncate(pos) }
func (l *lm) Reset()                 { l.cache.Reset() }

func (m *Model) sharedCache() (*qwen3.KVCache, error) {
	if m.cache == nil {
		c, err := m.Net.NewKVCache(m.MaxSeq)
		if err != nil {
			return nil, err
		}
		m.cache = c
	}
	m.cache.Reset()
	return m.cache, nil
}

// GenerateOptions control Generate.
type GenerateOptions struct {
	MaxTokens         int     // default 256
	Temperature       float64 // 0 = greedy
	TopK              int
	TopP              float64
	MinP              float64
	RepetitionPenalty float64
	Seed              uint64
	// Chat wraps the prompt in the chat template (user turn + generation prompt).
	Chat   bool
	System string
	// NoKVCache recomputes the whole sequence for each token (reference path).
	NoKVCache bool
	// Stream receives text as it is generated (complete UTF-8 only).
	Stream func(text string)
	// StopIDs adds stop tokens; <|im_end|> and <|endoftext|> always stop.
	StopIDs []int
}

func (o GenerateOptions) params() sample.Params {
	return sample.Params{Temperature: o.Temperature, TopK: o.TopK, TopP: o.TopP, MinP: o.MinP, RepetitionPenalty: o.RepetitionPenalty, Seed: int64(o.Seed)}
}

// Generation is a finished generation.
type Generation struct {
	Text                        string
	IDs, PromptIDs              []int
	StopReason                  string
	PrefillTokens, DecodeTokens int
	PrefillMs, DecodeMs         float64
	PrefillTPS, DecodeTPS       float64
}

// String prints the text and the speed.
func (g *Generation) String() string {
	return fmt.Sprintf("%s\n[%d prompt tokens at %.1f tok/s, %d generated at %.1f tok/s, stop: %s]", g.Text, g.PrefillTokens, g.PrefillTPS, len(g.IDs), g.DecodeTPS, g.StopReason)
}

func (m *Model) stopIDs(extra []int) []int {
	stop := append([]int(nil), extra...)
	if m.Tokenizer != nil {
		for _, s := range []string{tokenizer.ImEnd, tokenizer.EndOfText} {
			if id, ok := m.Tokenizer.TokenID(s); ok {
				stop = append(stop, id)
			}
		}
	}
	return stop
}

// Generate generates from a text prompt.
func (m *Model) Generate(prompt string, opt GenerateOptions) (*Generation, error) {
	if m.Tokenizer == nil {
		return nil, ErrNoTokenizer
	}
	text := prompt
	if opt.Chat || opt.System != "" {
		var msgs []tokenizer.Message
		if opt.System != "" {
			msgs = append(msgs, tokenizer.Message{Role: "system", Content: opt.System})
		}
		text = tokenizer.RenderChat(append(msgs, tokenizer.Message{Role: "user", Content: prompt}), true)
	}
	return m.GenerateIDs(m.Tokenizer.Encode(text), opt)
}

// GenerateIDs generates from token ids.
func (m *Model) GenerateIDs(ids []int, opt GenerateOptions) (_ *Generation, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ctx, end := call()
	defer func() { err = end(err) }()
	cache, err := m.sharedCache()
	if err != nil {
		return nil, err
	}
	var dec *tokenizer.Decoder
	var text strings.Builder
	if m.Tokenizer != nil {
		dec = m.Tokenizer.NewDecoder()
	}
	res, err := generate.Run(ctx, &lm{m.Net, cache}, ids, generate.Options{
		Sample: opt.params(), MaxTokens: opt.MaxTokens, Stop: m.stopIDs(opt.StopIDs), NoKVCache: opt.NoKVCache,
		OnToken: func(id int) error {
			if dec != nil {
				if s := dec.Push(id); s != "" {
					text.WriteString(s)
					if opt.Stream != nil {
						opt.Stream(s)
					}
				}
			}
			return nil
		},
	})
	if res == nil {
		return nil, err
	}
	if dec != nil {
		if s := dec.Flush(); s != "" {
			text.WriteString(s)
			if opt.Stream != nil {
				opt.Stream(s)
			}
		}
	}
	return &Generation{Text: text.String(), IDs: res.IDs, PromptIDs: res.Prompt, StopReason: res.StopReason,
		PrefillTokens: res.PrefillTokens, DecodeTokens: res.DecodeTokens,
		PrefillMs: float64(res.PrefillTime.Microseconds()) / 1e3, DecodeMs: float64(res.DecodeTime.Microseconds()) / 1e3,
		PrefillTPS: res.PrefillTPS, DecodeTPS: res.DecodeTPS}, err
}

// Logits returns the logits of the last position of text (tokenized as is).
func (m *Model) Logits(text string) ([]float32, error) {
	if m.Tokenizer == nil {
		return nil, ErrNoTokenizer
	}
	lg, err := m.LogitsIDs(m.Tokenizer.Encode(text), false)
	if err != nil {
		return nil, err
	}
	return lg.Row(lg.Rows - 1), nil
}

// LogitsIDs runs ids without a cache and returns the last (or all) positions' logits.
func (m *Model) LogitsIDs(ids []int, all bool) (_ *qwen3.Logits, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ctx, end := call()
	defer func() { err = end(err) }()
	mode := qwen3.LogitsLast
	if all {
		mode = qwen3.LogitsAll
	}
	return m.Net.Forward(ctx, ids, nil, mode)
}

// Tokenize encodes text (special tokens in the text are recognised).
func (m *Model) Tokenize(text string) ([]int, error) {
	if m.Tokenizer == nil {
		return nil, ErrNoTokenizer
	}
	return m.Tokenizer.Encode(text), nil
}

// Detokenize decodes ids.
func (m *Model) Detokenize(ids []int) (string, error) {
	if m.Tokenizer == nil {
		return "", ErrNoTokenizer
	}
	return m.Tokenizer.Decode(ids), nil
}

// Chat is a conversation with its own KV cache that persists across turns.
type Chat struct {
	m     *Model
	c     *generate.Chat
	cache *qwen3.KVCache
	// Options used by Send (sampling, max tokens, streaming).
	Options GenerateOptions
}

// NewChat starts a conversation.
func (m *Model) NewChat() (*Chat, error) {
	if m.Tokenizer == nil {
		return nil, ErrNoTokenizer
	}
	cache, err := m.Net.NewKVCache(m.MaxSeq)
	if err != nil {
		return nil, guardError(context.Background(), err)
	}
	tk := m.Tokenizer
	codec := generate.ChatCodec{
		Render: func(msgs []generate.Message, gen bool) string {
			tm := make([]tokenizer.Message, len(msgs))
			for i, x := range msgs {
				tm[i] = tokenizer.Message{Role: x.Role, Content: x.Content}
			}
			return tokenizer.RenderChat(tm, gen)
		},
		Encode: tk.Encode,
		NewDecoder: func() (func(int) string, func() string) {
			d := tk.NewDecoder()
			return d.Push, d.Flush
		},
		Stop: m.stopIDs(nil),
	}
	return &Chat{m: m, c: generate.NewChat(&lm{m.Net, cache}, codec), cache: cache, Options: GenerateOptions{MaxTokens: 512}}, nil
}

// Send sends a user message and returns the reply; Options.Stream receives it as it comes.
func (c *Chat) Send(text string) (_ string, err error) {
	c.m.mu.Lock()
	defer c.m.mu.Unlock()
	ctx, end := call()
	defer func() { err = end(err) }()
	o := c.Options
	_, reply, err := c.c.Send(ctx, text, generate.Options{Sample: o.params(), MaxTokens: o.MaxTokens, Stop: o.StopIDs}, o.Stream)
	return reply, err
}

// Last returns the statistics of the last turn (nil before the first).
func (c *Chat) Last() *generate.Result { return c.c.Last }

// SetSystem sets the system prompt (the next turn re-prefills from the change).
func (c *Chat) SetSystem(s string) { c.c.SetSystem(s) }

// Reset forgets the conversation.
func (c *Chat) Reset() { c.c.Reset() }

// History returns the turns so far.
func (c *Chat) History() []generate.Message { return append([]generate.Message(nil), c.c.Messages...) }

// CachedTokens is how many tokens the KV cache holds for reuse.
func (c *Chat) CachedTokens() int { return c.c.Cached() }

// Close frees the chat's KV cache.
func (c *Chat) Close() { c.cache.Free() }

// Compare runs prompt through two numeric paths of this model — specs such as "cpu:bf16:kv" and
// "cpu:nvfp4" (backend, precision, qat, kv, cache=f32|bf16, scalebug=N) — and reports per layer max_abs, mean_abs
// and cosine of the hidden state, the first diverging layer and both sides' top-10 next tokens.
// The prompt is tokenized as is; use tokenizer.RenderChat for the chat template.
func (m *Model) Compare(a, b string, prompt string) (*parity.Report, error) {
	if m.Tokenizer == nil {
		return nil, ErrNoTokenizer
	}
	return m.CompareIDs(a, b, m.Tokenizer.Encode(prompt))
}

// CompareIDs is Compare on token ids.
func (m *Model) CompareIDs(a, b string, ids []int) (_ *parity.Report, err error) {
	sa, err := parity.ParseSpec(a)
	if err != nil {
		return nil, err
	}
	sb, err := parity.ParseSpec(b)
	if err != nil {
		return nil, err
	}
	opt := parity.Options{}
	if m.Tokenizer != nil {
		opt.Decode = m.Tokenizer.Decode
	}
	ctx, end := call()
	defer func() { err = end(err) }()
	return parity.Compare(ctx, m.Path, sa, sb, ids, opt)
}

// parseKVCache reads LoadOptions.KVCache.
func parseKVCache(s string) (tensor.DType, error) {
	switch strings.ToLower(s) {
	case "":
		return tensor.Invalid, nil // the backend's default
	case "bf16":
		return tensor.BF16, nil
	case "f32":
		return tensor.F32, nil
	}
	return tensor.Invalid, fmt.Errorf("KVCache %q: want \"\", \"bf16\" or \"f32\"", s)
}
