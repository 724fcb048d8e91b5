package tokenizer

import (
	"unicode"
	"unicode/utf8"
)

// The Qwen pre-tokenizer pattern, alternatives tried in order at each position (leftmost-first,
// with backtracking), as the tokenizers library runs it with Oniguruma:
//
//	1 (?i:'s|'t|'re|'ve|'m|'ll|'d)
//	2 [^\r\n\p{L}\p{N}]?\p{L}+
//	3 \p{N}
//	4  ?[^\s\p{L}\p{N}]+[\r\n]*
//	5 \s*[\r\n]+
//	6 \s+(?!\S)
//	7 \s+
//
// nextPiece decodes the first character once and goes to the only alternatives that can match it.
// What backtracking does to each alternative, worked out once:
//   - 2: the optional prefix is taken when a letter follows it; otherwise there is no match (the
//     character was not a letter, or it would not qualify as prefix).
//   - 4: the optional space is taken only when a non-space, non-letter, non-digit follows.
//   - 5: \s* backtracks to the last CR/LF of the whitespace run: the match ends just after it.
//   - 6: \s+ backtracks one character when the run is followed by non-space: the run minus its
//     last character, which then starts the next piece (" word"); at the end of text, the run.
//   - 7: the one-character run that 6 could not shorten.
//
// \s is White_Space (unicode.IsSpace), \p{L} and \p{N} are Go's Unicode categories. Under (?i)
// Oniguruma folds U+017F (ſ, long s) to 's', so "'ſ" is a contraction; no other character folds
// to s, t, r, e, v, m, l or d.

// Character classes of the pattern.
const (
	cOther   = iota // not \s, \p{L}, \p{N}: punctuation, symbols, marks, invalid bytes
	cLetter         // \p{L}
	cNumber         // \p{N}
	cSpace          // \s except CR and LF
	cNewline        // CR or LF
	cEnd            // past the end of the text
)

var asciiClass = func() (c [128]uint8) {
	for b := range 128 {
		r := rune(b)
		switch {
		case r == '\r' || r == '\n':
			c[b] = cNewline
		case unicode.IsSpace(r):
			c[b] = cSpace
		case unicode.IsLetter(r):
			c[b] = cLetter
		case unicode.IsNumber(r):
			c[b] = cNumber
		default:
			c[b] = cOther
		}
	}
	return
}()

// class decodes the character at i: rune, byte length, class.
func class(s string, i int) (rune, int, uint8) {
	if i >= len(s) {
		return -1, 0, cEnd
	}
	if c := s[i]; c < utf8.RuneSelf {
		return rune(c), 1, asciiClass[c]
	}
	r, n := utf8.DecodeRuneInString(s[i:])
	switch {
	case unicode.IsLetter(r):
		return r, n, cLetter
	case unicode.IsNumber(r):
		return r, n, cNumber
	case unicode.IsSpace(r):
		return r, n, cSpace
	}
	return r, n, cOther
}

// nextPiece returns the end of the pre-token that starts at i (i < len(s)).
func nextPiece(s string, i int) int {
	r, n, c := class(s, i)
	switch c {
	case cLetter: // 2 without prefix
		return runEnd(s, i+n, cLetter)
	case cNumber: // 3
		return i + n
	case cOther:
		if r == '\'' {
			if k := contraction(s, i+1); k > 0 { // 1
				return i + 1 + k
			}
		}
		if _, n2, c2 := class(s, i+n); c2 == cLetter { // 2 with prefix
			return runEnd(s, i+n+n2, cLetter)
		}
		return newlinesEnd(s, runEnd(s, i+n, cOther)) // 4 without space
	case cSpace:
		_, n2, c2 := class(s, i+n)
		if c2 == cLetter { // 2 with a whitespace prefix
			return runEnd(s, i+n+n2, cLetter)
		}
		if r == ' ' && c2 == cOther { // 4 with space
			return newlinesEnd(s, runEnd(s, i+1+n2, cOther))
		}
	}
	// 5, 6, 7 on the whitespace run starting at i.
	j, lastStart, afterNL := i, i, -1
	for {
		r, n, c := class(s, j)
		if c != cSpace && c != cNewline {
			break
		}
		lastStart = j
		j += n
		if r == '\r' || r == '\n' {
			afterNL = j
		}
	}
	switch {
	case afterNL > 0: // 5
		return afterNL
	case j == len(s) || lastStart == i: // 6 at the end of text, or 7
		return j
	default: // 6
		return lastStart
	}
}

// runEnd returns the end of the run of characters of class c starting at j.
func runEnd(s string, j int, c uint8) int {
	for j < len(s) {
		_, n, cj := class(s, j)
		if cj != c {
			break
		}
		j += n
	}
	return j
}

// newlinesEnd skips [\r\n]* from j.
func newlinesEnd(s string, j int) int {
	for j < len(s) && (s[j] == '\r' || s[j] == '\n') {
		j++
	}
	return j
}

// contraction returns the length of the contraction suffix (s, t, re, ve, m, ll, d, any case,
// ſ for s) starting at j, just after an apostrophe, or 0.
func contraction(s string, j int) int {
	if j >= len(s) {
		return 0
	}
	lower := func(k int) byte {
		if k >= len(s) {
			return 0
		}
		return s[k] | 0x20 // ASCII letters only are compared; other bytes never equal a letter here
	}
	switch lower(j) {
	case 's', 't', 'm', 'd':
		return 1
	case 'r', 'v':
		if lower(j+1) == 'e' {
			return 2
		}
	case 'l':
		if lower(j+1) == 'l' {
			return 2
		}
	}
	if s[j] == 0xC5 && j+1 < len(s) && s[j+1] == 0xBF { // U+017F ſ
		return 2
	}
	return 0
}
