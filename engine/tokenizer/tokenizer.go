// Package tokenizer is a byte-level BPE tokenizer loaded from a Hugging Face tokenizer.json,
// plus the Qwen chat template.
//
// Encoding follows the tokenizers library step by step: added tokens (special or not) are cut
// out of the raw text first (longest match), the rest is NFC-normalised, split by the Qwen
// pre-tokenizer pattern, mapped to GPT-2's byte alphabet and merged by BPE rank. The pattern
//
//	(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//
// uses a negative lookahead that Go's regexp lacks; split.go implements exactly this pattern as
// a hand-written scanner (checked against the tokenizers library on a multilingual text), which
// is also several times faster than a backtracking regex engine. Other pre-tokenizers or models
// are rejected with an error naming the field.
package tokenizer

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// Tokenizer encodes and decodes text. It is safe for concurrent use.
type Tokenizer struct {
	vocab      map[string]int
	tokens     []string // id -> token string (byte-level alphabet, or raw text for added tokens)
	added      map[int]bool
	special    map[int]bool
	addedList  []string // added token contents, longest first
	merges     map[uint64]merge
	byteToRune [256]rune
	runeToByte map[rune]byte
	byteID     [256]int // id of each single-byte token
	mu         sync.Mutex
	cache      map[string][]int
}

type merge struct{ rank, id int32 }

// cacheLimit bounds the word cache; it is cleared when full.
const cacheLimit = 1 << 16

type tokenizerJSON struct {
	AddedTokens []struct {
		ID      int    `json:"id"`
		Content string `json:"content"`
		Special bool   `json:"special"`
	} `json:"added_tokens"`
	Normalizer   json.RawMessage `json:"normalizer"`
	PreTokenizer json.RawMessage `json:"pre_tokenizer"`
	Decoder      json.RawMessage `json:"decoder"`
	Model        struct {
		Type    string          `json:"type"`
		Vocab   map[string]int  `json:"vocab"`
		Merges  json.RawMessage `json:"merges"`
		ByteFB  bool            `json:"byte_fallback"`
		Dropout *float64        `json:"dropout"`
	} `json:"model"`
}

