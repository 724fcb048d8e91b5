package tokenizer

import (
	"encoding/json"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// byteAlphabet is GPT-2's byte alphabet, written out independently of Parse: bytes that are
// printable Latin-1 keep their character, the other 68 take U+0100… in byte order.
func byteAlphabet() []string {
	var chars []string
	n := 0
	for b := 0; b < 256; b++ {
		printable := (b > ' ' && b < 0x7F) || (b > 0xA0 && b != 0xAD)
		if printable {
			chars = append(chars, string(rune(b)))
		} else {
			chars = append(chars, string(rune(256+n)))
			n++
		}
	}
	return chars
}

// tinyMerges are the merges of the tiny tokenizer, in rank order.
var tinyMerges = [][2]string{
	{"b", "c"},   // 0: "abc" must become a|bc although "ab" is also a merge
	{"a", "b"},   // 1
	{"h", "e"},   // 2
	{"l", "l"},   // 3
	{"he", "ll"}, // 4
	{"hell", "o"},
	{"Ġ", "w"},
	{"o", "r"},
	{"Ġw", "or"},
	{"a", "a"},
	{"aa", "aa"},
	{"Ġ", "Ġ"},
	{"'", "s"},
}

// tinyJSON builds a tokenizer.json: ids 0-255 are the byte tokens (id = byte value), then one
// token per merge, then added tokens at 400+. edit may change the document before encoding.
func tinyJSON(t testing.TB, stringMerges bool, edit func(map[string]any)) []byte {
	t.Helper()
	vocab := map[string]int{}
	for i, c := range byteAlphabet() {
		vocab[c] = i
	}
	var merges []any
	for _, m := range tinyMerges {
		vocab[m[0]+m[1]] = len(vocab)
		if stringMerges {
			merges = append(merges, m[0]+" "+m[1])
		} else {
			merges = append(merges, []string{m[0], m[1]})
		}
	}
	added := []map[string]any{
		{"id": 400, "content": "<|im_end|>", "special": true, "normalized": false},
		{"id": 401, "content": "<think>", "special": false, "normalized": false},
		{"id": 402, "content": "<x>", "special": true, "normalized": false},
		{"id": 403, "content": "<x>y", "special": true, "normalized": false},
		{"id": 404, "content": "x>yz", "special": false, "normalized": false},
		{"id": 405, "content": "e\u0301!", "special": false, "normalized": true}, // matched as "é!" after NFC
		{"id": 406, "content": "o\u0308", "special": false, "normalized": false}, // matched before NFC only
	}
	j := map[string]any{
		"added_tokens": added,
		"normalizer":   map[string]any{"type": "NFC"},
		"pre_tokenizer": map[string]any{"type": "Sequence", "pretokenizers": []any{
			map[string]any{"type": "Split", "pattern": map[string]any{"Regex": QwenPattern}, "behavior": "Isolated", "invert": false},
			map[string]any{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}}},
		"post_processor": map[string]any{"type": "ByteLevel"},
		"decoder":        map[string]any{"type": "ByteLevel"},
		"model":          map[string]any{"type": "BPE", "vocab": vocab, "merges": merges, "dropout": nil, "unk_token": nil, "byte_fallback": false, "ignore_merges": false},
	}
	if edit != nil {
		edit(j)
	}
	raw, err := json.Marshal(j)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func tiny(t testing.TB) *Tokenizer {
	t.Helper()
	tk, err := Parse(tinyJSON(t, false, nil))
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

func tokens(tk *Tokenizer, ids []int) []string {
	out := []string{}
	for _, id := range ids {
		out = append(out, tk.Token(id))
	}
	return out
}

func TestTinyEncode(t *testing.T) {
	tk := tiny(t)
	cases := []struct {
		name, in string
		want     []string
	}{
		{"merge rank order, not left to right", "abc", []string{"a", "bc"}},
		{"leftmost among equal ranks", "aaa", []string{"aa", "a"}},
		{"merged pairs merge again", "aaaa", []string{"aaaa"}},
		{"chain of merges", "hello", []string{"hello"}},
		{"space prefix merges", "hello world", []string{"hello", "Ġwor", "l", "d"}},
		{"byte map: controls, newline, space, two-byte letter", "\x00\n é", []string{"Ā", "Ċ", "Ġ", "Ã", "©"}},
		{"byte map: 4-byte emoji", "🦀", []string{"ð", "Ł", "¦", "Ģ"}},
		{"DEL and NBSP are remapped", "\x7f\u00a0", []string{"ġ", "Â", "ł"}},
		{"special token splits text", "x<|im_end|>y", []string{"x", "<|im_end|>", "y"}},
		{"non-special added token", "a<think>b", []string{"a", "<think>", "b"}},
		{"leftmost-longest added token", "a<x>yz", []string{"a", "<x>y", "z"}},
		{"shorter added token when longer does not fit", "<x>!", []string{"<x>", "!"}},
		{"added token with another first byte", "ax>yz", []string{"a", "x>yz"}},
		{"normalized added token matched after NFC", "e\u0301!", []string{"e\u0301!"}},
		{"raw added token matched before NFC", "o\u0308", []string{"o\u0308"}},
		{"text around added tokens is NFC'd per piece", "e\u0301<think>", []string{"Ã", "©", "<think>"}},
		{"contraction", "he's", []string{"he", "'s"}},
		{"whitespace run before a word", "a   w", []string{"a", "ĠĠ", "Ġw"}},
		{"empty", "", []string{}},
	}
	for _, c := range cases {
		got := tokens(tk, tk.Encode(c.in))
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: Encode(%q) = %q, want %q", c.name, c.in, got, c.want)
		}
	}
	// The raw added token "o\u0308" is not in NFC text: EncodeOrdinary and NFC input miss it.
	if got := tokens(tk, tk.Encode("\u00f6")); reflect.DeepEqual(got, []string{"o\u0308"}) {
		t.Errorf("precomposed ö matched the raw added token o+U+0308")
	}
}

func TestEncodeOrdinaryMatchesNoAddedToken(t *testing.T) {
	tk := tiny(t)
	for _, s := range []string{"<|im_end|>", "<think>", "<x>y", "x>yz"} {
		ids := tk.EncodeOrdinary(s)
		for _, id := range ids {
			if id >= 400 {
				t.Errorf("EncodeOrdinary(%q) produced added token %d", s, id)
			}
		}
		if got := tk.Decode(ids); got != s {
			t.Errorf("Decode(EncodeOrdinary(%q)) = %q", s, got)
		}
	}
}

func TestStringMergesSameAsPairs(t *testing.T) {
	a := tiny(t)
	b, err := Parse(tinyJSON(t, true, nil))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"hello world abc aaaa he's", "x<|im_end|>y"} {
		if x, y := a.Encode(s), b.Encode(s); !reflect.DeepEqual(x, y) {
			t.Errorf("%q: pair merges %v, string merges %v", s, x, y)
		}
	}
}

func TestIgnoreMerges(t *testing.T) {
	// "ac" is in the vocabulary but no merge makes it: with ignore_merges the whole word wins.
	edit := func(j map[string]any) {
		m := j["model"].(map[string]any)
		m["ignore_merges"] = true
		m["vocab"].(map[string]int)["ac"] = 300
	}
	tk, err := Parse(tinyJSON(t, false, edit))
	if err != nil {
		t.Fatal(err)
	}
	if got := tokens(tk, tk.Encode("ac abc")); !reflect.DeepEqual(got, []string{"ac", "Ġ", "a", "bc"}) {
		t.Errorf("ignore_merges: %q", got)
	}
}

func TestAccessors(t *testing.T) {
	tk := tiny(t)
	if got := tk.VocabSize(); got != 407 {
		t.Errorf("VocabSize %d, want 407 (max id 406 + 1)", got)
	}
	for s, want := range map[string]int{"<|im_end|>": 400, "<think>": 401, "Ġw": 262, "a": 'a'} {
		if id, ok := tk.TokenID(s); !ok || id != want {
			t.Errorf("TokenID(%q) = %d, %v; want %d", s, id, ok, want)
		}
		if got := tk.Token(want); got != s {
			t.Errorf("Token(%d) = %q, want %q", want, got, s)
		}
	}
	if _, ok := tk.TokenID("nope"); ok {
		t.Error("TokenID of an unknown string")
	}
	for _, id := range []int{-1, 300, 407, 1 << 40} {
		if got := tk.Token(id); got != "" {
			t.Errorf("Token(%d) = %q", id, got)
		}
	}
	if !tk.IsSpecial(400) || tk.IsSpecial(401) || tk.IsSpecial('a') {
		t.Error("IsSpecial")
	}
	if got := tk.Pretokenize("it's  ok"); !reflect.DeepEqual(got, []string{"it", "'s", " ", " ok"}) {
		t.Errorf("Pretokenize %q", got)
	}
}

func TestParseErrors(t *testing.T) {
	set := func(path string, v any) func(map[string]any) {
		return func(j map[string]any) {
			keys := strings.Split(path, ".")
			m := j
			for _, k := range keys[:len(keys)-1] {
				m = m[k].(map[string]any)
			}
			m[keys[len(keys)-1]] = v
		}
	}
	cases := []struct {
		name string
		edit func(map[string]any)
		raw  string
		want string
	}{
		{"not json", nil, `{`, "not a tokenizer.json"},
		{"no model", nil, `{"normalizer":null}`, "model: missing"},
		{"wordpiece", set("model.type", "WordPiece"), "", `model.type "WordPiece" is not supported`},
		{"dropout", set("model.dropout", 0.1), "", "model.dropout"},
		{"suffix", set("model.end_of_word_suffix", "</w>"), "", "model.end_of_word_suffix"},
		{"prefix", set("model.continuing_subword_prefix", "##"), "", "model.continuing_subword_prefix"},
		{"nfkc", set("normalizer", map[string]any{"type": "NFKC"}), "", `normalizer: type "NFKC" is not supported`},
		{"sequence with lowercase", set("normalizer", map[string]any{"type": "Sequence", "normalizers": []any{map[string]any{"type": "Lowercase"}}}), "", `normalizer.normalizers[0]: type "Lowercase"`},
		{"bare bytelevel pre-tokenizer", set("pre_tokenizer", map[string]any{"type": "ByteLevel"}), "", "pre_tokenizer: type \"ByteLevel\""},
		{"other regex", set("pre_tokenizer", map[string]any{"type": "Sequence", "pretokenizers": []any{
			map[string]any{"type": "Split", "pattern": map[string]any{"Regex": `\w+`}, "behavior": "Isolated"}, map[string]any{"type": "ByteLevel"}}}), "", "pre_tokenizer.pretokenizers[0].pattern"},
		{"no pre-tokenizer", set("pre_tokenizer", nil), "", "pre_tokenizer: missing"},
		{"decoder", set("decoder", map[string]any{"type": "WordPiece"}), "", `decoder: type "WordPiece"`},
		{"merge of unknown token", set("model.merges", []any{[]string{"a", "zz"}}), "", `model.merges[0]: "zz" is not in the vocabulary`},
		{"merge result unknown", set("model.merges", []any{"a z"}), "", `model.merges[0]: merged token "az"`},
		{"merge with three parts", set("model.merges", []any{"a b c"}), "", `model.merges[0]: "a b c" is not`},
		{"merge array of three", set("model.merges", []any{[]string{"a", "b", "c"}}), "", `model.merges[0]`},
		{"lstrip", set("added_tokens", []any{map[string]any{"id": 400, "content": "<m>", "lstrip": true}}), "", `added_tokens[0] "<m>": lstrip`},
		{"empty added", set("added_tokens", []any{map[string]any{"id": 400, "content": ""}}), "", `added_tokens[0] (id 400): empty content`},
		{"huge id", set("added_tokens", []any{map[string]any{"id": 1 << 30, "content": "<m>"}}), "", "outside"},
		{"negative vocab id", set("model.vocab", map[string]int{"a": -1}), "", "has id -1"},
		{"not byte level", set("model.vocab", map[string]int{"a": 0, "b": 1}), "", "not a byte-level vocabulary"},
	}
	for _, c := range cases {
		raw := []byte(c.raw)
		if c.raw == "" {
			raw = tinyJSON(t, false, c.edit)
		}
		_, err := Parse(raw)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err %v, want it to contain %q", c.name, err, c.want)
		}
	}
	if _, err := Load("testdata/does-not-exist.json"); err == nil || !strings.Contains(err.Error(), "does-not-exist.json") {
		t.Errorf("Load of a missing file: %v", err)
	}
}

