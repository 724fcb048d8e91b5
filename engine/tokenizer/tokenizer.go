// Package tokenizer is a pure-Go byte-level BPE tokenizer loaded from a Hugging Face
// tokenizer.json, plus the Qwen3 chat template. Its ids are those of the tokenizers library
// (checked against it on multilingual text, code, emoji and special tokens).
//
// Encoding follows the tokenizers library step by step:
//
//  1. Added tokens (special or not) are cut out of the raw text, leftmost-longest, as its
//     Aho-Corasick matcher does; added tokens marked "normalized" are cut out of the normalised
//     pieces instead.
//  2. Each remaining piece is NFC-normalised (golang.org/x/text/unicode/norm).
//  3. The piece is split by the Qwen pre-tokenizer pattern (QwenPattern). The pattern uses a
//     negative lookahead, \s+(?!\S), that Go's regexp lacks; split.go implements exactly this
//     pattern as a hand-written scanner, with Oniguruma's case folding for (?i:'s…). It is
//     checked against a backtracking regex engine (github.com/dlclark/regexp2, test only) on
//     random and fuzzed text, and is about 30 times faster (BenchmarkSplit).
//  4. Each pre-token's bytes are mapped to single-byte tokens (GPT-2's byte alphabet) and merged
//     by BPE: repeatedly the adjacent pair of lowest merge rank, leftmost first. Merge ranks live
//     in an open-addressing hash table from a pair of token ids to (rank, merged id), so no
//     strings are built while merging; very long words use a heap instead of rescanning. Results
//     are cached per pre-token of up to 256 bytes, in a lock-free direct-mapped table of
//     65536 slots.
//
// Decoding maps tokens back to bytes (ByteLevel decoder) and replaces invalid UTF-8 as Rust's
// String::from_utf8_lossy does; Decoder does the same incrementally for streaming, holding back
// incomplete characters. Unknown ids decode to U+FFFD rather than being dropped.
//
// The Qwen3 tokenizer.json is not committed: fetch.sh (make tokenizer) puts it in
// $QWENGO_CACHE/tokenizer/qwen3/tokenizer.json. A Tokenizer is immutable after Load except for its
// word cache, and safe for concurrent use.
package tokenizer

import (
	"hash/maphash"
	"strings"
	"sync/atomic"

	"golang.org/x/text/unicode/norm"
)

// Tokenizer encodes text to token ids and back. Create one with Load or Parse.
type Tokenizer struct {
	vocab        map[string]int // model vocabulary, byte-alphabet strings
	tokens       []string       // id -> stored string (vocabulary entry or added token text)
	addedByText  map[string]int // added token text -> id
	special      map[int]bool   // ids of special added tokens
	rawAdded     matcher        // added tokens matched on the raw text
	normAdded    matcher        // added tokens matched on the normalised text
	nfc          bool
	ignoreMerges bool

	byteRune [256]rune  // byte -> its character in the byte alphabet
	byteID   [256]int32 // byte -> id of its single-byte token
	merges   mergeTable

	decBytes []byte  // concatenated decoded bytes of every id
	decOff   []int32 // id -> decBytes[decOff[id]:decOff[id+1]]

	cache   wordCache
	noCache bool // benchmarks: measure pre-tokenisation and BPE without the word cache
}

// merge is the result of merging a pair: its rank (lower merges first) and the merged token id.
type merge struct{ rank, id int32 }

func pairKey(a, b int32) uint64 { return uint64(uint32(a))<<32 | uint64(uint32(b)) }

// VocabSize is the largest id plus one, added tokens included (151669 for Qwen3; the model's
// embedding is padded to 151936 rows).
func (t *Tokenizer) VocabSize() int { return len(t.tokens) }

// TokenID returns the id of a token given as stored: the text of an added token
// ("<|im_end|>") or a vocabulary entry in the byte alphabet ("Ġthe" for " the").
func (t *Tokenizer) TokenID(s string) (int, bool) {
	if id, ok := t.addedByText[s]; ok {
		return id, true
	}
	id, ok := t.vocab[s]
	return id, ok
}

// Token returns the stored string of id (byte-alphabet form for vocabulary entries, text for
// added tokens), or "" when id is unknown.
func (t *Tokenizer) Token(id int) string {
	if id < 0 || id >= len(t.tokens) {
		return ""
	}
	return t.tokens[id]
}

