package tokenizer

import (
	"unicode"
	"unicode/utf8"
)

// split cuts NFC text into pre-tokens exactly as the Qwen pattern (see the package doc) does
// under leftmost-first alternation with backtracking. Each alternative is a function returning
// the length of its match at position i (0 = no match); the first that matches wins.
func split(s string) []string {
	var out []string
	for i := 0; i < len(s); {
		n := matchContraction(s, i)
		if n == 0 {
			n = matchLetters(s, i)
		}
		if n == 0 {
			n = matchNumber(s, i)
		}
		if n == 0 {
			n = matchPunct(s, i)
		}
		if n == 0 {
			n = matchNewlines(s, i)
		}
		if n == 0 {
			n = matchSpacesNotBeforeText(s, i)
		}
		if n == 0 {
			n = matchSpaces(s, i)
		}
		if n == 0 { // unreachable for valid input: every rune is matched by some branch
			_, n = utf8.DecodeRuneInString(s[i:])
		}
		out = append(out, s[i:i+n])
		i += n
	}
	return out
}

func isL(r rune) bool { return unicode.IsLetter(r) }
func isN(r rune) bool { return unicode.IsNumber(r) }

// isS is \s: Unicode White_Space.
func isS(r rune) bool { return unicode.IsSpace(r) }

func at(s string, i int) (rune, int) {
	if i >= len(s) {
		return -1, 0
	}
	return utf8.DecodeRuneInString(s[i:])
}

// (?i:'s|'t|'re|'ve|'m|'ll|'d)
func matchContraction(s string, i int) int {
	if i >= len(s) || s[i] != '\'' {
		return 0
	}
	lower := func(k int) byte {
		if i+k >= len(s) {
			return 0
		}
		c := s[i+k]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		return c
	}
	switch c := lower(1); c {
	case 's', 't', 'm', 'd':
		return 2
	case 'r':
		if lower(2) == 'e' {
			return 3
		}
	case 'v':
		if lower(2) == 'e' {
			return 3
		}
	case 'l':
		if lower(2) == 'l' {
			return 3
		}
	}
	return 0
}

// [^\r\n\p{L}\p{N}]?\p{L}+
func matchLetters(s string, i int) int {
	r, n := at(s, i)
	start := i
	if r != '\r' && r != '\n' && !isL(r) && !isN(r) {
		// optional prefix taken greedily; backtrack to without it if no letter follows
		if r2, _ := at(s, i+n); isL(r2) {
			i += n
		} else {
			return 0
		}
	}
	j := i
	for {
		r, n := at(s, j)
		if n == 0 || !isL(r) {
			break
		}
		j += n
	}
	if j == i {
		return 0
	}
	return j - start
}

// \p{N}
func matchNumber(s string, i int) int {
	if r, n := at(s, i); isN(r) {
		return n
	}
	return 0
}

// ' ?[^\s\p{L}\p{N}]+[\r\n]*'
func matchPunct(s string, i int) int {
	start := i
	isP := func(r rune) bool { return r >= 0 && !isS(r) && !isL(r) && !isN(r) }
	if s[i] == ' ' {
		if r, _ := at(s, i+1); isP(r) {
			i++
		} else {
			return 0
		}
	}
	j := i
	for {
		r, n := at(s, j)
		if n == 0 || !isP(r) {
			break
		}
		j += n
	}
	if j == i {
		return 0
	}
	for j < len(s) && (s[j] == '\r' || s[j] == '\n') {
		j++
	}
	return j - start
}

// \s*[\r\n]+ : within the whitespace run starting at i, up to and including its last CR/LF.
func matchNewlines(s string, i int) int {
	end := 0
	j := i
	for {
		r, n := at(s, j)
		if n == 0 || !isS(r) {
			break
		}
		j += n
		if r == '\r' || r == '\n' {
			end = j
		}
	}
	if end == 0 {
		return 0
	}
	return end - i
}

// \s+(?!\S) : the whitespace run, minus its last character when text follows it.
func matchSpacesNotBeforeText(s string, i int) int {
	j, last := i, 0
	for {
		r, n := at(s, j)
		if n == 0 || !isS(r) {
			break
		}
		j += n
		last = n
	}
	if j == i {
		return 0
	}
	if j == len(s) {
		return j - i
	}
	if j-last > i {
		return j - last - i
	}
	return 0
}

// \s+
func matchSpaces(s string, i int) int {
	j := i
	for {
		r, n := at(s, j)
		if n == 0 || !isS(r) {
			break
		}
		j += n
	}
	return j - i
}