// TestBPEHeapMatchesScan checks the heap merge loop against the rescanning one on random words.
func TestBPEHeapMatchesScan(t *testing.T) {
	tk := tiny(t)
	rng := rand.New(rand.NewPCG(1, 2))
	alphabet := []string{"a", "b", "c", "h", "e", "l", "o", " ", "w", "r", "'", "s", "é"}
	defer func(v int) { heapThreshold = v }(heapThreshold)
	for range 2000 {
		var b strings.Builder
		for range rng.IntN(40) + 1 {
			b.WriteString(alphabet[rng.IntN(len(alphabet))])
		}
		w := b.String()
		heapThreshold = 1 << 30
		scan := tk.bpe(nil, w)
		heapThreshold = 0
		heap := tk.bpe(nil, w)
		if !reflect.DeepEqual(scan, heap) {
			t.Fatalf("%q: scan %v, heap %v", w, scan, heap)
		}
	}
}

// naiveEncode is an independent model of Encode for the tiny tokenizer's added tokens: raw added
// tokens leftmost-longest on the raw text, then per piece NFC and normalised added tokens, then
// EncodeOrdinary.
func naiveEncode(tk *Tokenizer, s string) []int {
	raw := map[string]int{"<|im_end|>": 400, "<think>": 401, "<x>": 402, "<x>y": 403, "x>yz": 404, "o\u0308": 406}
	normed := map[string]int{"é!": 405}
	var split func(s string, toks map[string]int, rest func(string) []int) []int
	split = func(s string, toks map[string]int, rest func(string) []int) []int {
		for i := 0; i < len(s); i++ {
			best := ""
			for a := range toks {
				if strings.HasPrefix(s[i:], a) && len(a) > len(best) {
					best = a
				}
			}
			if best != "" {
				out := append(rest(s[:i]), toks[best])
				return append(out, split(s[i+len(best):], toks, rest)...)
			}
		}
		return rest(s)
	}
	return split(s, raw, func(p string) []int {
		return split(norm.NFC.String(p), normed, func(q string) []int { return tk.EncodeOrdinary(q) })
	})
}

