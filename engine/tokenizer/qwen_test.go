package tokenizer

import (
	"encoding/json"
	"errors"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// QwenPath is where fetch.sh (make tokenizer) puts the real Qwen3 tokenizer.json.
func qwenPath() string {
	if c := os.Getenv("QWENGO_CACHE"); c != "" {
		return filepath.Join(c, "tokenizer", "qwen3", "tokenizer.json")
	}
	return filepath.Join("..", "..", ".cache", "tokenizer", "qwen3", "tokenizer.json")
}

var qwen struct {
	once sync.Once
	tk   *Tokenizer
	err  error
}

// loadQwen loads the real tokenizer once per test binary. Without the file the test is skipped,
// except under CI, which runs `make tokenizer` first and must not silently skip.
func loadQwen(tb testing.TB) *Tokenizer {
	tb.Helper()
	p := qwenPath()
	if _, err := os.Stat(p); err != nil {
		if os.Getenv("CI") != "" {
			tb.Fatalf("%s is missing: CI must run `make tokenizer` (engine/tokenizer/fetch.sh) before the tests", p)
		}
		tb.Skipf("%s is missing: run `make tokenizer` to fetch the real Qwen3 tokenizer", p)
	}
	qwen.once.Do(func() { qwen.tk, qwen.err = Load(p) })
	if qwen.err != nil {
		tb.Fatal(qwen.err)
	}
	return qwen.tk
}

type hfReference struct {
	VocabSize int `json:"vocab_size_with_added"`
	Cases     []struct {
		Name    string `json:"name"`
		Text    string `json:"text"`
		IDs     []int  `json:"ids"`
		Decoded string `json:"decoded"`
	} `json:"cases"`
	Chat []struct {
		Messages            []Message `json:"messages"`
		AddGenerationPrompt bool      `json:"add_generation_prompt"`
		Text                string    `json:"text"`
		IDs                 []int     `json:"ids"`
	} `json:"chat"`
}

func loadReference(tb testing.TB) *hfReference {
	tb.Helper()
	raw, err := os.ReadFile("testdata/hf_reference.json")
	if errors.Is(err, fs.ErrNotExist) {
		tb.Skip("testdata/hf_reference.json is missing: the lead generates it with the tokenizers library (gen_refs.py)")
	}
	if err != nil {
		tb.Fatal(err)
	}
	var ref hfReference
	if err := json.Unmarshal(raw, &ref); err != nil {
		tb.Fatalf("testdata/hf_reference.json: %v", err)
	}
	if len(ref.Cases) == 0 {
		tb.Fatal("testdata/hf_reference.json has no cases")
	}
	return &ref
}

// TestHFReference compares with ids and renderings made by the tokenizers library and
// transformers' apply_chat_template (testdata/hf_reference.json).
func TestHFReference(t *testing.T) {
	ref := loadReference(t)
	for i, c := range ref.Chat {
		if got := RenderChat(c.Messages, c.AddGenerationPrompt); got != c.Text {
			t.Errorf("chat %d: RenderChat\n got %q\nwant %q (transformers)", i, got, c.Text)
		}
	}
	tk := loadQwen(t)
	if tk.VocabSize() != ref.VocabSize {
		t.Errorf("VocabSize %d, tokenizers says %d", tk.VocabSize(), ref.VocabSize)
	}
	for _, c := range ref.Cases {
		got := tk.Encode(c.Text)
		if !reflect.DeepEqual(got, c.IDs) {
			i := 0
			for i < len(got) && i < len(c.IDs) && got[i] == c.IDs[i] {
				i++
			}
			t.Errorf("%s: ids differ from token %d: ours %v…, tokenizers %v…", c.Name, i,
				got[i:min(i+6, len(got))], c.IDs[i:min(i+6, len(c.IDs))])
			continue
		}
		if dec := tk.Decode(c.IDs); dec != c.Decoded {
			t.Errorf("%s: Decode %q, tokenizers %q", c.Name, dec, c.Decoded)
		}
		if dec := tk.Decode(got); dec != norm.NFC.String(c.Text) {
			t.Errorf("%s: Decode(Encode(x)) = %q, want NFC(x)", c.Name, dec)
		}
		t.Logf("%-20s %4d ids identical", c.Name, len(got))
	}
	for i, c := range ref.Chat {
		if got := tk.Encode(c.Text); !reflect.DeepEqual(got, c.IDs) {
			t.Errorf("chat %d: Encode(rendered) = %v, tokenizers %v", i, got, c.IDs)
		}
	}
}

func TestQwenTokens(t *testing.T) {
	tk := loadQwen(t)
	if tk.VocabSize() != 151669 {
		t.Errorf("VocabSize %d, want 151669", tk.VocabSize())
	}
	for id, s := range map[int]string{151643: EndOfText, 151644: ImStart, 151645: ImEnd, 151667: "<think>", 151668: "</think>"} {
		if got, ok := tk.TokenID(s); !ok || got != id {
			t.Errorf("TokenID(%q) = %d, %v; want %d", s, got, ok, id)
		}
		if tk.Token(id) != s {
			t.Errorf("Token(%d) = %q", id, tk.Token(id))
		}
	}
	if !tk.IsSpecial(151645) || tk.IsSpecial(151667) {
		t.Error("<|im_end|> must be special and <think> not")
	}
	if ids := tk.Encode("x<|im_end|>"); ids[len(ids)-1] != 151645 {
		t.Errorf("Encode did not match <|im_end|>: %v", ids)
	}
	ids := tk.EncodeOrdinary("<|im_end|><think>")
	for _, id := range ids {
		if id >= 151643 {
			t.Errorf("EncodeOrdinary produced added token %d", id)
		}
	}
	if tk.Decode(ids) != "<|im_end|><think>" {
		t.Errorf("EncodeOrdinary round trip %q", tk.Decode(ids))
	}
	if got := tk.Decode([]int{-1, 151669, 1 << 40}); got != "\uFFFD\uFFFD\uFFFD" {
		t.Errorf("unknown ids decode to %q", got)
	}
}

func TestQwenIncrementalDecode(t *testing.T) {
	tk := loadQwen(t)
	text := "emoji 👨‍👩‍👧‍👦 and 你是誰 🇹🇼 done 🦀🦀🦀 ａｂｃ"
	d := tk.NewDecoder()
	var b strings.Builder
	for _, id := range tk.Encode(text) {
		p := d.Push(id)
		if !utf8.ValidString(p) || strings.Contains(p, "\uFFFD") {
			t.Fatalf("broken UTF-8 emitted: %q", p)
		}
		b.WriteString(p)
	}
	b.WriteString(d.Flush())
	if b.String() != text {
		t.Fatalf("incremental %q != %q", b.String(), text)
	}
}

// TestQwenBPEPaths runs both merge loops on long words of the real vocabulary.
func TestQwenBPEPaths(t *testing.T) {
	tk := loadQwen(t)
	ref := loadReference(t)
	all := ref.Cases[len(ref.Cases)-1].Text
	words := tk.Pretokenize(all)
	rng := rand.New(rand.NewPCG(5, 6))
	for range 100 { // longer artificial words: concatenations of real pre-tokens
		var b strings.Builder
		for range rng.IntN(8) + 1 {
			b.WriteString(words[rng.IntN(len(words))])
		}
		words = append(words, b.String()[:min(b.Len(), 400)])
	}
	defer func(v int) { heapThreshold = v }(heapThreshold)
	for _, w := range words {
		heapThreshold = 1 << 30
		scan := tk.bpe(nil, w)
		heapThreshold = 0
		if heap := tk.bpe(nil, w); !reflect.DeepEqual(scan, heap) {
			t.Fatalf("%q: scan %v, heap %v", w, scan, heap)
		}
	}
}

func TestQwenConcurrentEncode(t *testing.T) {
	tk := loadQwen(t)
	text := "The quick brown fox 你是誰 <|im_end|> 12345 🦀"
	want := tk.Encode(text)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 200 {
				if got := tk.Encode(text + strings.Repeat(" x", (g+i)%3)); !reflect.DeepEqual(got[:len(want)-1], want[:len(want)-1]) {
					t.Errorf("goroutine %d: %v", g, got)
					return
				}
			}
		})
	}
	wg.Wait()
}
