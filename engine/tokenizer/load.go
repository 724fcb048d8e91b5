package tokenizer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"golang.org/x/text/unicode/norm"
)

// QwenPattern is the Split regex of the Qwen2/Qwen3 pre-tokenizer, the only one supported; split.go
// implements it as a scanner.
const QwenPattern = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`

// fileJSON is the part of tokenizer.json the tokenizer reads. Components are kept raw and decoded
// by check functions so that errors can name the field.
type fileJSON struct {
	AddedTokens   []addedJSON     `json:"added_tokens"`
	Normalizer    json.RawMessage `json:"normalizer"`
	PreTokenizer  json.RawMessage `json:"pre_tokenizer"`
	Decoder       json.RawMessage `json:"decoder"`
	Model         *modelJSON      `json:"model"`
	PostProcessor json.RawMessage `json:"post_processor"`
}

type addedJSON struct {
	ID         *int    `json:"id"`
	Content    *string `json:"content"`
	SingleWord bool    `json:"single_word"`
	LStrip     bool    `json:"lstrip"`
	RStrip     bool    `json:"rstrip"`
	Normalized bool    `json:"normalized"`
	Special    bool    `json:"special"`
}

type modelJSON struct {
	Type                    string          `json:"type"`
	Vocab                   map[string]int  `json:"vocab"`
	Merges                  json.RawMessage `json:"merges"`
	Dropout                 *float64        `json:"dropout"`
	ContinuingSubwordPrefix *string         `json:"continuing_subword_prefix"`
	EndOfWordSuffix         *string         `json:"end_of_word_suffix"`
	IgnoreMerges            bool            `json:"ignore_merges"`
	// unk_token, fuse_unk and byte_fallback never act on a byte-level vocabulary (every byte has
	// a token, which Parse checks), so they are accepted and ignored.
}

// Load reads a Hugging Face tokenizer.json.
func Load(path string) (*Tokenizer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	t, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("tokenizer %s: %w", path, err)
	}
	return t, nil
}

// Parse builds a tokenizer from the bytes of a tokenizer.json. Supported: model BPE (byte-level
// vocabulary, merges as "a b" strings or [a, b] pairs, ignore_merges), normalizer NFC or none,
// pre_tokenizer Sequence[Split(QwenPattern, Isolated), ByteLevel(add_prefix_space false,
// use_regex false)], decoder ByteLevel, added tokens (special or not, normalized or not). Anything
// else is an error naming the field. The post_processor is ignored: Encode never adds BOS/EOS,
// which is what add_special_tokens=False does in the tokenizers library.
func Parse(data []byte) (*Tokenizer, error) {
	var f fileJSON
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("not a tokenizer.json: %v", err)
	}
	if f.Model == nil {
		return nil, fmt.Errorf("model: missing")
	}
	m := *f.Model
	if m.Type != "BPE" {
		return nil, fmt.Errorf("model.type %q is not supported (want BPE)", m.Type)
	}
	if m.Dropout != nil && *m.Dropout != 0 {
		return nil, fmt.Errorf("model.dropout %v is not supported (want null or 0)", *m.Dropout)
	}
	if m.ContinuingSubwordPrefix != nil && *m.ContinuingSubwordPrefix != "" {
		return nil, fmt.Errorf("model.continuing_subword_prefix %q is not supported (want empty)", *m.ContinuingSubwordPrefix)
	}
	if m.EndOfWordSuffix != nil && *m.EndOfWordSuffix != "" {
		return nil, fmt.Errorf("model.end_of_word_suffix %q is not supported (want empty)", *m.EndOfWordSuffix)
	}
	if len(m.Vocab) == 0 {
		return nil, fmt.Errorf("model.vocab: missing or empty")
	}
	nfc, err := checkNormalizer(f.Normalizer)
	if err != nil {
		return nil, err
	}
	if err := checkPreTokenizer(f.PreTokenizer); err != nil {
		return nil, err
	}
	if err := checkDecoder(f.Decoder); err != nil {
		return nil, err
	}

	t := &Tokenizer{
		vocab:        m.Vocab,
		nfc:          nfc,
		ignoreMerges: m.IgnoreMerges,
		addedByText:  map[string]int{},
		special:      map[int]bool{},
	}
	maxID := -1
	for s, id := range m.Vocab {
		if id < 0 || id > maxTokenID {
			return nil, fmt.Errorf("model.vocab: token %q has id %d outside [0, %d]", s, id, maxTokenID)
		}
		maxID = max(maxID, id)
	}
	for i, a := range f.AddedTokens {
		switch {
		case a.ID == nil || a.Content == nil:
			return nil, fmt.Errorf("added_tokens[%d]: id and content are required", i)
		case *a.Content == "":
			return nil, fmt.Errorf("added_tokens[%d] (id %d): empty content", i, *a.ID)
		case *a.ID < 0 || *a.ID > maxTokenID:
			return nil, fmt.Errorf("added_tokens[%d] %q: id %d outside [0, %d]", i, *a.Content, *a.ID, maxTokenID)
		case a.SingleWord:
			return nil, fmt.Errorf("added_tokens[%d] %q: single_word is not supported", i, *a.Content)
		case a.LStrip:
			return nil, fmt.Errorf("added_tokens[%d] %q: lstrip is not supported", i, *a.Content)
		case a.RStrip:
			return nil, fmt.Errorf("added_tokens[%d] %q: rstrip is not supported", i, *a.Content)
		}
		maxID = max(maxID, *a.ID)
	}

	t.tokens = make([]string, maxID+1)
	for s, id := range m.Vocab {
		t.tokens[id] = s
	}
	var raw, normalized []addedToken
	for _, a := range f.AddedTokens {
		id, content := *a.ID, *a.Content
		t.tokens[id] = content
		t.addedByText[content] = id
		if a.Special {
			t.special[id] = true
		}
		if a.Normalized {
			// The tokenizers library matches these on the normalised text, so their content is
			// normalised too.
			if nfc {
				content = norm.NFC.String(content)
			}
			normalized = append(normalized, addedToken{content, id})
		} else {
			raw = append(raw, addedToken{content, id})
		}
	}
	t.rawAdded = newMatcher(raw)
	t.normAdded = newMatcher(normalized)

	// GPT-2's byte alphabet: printable Latin-1 bytes stand for themselves, the others (controls,
	// space, DEL, NBSP, soft hyphen) are moved to U+0100 upwards in byte order.
	n := 0
	for b := 0; b < 256; b++ {
		if (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF) {
			t.byteRune[b] = rune(b)
		} else {
			t.byteRune[b] = rune(256 + n)
			n++
		}
		id, ok := m.Vocab[string(t.byteRune[b])]
		if !ok {
			return nil, fmt.Errorf("model.vocab: byte %#02x (%q) has no token: not a byte-level vocabulary", b, t.byteRune[b])
		}
		t.byteID[b] = int32(id)
	}
	runeByte := make(map[rune]byte, 256)
	for b, r := range t.byteRune {
		runeByte[r] = byte(b)
	}

	if err := t.loadMerges(m.Merges); err != nil {
		return nil, err
	}

	// What each id decodes to, as the ByteLevel decoder does it: a token all of whose characters
	// belong to the byte alphabet becomes those bytes; any other token (an added token with a
	// space or CJK text, say) stays as its UTF-8 text.
	t.decOff = make([]int32, len(t.tokens)+1)
	var buf []byte
	for id, s := range t.tokens {
		t.decOff[id] = int32(len(buf))
		mark := len(buf)
		for _, r := range s {
			c, ok := runeByte[r]
			if !ok {
				buf = append(buf[:mark], s...)
				break
			}
			buf = append(buf, c)
		}
	}
	t.decOff[len(t.tokens)] = int32(len(buf))
	t.decBytes = buf
	t.cache = newWordCache()
	return t, nil
}

// maxTokenID bounds ids so that a corrupt file cannot make Parse allocate without limit.
const maxTokenID = 1<<24 - 1

// loadMerges fills t.merges from model.merges ("a b" strings or [a, b] pairs). A pair listed twice
// keeps its last rank, as the tokenizers library's map does.
func (t *Tokenizer) loadMerges(raw json.RawMessage) error {
	var pairs [][]string
	body := bytes.TrimLeft(bytes.TrimPrefix(bytes.TrimSpace(raw), []byte("[")), " \t\r\n")
	if len(body) > 0 && body[0] == '"' {
		var strs []string
		if err := json.Unmarshal(raw, &strs); err != nil {
			return fmt.Errorf("model.merges: want [\"a b\", …] or [[\"a\", \"b\"], …]: %v", err)
		}
		pairs = make([][]string, len(strs))
		for i, s := range strs {
			pairs[i] = strings.Split(s, " ")
			if len(pairs[i]) != 2 {
				return fmt.Errorf("model.merges[%d]: %q is not \"a b\"", i, s)
			}
		}
	} else if err := json.Unmarshal(raw, &pairs); err != nil {
		return fmt.Errorf("model.merges: want [\"a b\", …] or [[\"a\", \"b\"], …]: %v", err)
	}
	t.merges = newMergeTable(len(pairs))
	for rank, p := range pairs {
		if len(p) != 2 {
			return fmt.Errorf("model.merges[%d]: %q is not a pair", rank, p)
		}
		a, b := p[0], p[1]
		ia, okA := t.vocab[a]
		ib, okB := t.vocab[b]
		ic, okC := t.vocab[a+b]
		switch {
		case !okA:
			return fmt.Errorf("model.merges[%d]: %q is not in the vocabulary", rank, a)
		case !okB:
			return fmt.Errorf("model.merges[%d]: %q is not in the vocabulary", rank, b)
		case !okC:
			return fmt.Errorf("model.merges[%d]: merged token %q is not in the vocabulary", rank, a+b)
		}
		t.merges.put(int32(ia), int32(ib), merge{int32(rank), int32(ic)})
	}
	return nil
}

func isNull(raw json.RawMessage) bool {
	s := strings.TrimSpace(string(raw))
	return s == "" || s == "null"
}

// checkNormalizer accepts no normaliser, NFC, or a Sequence of NFCs; it reports whether NFC applies.
func checkNormalizer(raw json.RawMessage) (bool, error) {
	if isNull(raw) {
		return false, nil
	}
	var n struct {
		Type        string            `json:"type"`
		Normalizers []json.RawMessage `json:"normalizers"`
	}
	if err := json.Unmarshal(raw, &n); err != nil {
		return false, fmt.Errorf("normalizer: %v", err)
	}
	switch n.Type {
	case "NFC":
		return true, nil
	case "Sequence":
		nfc := false
		for i, sub := range n.Normalizers {
			var s struct {
				Type string `json:"type"`
			}
			if err := json.Unmarshal(sub, &s); err != nil || s.Type != "NFC" {
				return false, fmt.Errorf("normalizer.normalizers[%d]: type %q is not supported (want NFC)", i, s.Type)
			}
			nfc = true
		}
		return nfc, nil
	}
	return false, fmt.Errorf("normalizer: type %q is not supported (want NFC or none)", n.Type)
}

func checkPreTokenizer(raw json.RawMessage) error {
	if isNull(raw) {
		return fmt.Errorf("pre_tokenizer: missing (want Sequence[Split(Qwen pattern), ByteLevel])")
	}
	type sub struct {
		Type    string `json:"type"`
		Pattern struct {
			Regex  *string `json:"Regex"`
			String *string `json:"String"`
		} `json:"pattern"`
		Behavior       string `json:"behavior"`
		Invert         bool   `json:"invert"`
		AddPrefixSpace bool   `json:"add_prefix_space"`
		UseRegex       bool   `json:"use_regex"`
	}
	var p struct {
		Type          string `json:"type"`
		Pretokenizers []sub  `json:"pretokenizers"`
	}
	if err := json.Unmarshal(raw, &p); err != nil {
		return fmt.Errorf("pre_tokenizer: %v", err)
	}
	if p.Type != "Sequence" || len(p.Pretokenizers) != 2 {
		return fmt.Errorf("pre_tokenizer: type %q with %d parts is not supported (want Sequence[Split(Qwen pattern), ByteLevel])", p.Type, len(p.Pretokenizers))
	}
	s, b := p.Pretokenizers[0], p.Pretokenizers[1]
	switch {
	case s.Type != "Split":
		return fmt.Errorf("pre_tokenizer.pretokenizers[0].type %q is not supported (want Split)", s.Type)
	case s.Pattern.Regex == nil || *s.Pattern.Regex != QwenPattern:
		return fmt.Errorf("pre_tokenizer.pretokenizers[0].pattern: only the Qwen2/Qwen3 regex is supported")
	case s.Behavior != "Isolated" || s.Invert:
		return fmt.Errorf("pre_tokenizer.pretokenizers[0]: behavior %q invert %v is not supported (want Isolated, false)", s.Behavior, s.Invert)
	case b.Type != "ByteLevel":
		return fmt.Errorf("pre_tokenizer.pretokenizers[1].type %q is not supported (want ByteLevel)", b.Type)
	case b.AddPrefixSpace || b.UseRegex:
		return fmt.Errorf("pre_tokenizer.pretokenizers[1]: ByteLevel add_prefix_space %v use_regex %v is not supported (want false, false)", b.AddPrefixSpace, b.UseRegex)
	}
	return nil
}

func checkDecoder(raw json.RawMessage) error {
	var d struct {
		Type string `json:"type"`
	}
	if !isNull(raw) {
		if err := json.Unmarshal(raw, &d); err != nil {
			return fmt.Errorf("decoder: %v", err)
		}
	}
	if d.Type != "ByteLevel" {
		return fmt.Errorf("decoder: type %q is not supported (want ByteLevel)", d.Type)
	}
	return nil
}