func FuzzRoundTrip(f *testing.F) {
	tk := tiny(f)
	for _, s := range []string{"hello world", "it's", "你好 \n\n x", "<|im_end|>a<think>", "🇹🇼", "a<x>yz", "e\u0301!", "<think>\u0338", "\xff\xfe"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ids := tk.Encode(s)
		dec := tk.Decode(ids)
		if !utf8.ValidString(dec) {
			t.Fatalf("Decode gave invalid UTF-8 %q", dec)
		}
		if !utf8.ValidString(s) {
			tk.EncodeOrdinary(s) // must not panic
			return
		}
		if got := tk.Decode(tk.EncodeOrdinary(s)); got != norm.NFC.String(s) {
			t.Fatalf("Decode(EncodeOrdinary(%q)) = %q, want NFC %q", s, got, norm.NFC.String(s))
		}
		if want := naiveEncode(tk, s); !reflect.DeepEqual(ids, want) {
			t.Fatalf("Encode(%q) = %v, naive model %v", s, ids, want)
		}
		// With no added token involved, the round trip is exactly NFC(s). (An added token can stop
		// NFC from composing across it: "<think>\u0338" keeps its '>' where NFC(s) has U+226F.)
		plain := true
		for _, id := range ids {
			plain = plain && id < 400
		}
		if plain && dec != norm.NFC.String(s) {
			t.Fatalf("Decode(Encode(%q)) = %q, want NFC %q", s, dec, norm.NFC.String(s))
		}
	})
}

// TestDuplicateMergeKeepsLastRank: the tokenizers library builds its merge map by inserting in
// order, so a pair listed twice ends with its later rank.
func TestDuplicateMergeKeepsLastRank(t *testing.T) {
	for _, c := range []struct {
		merges []any
		want   []string
	}{
		{[]any{[]string{"a", "b"}, []string{"b", "c"}}, []string{"ab", "c"}},
		{[]any{[]string{"a", "b"}, []string{"b", "c"}, []string{"a", "b"}}, []string{"a", "bc"}},
	} {
		tk, err := Parse(tinyJSON(t, false, func(j map[string]any) { j["model"].(map[string]any)["merges"] = c.merges }))
		if err != nil {
			t.Fatal(err)
		}
		if got := tokens(tk, tk.Encode("abc")); !reflect.DeepEqual(got, c.want) {
			t.Errorf("merges %v: %q, want %q", c.merges, got, c.want)
		}
		if tk.merges.len() != 2 {
			t.Errorf("merges %v: %d distinct pairs, want 2", c.merges, tk.merges.len())
		}
	}
}
