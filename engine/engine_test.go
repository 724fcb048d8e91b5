package engine

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/qwengo/qwengo/engine/format"
	"github.com/qwengo/qwengo/engine/generate"
	"github.com/qwengo/qwengo/engine/grad"
	"github.com/qwengo/qwengo/engine/parity"
	"github.com/qwengo/qwengo/engine/qwen3"
	"github.com/qwengo/qwengo/engine/tensor"
)

func readInts(t *testing.T, src format.Source, name string) []int {
	h, err := src.Read(name)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]int, h.Numel())
	for i := range out {
		var v int64
		for j := 0; j < 8; j++ {
			v |= int64(h.Data[8*i+j]) << (8 * j)
		}
		out[i] = int(v)
	}
	return out
}

// TestGreedyMatchesTransformers drives the façade on the tiny checkpoint: 64 greedy tokens
// equal Hugging Face's, with and without the KV cache.
func TestGreedyMatchesTransformers(t *testing.T) {
	dir := filepath.Join("qwen3", "testdata", "tiny-untied")
	m, err := LoadWith(dir, LoadOptions{Tokenizer: "-"})
	if err == nil {
		t.Fatal("a missing tokenizer path was accepted")
	}
	m, err = Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ref, _ := format.Open(filepath.Join(dir, "reference.safetensors"))
	defer ref.Close()
	prompt, want := readInts(t, ref, "greedy_prompt"), readInts(t, ref, "greedy_ids")
	for _, noCache := range []bool{false, true} {
		g, err := m.GenerateIDs(prompt, GenerateOptions{MaxTokens: 64, NoKVCache: noCache})
		if err != nil {
			t.Fatal(err)
		}
		for i := range want {
			if g.IDs[i] != want[i] {
				t.Fatalf("no-kv-cache=%v: token %d is %d, transformers %d", noCache, i, g.IDs[i], want[i])
			}
		}
	}
	if mem := Memory(); mem.InUse[0] <= 0 {
		t.Fatalf("weights not accounted: %+v", mem)
	}
	if !strings.Contains(m.String(), "2 layers") {
		t.Fatalf("%s", m)
	}
}