// qwenPattern is the only Split pattern supported (implemented by split.go).
const qwenPattern = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`

// Load reads a tokenizer.json.
func Load(path string) (*Tokenizer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	t, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// Parse builds a tokenizer from tokenizer.json bytes.
func Parse(data []byte) (*Tokenizer, error) {
	var j tokenizerJSON
	if err := json.Unmarshal(data, &j); err != nil {
		return nil, fmt.Errorf("tokenizer.json: %v", err)
	}
	if j.Model.Type != "BPE" {
		return nil, fmt.Errorf("model.type %q is not supported (want BPE)", j.Model.Type)
	}
	if j.Model.ByteFB || (j.Model.Dropout != nil && *j.Model.Dropout != 0) {
		return nil, fmt.Errorf("model: byte_fallback and dropout are not supported")
	}
	if err := checkComponents(j.Normalizer, j.PreTokenizer, j.Decoder); err != nil {
		return nil, err
	}
	t := &Tokenizer{vocab: j.Model.Vocab, added: map[int]bool{}, special: map[int]bool{}, runeToByte: map[rune]byte{}, cache: map[string][]int{}}
	maxID := -1
	for s, id := range t.vocab {
		if id < 0 {
			return nil, fmt.Errorf("model.vocab: token %q has negative id %d", s, id)
		}
		maxID = max(maxID, id)
	}
	for _, a := range j.AddedTokens {
		maxID = max(maxID, a.ID)
	}
	t.tokens = make([]string, maxID+1)
	for s, id := range t.vocab {
		t.tokens[id] = s
	}
	for _, a := range j.AddedTokens {
		if a.Content == "" || a.ID < 0 {
			return nil, fmt.Errorf("added_tokens: invalid token %q (id %d)", a.Content, a.ID)
		}
		t.tokens[a.ID] = a.Content
		t.added[a.ID] = true
		t.special[a.ID] = a.Special
		t.addedList = append(t.addedList, a.Content)
	}
	sort.Slice(t.addedList, func(a, b int) bool { return len(t.addedList[a]) > len(t.addedList[b]) })
	// GPT-2 byte alphabet: printable bytes map to themselves, the rest to U+0100 upwards.
	n := 0
	for b := 0; b < 256; b++ {
		if (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF) {
			t.byteToRune[b] = rune(b)
		} else {
			t.byteToRune[b] = rune(256 + n)
			n++
		}
		t.runeToByte[t.byteToRune[b]] = byte(b)
		id, ok := t.vocab[string(t.byteToRune[b])]
		if !ok {
			return nil, fmt.Errorf("model.vocab: byte %#02x (%q) has no token: not a byte-level vocabulary", b, t.byteToRune[b])
		}
		t.byteID[b] = id
	}
	merges, err := parseMerges(j.Model.Merges)
	if err != nil {
		return nil, err
	}
	t.merges = make(map[uint64]merge, len(merges))
	for rank, m := range merges {
		a, okA := t.vocab[m[0]]
		b, okB := t.vocab[m[1]]
		c, okC := t.vocab[m[0]+m[1]]
		if !okA || !okB || !okC {
			return nil, fmt.Errorf("model.merges[%d]: %q + %q refers to tokens not in the vocabulary", rank, m[0], m[1])
		}
		key := uint64(a)<<32 | uint64(b)
		if _, dup := t.merges[key]; !dup {
			t.merges[key] = merge{int32(rank), int32(c)}
		}
	}
	return t, nil
}

func parseMerges(raw json.RawMessage) ([][2]string, error) {
	var pairs [][2]string
	if err := json.Unmarshal(raw, &pairs); err == nil {
		return pairs, nil
	}
	var strs []string
	if err := json.Unmarshal(raw, &strs); err != nil {
		return nil, fmt.Errorf("model.merges: want [\"a b\", …] or [[a, b], …]: %v", err)
	}
	pairs = make([][2]string, len(strs))
	for i, s := range strs {
		a, b, ok := strings.Cut(s, " ")
		if !ok {
			return nil, fmt.Errorf("model.merges[%d]: %q is not \"a b\"", i, s)
		}
		pairs[i] = [2]string{a, b}
	}
	return pairs, nil
}

func checkComponents(normalizer, pre, dec json.RawMessage) error {
	var n struct{ Type string }
	if len(normalizer) > 0 && string(normalizer) != "null" {
		json.Unmarshal(normalizer, &n)
		if n.Type != "NFC" {
			return fmt.Errorf("normalizer %q is not supported (want NFC or none)", n.Type)
		}
	}
	var p struct {
		Type          string
		Pretokenizers []struct {
			Type           string
			Behavior       string
			Invert         bool
			Pattern        struct{ Regex string }
			AddPrefixSpace bool `json:"add_prefix_space"`
			UseRegex       bool `json:"use_regex"`
		}
	}
	if err := json.Unmarshal(pre, &p); err != nil {
		return fmt.Errorf("pre_tokenizer: %v", err)
	}
	ok := p.Type == "Sequence" && len(p.Pretokenizers) == 2 &&
		p.Pretokenizers[0].Type == "Split" && p.Pretokenizers[0].Pattern.Regex == qwenPattern &&
		p.Pretokenizers[0].Behavior == "Isolated" && !p.Pretokenizers[0].Invert &&
		p.Pretokenizers[1].Type == "ByteLevel" && !p.Pretokenizers[1].AddPrefixSpace && !p.Pretokenizers[1].UseRegex
	if !ok {
		return fmt.Errorf("pre_tokenizer: only the Qwen2/Qwen3 Split pattern + ByteLevel sequence is supported")
	}
	var d struct{ Type string }
	json.Unmarshal(dec, &d)
	if d.Type != "ByteLevel" {
		return fmt.Errorf("decoder %q is not supported (want ByteLevel)", d.Type)
	}
	return nil
}

// VocabSize is the largest id plus one, added tokens included (151669 for Qwen3; the model's
// embedding is padded to 151936 rows).
func (t *Tokenizer) VocabSize() int { return len(t.tokens) }

// TokenID returns the id of a token string (raw text for added tokens).
func (t *Tokenizer) TokenID(s string) (int, bool) {
	for id := range t.added {
		if t.tokens[id] == s {
			return id, true
		}
	}
	id, ok := t.vocab[s]
	return id, ok
}

// Token returns the stored string of id ("" when out of range).
func (t *Tokenizer) Token(id int) string {
	if id < 0 || id >= len(t.tokens) {
		return ""
	}
	return t.tokens[id]
}

// IsSpecial reports whether id is a special added token (<|im_end|>, …).
func (t *Tokenizer) IsSpecial(id int) bool { return t.special[id] }

// Encode tokenises text; added tokens in the text are matched first. No BOS is added.
func (t *Tokenizer) Encode(text string) []int {
	var out []int
	for len(text) > 0 {
		pos, tok, id := t.nextAdded(text)
		if pos < 0 {
			return t.appendOrdinary(out, text)
		}
		out = t.appendOrdinary(out, text[:pos])
		out = append(out, id)
		text = text[pos+len(tok):]
	}
	return out
}

// nextAdded finds the earliest added token in s (longest at that position).
func (t *Tokenizer) nextAdded(s string) (int, string, int) {
	best, bestTok := -1, ""
	for _, a := range t.addedList {
		if i := strings.Index(s, a); i >= 0 && (best < 0 || i < best || (i == best && len(a) > len(bestTok))) {
			best, bestTok = i, a
		}
	}
	if best < 0 {
		return -1, "", 0
	}
	id, _ := t.TokenID(bestTok)
	return best, bestTok, id
}

// EncodeOrdinary tokenises text without matching added tokens.
func (t *Tokenizer) EncodeOrdinary(text string) []int { return t.appendOrdinary(nil, text) }

func (t *Tokenizer) appendOrdinary(out []int, text string) []int {
	if text == "" {
		return out
	}
	text = norm.NFC.String(text)
	for _, piece := range split(text) {
		out = append(out, t.word(piece)...)
	}
	return out
}

// word returns the BPE ids of one pre-token, cached.
func (t *Tokenizer) word(piece string) []int {
	t.mu.Lock()
	ids, ok := t.cache[piece]
	t.mu.Unlock()
	if ok {
		return ids
	}
	ids = t.bpe(piece)
	t.mu.Lock()
	if len(t.cache) >= cacheLimit {
		clear(t.cache)
	}
	t.cache[piece] = ids
	t.mu.Unlock()
	return ids
}

// bpe merges the bytes of piece by rank: repeatedly the leftmost pair of lowest rank.
func (t *Tokenizer) bpe(piece string) []int {
	syms := make([]int, len(piece))
	for i := 0; i < len(piece); i++ {
		syms[i] = t.byteID[piece[i]]
	}
	for len(syms) > 1 {
		bestRank, bestAt := int32(-1), -1
		var bestID int32
		for i := 0; i+1 < len(syms); i++ {
			if m, ok := t.merges[uint64(syms[i])<<32|uint64(syms[i+1])]; ok && (bestRank < 0 || m.rank < bestRank) {
				bestRank, bestAt, bestID = m.rank, i, m.id
			}
		}
		if bestAt < 0 {
			break
		}
		syms[bestAt] = int(bestID)
		syms = append(syms[:bestAt+1], syms[bestAt+2:]...)
	}
	return syms
}

// Decode turns ids into text. Added tokens decode to their content; unknown ids to U+FFFD;
// invalid UTF-8 produced by byte tokens is replaced by U+FFFD, as the tokenizers library does.
func (t *Tokenizer) Decode(ids []int) string {
	b := t.appendBytes(nil, ids)
	return strings.ToValidUTF8(string(b), "\uFFFD")
}

func (t *Tokenizer) appendBytes(b []byte, ids []int) []byte {
	for _, id := range ids {
		if id < 0 || id >= len(t.tokens) || t.tokens[id] == "" {
			b = append(b, "\uFFFD"...)
			continue
		}
		if t.added[id] {
			b = append(b, t.tokens[id]...)
			continue
		}
		for _, r := range t.tokens[id] {
			if c, ok := t.runeToByte[r]; ok {
				b = append(b, c)
			} else {
				b = utf8.AppendRune(b, r)
			}
		}
	}
	return b
}

// Decoder decodes a stream of ids incrementally, emitting only complete UTF-8.
type Decoder struct {
	t       *Tokenizer
	pending []byte
}

// NewDecoder starts an incremental decoder.
func (t *Tokenizer) NewDecoder() *Decoder { return &Decoder{t: t} }

// Push adds one id and returns the text that is now complete (possibly "").
func (d *Decoder) Push(id int) string {
	d.pending = d.t.appendBytes(d.pending, []int{id})
	// Hold back an incomplete UTF-8 sequence at the end (at most 3 bytes).
	cut := len(d.pending)
	for k := 1; k <= 3 && k <= len(d.pending); k++ {
		c := d.pending[len(d.pending)-k]
		if c&0xC0 != 0x80 { // a lead byte or ASCII
			if c >= 0xC0 && !utf8.FullRune(d.pending[len(d.pending)-k:]) {
				cut = len(d.pending) - k
			}
			break
		}
	}
	out := strings.ToValidUTF8(string(d.pending[:cut]), "\uFFFD")
	d.pending = append(d.pending[:0], d.pending[cut:]...)
	return out
}

// Flush returns whatever is held back (as U+FFFD when incomplete).
func (d *Decoder) Flush() string {
	out := strings.ToValidUTF8(string(d.pending), "\uFFFD")
	d.pending = d.pending[:0]
	return out
}