// IsSpecial reports whether id is a special added token (<|endoftext|>, <|im_start|>, …).
// Non-special added tokens such as <think> report false.
func (t *Tokenizer) IsSpecial(id int) bool { return t.special[id] }

// Encode tokenises text. Added tokens (special and not) written in the text are matched first,
// leftmost-longest, and become their ids; the rest is normalised, pre-tokenised and BPE-merged.
// No BOS or EOS is added. Text that is not valid UTF-8 is encoded byte by byte where invalid.
func (t *Tokenizer) Encode(text string) []int {
	return t.AppendEncode(make([]int, 0, len(text)/3+1), text)
}

// AppendEncode is Encode appending to dst.
func (t *Tokenizer) AppendEncode(dst []int, text string) []int {
	for len(text) > 0 {
		at, n, id := t.rawAdded.find(text)
		if n == 0 {
			return t.appendNormalized(dst, text, true)
		}
		dst = t.appendNormalized(dst, text[:at], true)
		dst = append(dst, id)
		text = text[at+n:]
	}
	return dst
}

// EncodeOrdinary tokenises text without matching any added token: "<|im_end|>" in the text is
// encoded as the characters '<', '|', … . Use it for untrusted text that must not inject control
// tokens.
func (t *Tokenizer) EncodeOrdinary(text string) []int {
	return t.appendNormalized(make([]int, 0, len(text)/3+1), text, false)
}

// appendNormalized normalises a piece between raw added tokens, cuts out normalised added tokens
// (when matchAdded) and encodes the rest.
func (t *Tokenizer) appendNormalized(dst []int, text string, matchAdded bool) []int {
	if text == "" {
		return dst
	}
	if t.nfc {
		text = norm.NFC.String(text)
	}
	for matchAdded && len(text) > 0 {
		at, n, id := t.normAdded.find(text)
		if n == 0 {
			break
		}
		dst = t.appendPieces(dst, text[:at])
		dst = append(dst, id)
		text = text[at+n:]
	}
	return t.appendPieces(dst, text)
}

// appendPieces pre-tokenises normalised text and appends each pre-token's BPE ids.
func (t *Tokenizer) appendPieces(dst []int, text string) []int {
	for i := 0; i < len(text); {
		j := nextPiece(text, i)
		dst = t.appendWord(dst, text[i:j])
		i = j
	}
	return dst
}

// Pretokenize returns the pre-tokens of text as the tokenizer sees them (after NFC, without
// added-token matching); a debugging aid.
func (t *Tokenizer) Pretokenize(text string) []string {
	if t.nfc {
		text = norm.NFC.String(text)
	}
	var out []string
	for i := 0; i < len(text); {
		j := nextPiece(text, i)
		out = append(out, text[i:j])
		i = j
	}
	return out
}

// wordCache maps pre-tokens to their ids: a direct-mapped table of atomic pointers indexed by a
// hash of the word, so lookups take no lock and goroutines encoding in parallel do not contend.
// A colliding word replaces the previous one.
type wordCache struct {
	seed  maphash.Seed
	slots []atomic.Pointer[cacheEntry]
}

type cacheEntry struct {
	word string
	ids  []int
}

const (
	cacheSlots   = 1 << 16
	cacheMaxWord = 256 // longer pre-tokens are not cached (as in the tokenizers library)
)

func newWordCache() wordCache {
	return wordCache{seed: maphash.MakeSeed(), slots: make([]atomic.Pointer[cacheEntry], cacheSlots)}
}

// appendWord appends the ids of one pre-token.
func (t *Tokenizer) appendWord(dst []int, w string) []int {
	if len(w) == 1 {
		return append(dst, int(t.byteID[w[0]]))
	}
	if len(w) > cacheMaxWord || t.noCache {
		return t.bpe(dst, w)
	}
	slot := &t.cache.slots[maphash.String(t.cache.seed, w)&(cacheSlots-1)]
	if e := slot.Load(); e != nil && e.word == w {
		return append(dst, e.ids...)
	}
	n := len(dst)
	dst = t.bpe(dst, w)
	slot.Store(&cacheEntry{strings.Clone(w), append([]int(nil), dst[n:]...)})
	return dst
}