func qwenVocabModel(t *testing.T) string {
	if _, err := os.Stat(DefaultTokenizerPath()); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("tokenizer missing at %s", DefaultTokenizerPath())
		}
		t.Skip("no tokenizer: run `make tokenizer`")
	}
	cfg, err := qwen3.ParseConfig([]byte(`{"model_type":"qwen3","hidden_size":32,"intermediate_size":64,"num_hidden_layers":2,
		"num_attention_heads":2,"num_key_value_heads":1,"head_dim":16,"vocab_size":151936,"rope_theta":1000000,"tie_word_embeddings":true,
		"max_position_embeddings":1024,"eos_token_id":151645}`))
	if err != nil {
		t.Fatal(err)
	}
	g, _ := grad.New(cfg)
	g.Randomize(3, 4, 0.1)
	dir := t.TempDir()
	if err := g.SaveSafetensors(dir, tensor.BF16); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestTextGenerateChatAndInterrupt(t *testing.T) {
	m, err := Load(qwenVocabModel(t))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var streamed strings.Builder
	g, err := m.Generate("你是誰", GenerateOptions{Chat: true, MaxTokens: 8, Temperature: 0.8, Seed: 1, Stream: func(s string) { streamed.WriteString(s) }})
	if err != nil {
		t.Fatal(err)
	}
	if streamed.String() != g.Text || g.PrefillTokens == 0 || len(g.IDs) == 0 {
		t.Fatalf("%+v / streamed %q", g, streamed.String())
	}
	c, err := m.NewChat()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Options.MaxTokens = 4
	if _, err := c.Send("hi"); err != nil {
		t.Fatal(err)
	}
	first := c.Last().PrefillTokens
	if _, err := c.Send("again"); err != nil {
		t.Fatal(err)
	}
	if c.Last().PrefillTokens >= first+8 || len(c.History()) != 4 {
		t.Fatalf("second turn prefilled %d tokens (first %d)", c.Last().PrefillTokens, first)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	old := CurrentContext
	CurrentContext = func() context.Context { return ctx }
	defer func() { CurrentContext = old }()
	if _, err := m.Generate("x", GenerateOptions{MaxTokens: 100}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled generation: %v", err)
	}
}

func TestProgress(t *testing.T) {
	var b strings.Builder
	var calls int
	DefaultProgress = func(path string, done, total int64) { calls++; ProgressBar(&b)(path, done, total) }
	defer func() { DefaultProgress = nil }()
	m, err := Load(filepath.Join("qwen3", "testdata", "tiny-tied"))
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
	if calls < 5 || !strings.Contains(b.String(), "100.0%") {
		t.Fatalf("%d calls: %q", calls, b.String())
	}
}

func TestCompare(t *testing.T) {
	m, err := Load(filepath.Join("qwen3", "testdata", "tiny-tied"))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	r, err := m.CompareIDs("cpu:f32:kv", "cpu:f32", []int{1, 2, 3, 4})
	if err != nil {
		t.Fatal(err)
	}
	if r.FirstDiverging != parity.NoDivergence {
		t.Fatalf("kv vs no-kv diverged:\n%s", r)
	}
	if _, err := m.CompareIDs("gpu", "cpu", []int{1}); err == nil {
		t.Fatal("bad spec accepted")
	}
}

// plainLM hides lm's AppendGreedy, so generate takes the logits path.
type plainLM struct{ *lm }

func (p plainLM) AppendGreedy() {} // a different signature: not a generate.GreedyLM

// TestGreedyOnTheBackend: greedy generation through the backend's argmax (qwen3.LogitsGreedy)
// emits the same tokens as the host argmax of the downloaded logits.
func TestGreedyOnTheBackend(t *testing.T) {
	m := loadTiny(t)
	prompt := []int{1, 2, 3, 4, 5}
	var runs [2][]int
	for i, fast := range []bool{true, false} {
		cache, err := m.Net.NewKVCache(64)
		if err != nil {
			t.Fatal(err)
		}
		var model generate.LM = &lm{m.Net, cache}
		if !fast {
			model = plainLM{&lm{m.Net, cache}}
		}
		if _, ok := model.(generate.GreedyLM); ok != fast {
			t.Fatalf("fast %v: GreedyLM %v", fast, ok)
		}
		res, err := generate.Run(context.Background(), model, prompt, generate.Options{MaxTokens: 20})
		cache.Free()
		if err != nil {
			t.Fatal(err)
		}
		runs[i] = res.IDs
	}
	if !slices.Equal(runs[0], runs[1]) || len(runs[0]) != 20 {
		t.Errorf("backend argmax %v, host argmax %v", runs[0], runs[1])
	}
}

// TestGenerateBatch: every prompt of a batch gets the tokens, stop reason and counts Generate
// gives it alone — greedy (device pick), sampled, with a penalty, and with a stop token that
// ends one sequence early while the others go on.
func TestGenerateBatch(t *testing.T) {
	m := loadTiny(t)
	prompts := [][]int{{1, 2, 3, 4, 5}, {9}, {7, 7, 8, 2, 1, 6, 3}}
	alone := func(p []int, opt GenerateOptions) *Generation {
		g, err := m.GenerateIDs(p, opt)
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	first := alone(prompts[0], GenerateOptions{MaxTokens: 12})
	for _, c := range []struct {
		name string
		opt  GenerateOptions
	}{
		{"greedy", GenerateOptions{MaxTokens: 12}},
		{"sampled", GenerateOptions{MaxTokens: 10, Temperature: 0.9, TopK: 20, Seed: 4}},
		{"penalty", GenerateOptions{MaxTokens: 10, RepetitionPenalty: 1.3}},
		{"stop", GenerateOptions{MaxTokens: 12, StopIDs: []int{first.IDs[2]}}},
	} {
		got, err := m.GenerateBatchIDs(prompts, c.opt)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		for i, p := range prompts {
			want := alone(p, c.opt)
			g := got[i]
			if !slices.Equal(g.IDs, want.IDs) || g.StopReason != want.StopReason || g.DecodeTokens != want.DecodeTokens ||
				!slices.Equal(g.PromptIDs, p) {
				t.Errorf("%s prompt %d: %v (%s, %d decode tokens), alone %v (%s, %d)", c.name, i, g.IDs, g.StopReason, g.DecodeTokens,
					want.IDs, want.StopReason, want.DecodeTokens)
			}
		}
		if c.name == "stop" && (got[0].StopReason != "stop" || len(got[0].IDs) != 2) {
			t.Errorf("stop: prompt 0 should stop after 2 tokens: %v (%s)", got[0].IDs, got[0].StopReason)
		}
	}
	for _, c := range []struct {
		prompts [][]int
		opt     GenerateOptions
		want    string
	}{
		{nil, GenerateOptions{}, "no prompts"},
		{[][]int{{1}, {}}, GenerateOptions{}, "prompt 1 is empty"},
		{[][]int{{1}}, GenerateOptions{NoKVCache: true}, "NoKVCache"},
		{[][]int{{1}}, GenerateOptions{Stream: func(string) {}}, "Stream"},
		{[][]int{{1}}, GenerateOptions{Temperature: -1}, "Temperature"},
	} {
		if _, err := m.GenerateBatchIDs(c.prompts, c.opt); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("GenerateBatchIDs(%v, %+v): error %v, want %q", c.prompts, c.opt, err, c.want)
		}
	}
}

// TestKVCacheOption: LoadOptions.KVCache picks the element type of the model's caches; "f32" is
// the CPU's default, so its text equals the default's; bf16 caches hold rounded keys and values
// and still generate; an unknown type is refused before anything is loaded.
func TestKVCacheOption(t *testing.T) {
	path := qwenVocabModel(t)
	gen := func(kv string) (*Model, string) {
		t.Helper()
		m, err := LoadWith(path, LoadOptions{KVCache: kv})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		g, err := m.Generate("你是誰", GenerateOptions{Chat: true, MaxTokens: 12})
		if err != nil {
			t.Fatal(err)
		}
		return m, g.Text
	}
	_, def := gen("")
	m32, f32 := gen("f32")
	m16, bf16 := gen("BF16")
	if f32 != def || m32.Net.KVDType != tensor.F32 || m16.Net.KVDType != tensor.BF16 || bf16 == "" {
		t.Errorf("default %q, f32 %q (%s), bf16 %q (%s)", def, f32, m32.Net.KVDType, bf16, m16.Net.KVDType)
	}
	c, err := m16.Net.NewKVCache(4)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Free()
	if c.DType() != tensor.BF16 {
		t.Errorf("a bf16 model's cache holds %s", c.DType())
	}
	if _, err := LoadWith(path, LoadOptions{KVCache: "f16"}); err == nil || !strings.Contains(err.Error(), `KVCache "f16"`) {
		t.Errorf("KVCache f16: %v", err)
	}
}
