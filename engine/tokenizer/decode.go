package tokenizer

import "unicode/utf8"

// replacement is U+FFFD, written for unknown ids and for invalid UTF-8.
const replacement = "\uFFFD"

// Decode turns ids into text, as the tokenizers library's decode(ids, skip_special_tokens=False)
// does: added tokens become their text, byte tokens their bytes, and invalid UTF-8 in the result
// is replaced by U+FFFD per maximal invalid subsequence (Rust's String::from_utf8_lossy).
// Unknown ids (negative, too large, or a hole in the vocabulary) decode to U+FFFD; the tokenizers
// library drops them silently instead.
func (t *Tokenizer) Decode(ids []int) string {
	var buf [256]byte
	b := buf[:0]
	for _, id := range ids {
		b = t.appendToken(b, id)
	}
	if utf8.Valid(b) {
		return string(b)
	}
	return string(appendLossy(nil, b))
}

// DecodeToken returns the raw bytes that id stands for (possibly part of a UTF-8 character), or
// U+FFFD for an unknown id.
func (t *Tokenizer) DecodeToken(id int) []byte { return t.appendToken(nil, id) }

func (t *Tokenizer) appendToken(b []byte, id int) []byte {
	if id < 0 || id >= len(t.tokens) || t.tokens[id] == "" {
		return append(b, replacement...)
	}
	return append(b, t.decBytes[t.decOff[id]:t.decOff[id+1]]...)
}

// appendLossy appends src to dst with each maximal invalid UTF-8 subsequence replaced by U+FFFD
// (the Unicode "substitution of maximal subparts" practice, as Rust and Python do).
func appendLossy(dst, src []byte) []byte {
	for i := 0; i < len(src); {
		if c := src[i]; c < utf8.RuneSelf {
			dst = append(dst, c)
			i++
			continue
		}
		if r, n := utf8.DecodeRune(src[i:]); r != utf8.RuneError || n > 1 {
			dst = append(dst, src[i:i+n]...)
			i += n
			continue
		}
		dst = append(dst, replacement...)
		i += invalidLen(src[i:])
	}
	return dst
}

// seqInfo returns how many continuation bytes a lead byte needs and the allowed range of the
// first one (UTF-8 excludes overlongs, surrogates and code points above U+10FFFF); need 0 means
// c cannot start a sequence.
func seqInfo(c byte) (need int, lo, hi byte) {
	switch {
	case c >= 0xC2 && c <= 0xDF:
		return 1, 0x80, 0xBF
	case c == 0xE0:
		return 2, 0xA0, 0xBF
	case c == 0xED:
		return 2, 0x80, 0x9F
	case c >= 0xE1 && c <= 0xEF:
		return 2, 0x80, 0xBF
	case c == 0xF0:
		return 3, 0x90, 0xBF
	case c >= 0xF1 && c <= 0xF3:
		return 3, 0x80, 0xBF
	case c == 0xF4:
		return 3, 0x80, 0x8F
	}
	return 0, 0, 0
}

// prefixLen returns how many bytes at the start of b are a (possibly complete) prefix of a valid
// UTF-8 sequence led by b[0], and how long that sequence would be.
func prefixLen(b []byte) (k, full int) {
	need, lo, hi := seqInfo(b[0])
	if need == 0 {
		return 1, 1
	}
	k = 1
	if k < len(b) && b[k] >= lo && b[k] <= hi {
		k++
		for k < len(b) && k <= need && b[k] >= 0x80 && b[k] <= 0xBF {
			k++
		}
	}
	return k, need + 1
}

// invalidLen is the length of the maximal invalid subsequence at the start of b (b does not
// start with a valid character).
func invalidLen(b []byte) int {
	k, _ := prefixLen(b)
	return k
}

// incompleteTail returns where a trailing incomplete-but-valid UTF-8 prefix starts in b, or
// len(b) if b does not end inside a character that more bytes could complete.
func incompleteTail(b []byte) int {
	for k := 1; k <= 3 && k <= len(b); k++ {
		p := len(b) - k
		if b[p]&0xC0 == 0x80 {
			continue // continuation byte: look further back for the lead
		}
		if n, full := prefixLen(b[p:]); n == k && k < full {
			return p
		}
		return len(b)
	}
	return len(b)
}

// Decoder decodes a stream of ids incrementally (for printing tokens as they are generated): Push
// returns only complete UTF-8 and holds back the bytes of a character split across tokens. The
// concatenation of everything Push and Flush return equals Decode of all the ids.
type Decoder struct {
	t       *Tokenizer
	pending []byte
}

// NewDecoder starts an incremental decoder.
func (t *Tokenizer) NewDecoder() *Decoder { return &Decoder{t: t} }

// Push adds one id and returns the text it completes (possibly "").
func (d *Decoder) Push(id int) string {
	d.pending = d.t.appendToken(d.pending, id)
	cut := incompleteTail(d.pending)
	if cut == 0 {
		return ""
	}
	var out string
	if utf8.Valid(d.pending[:cut]) {
		out = string(d.pending[:cut])
	} else {
		out = string(appendLossy(nil, d.pending[:cut]))
	}
	d.pending = append(d.pending[:0], d.pending[cut:]...)
	return out
}

// Flush returns what is held back (an incomplete character becomes U+FFFD) and resets the decoder.
func (d *Decoder) Flush() string {
	out := string(appendLossy(nil, d.pending))
	d.pending = d.pending[:0]
	return out
}

// Pending reports how many bytes are held back waiting for the rest of a character.
func (d *Decoder) Pending() int { return len(d.pending) }
