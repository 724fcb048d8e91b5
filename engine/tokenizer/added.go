package tokenizer

import (
	"sort"
	"strings"
)

// addedToken is an added token's text as matched and its id.
type addedToken struct {
	text string
	id   int
}

// matcher finds added tokens in text with the tokenizers library's semantics (Aho-Corasick,
// leftmost-longest): the match that starts first wins, and among those the longest. Candidate
// positions are found with one byte search over the tokens' first bytes (for Qwen, every added
// token starts with '<', so this is a single vectorised IndexByte), then the candidates for that
// first byte are tried longest first.
type matcher struct {
	byByte [256][]addedToken  // first byte -> tokens, longest first
	index  func(s string) int // position of the next possible first byte, -1 if none
}

func newMatcher(tokens []addedToken) matcher {
	var m matcher
	for _, a := range tokens {
		m.byByte[a.text[0]] = append(m.byByte[a.text[0]], a)
	}
	firsts := make([]byte, 0, 8)
	for b := range 256 {
		list := m.byByte[b]
		if len(list) == 0 {
			continue
		}
		firsts = append(firsts, byte(b))
		sort.SliceStable(list, func(i, j int) bool { return len(list[i].text) > len(list[j].text) })
	}
	switch len(firsts) {
	case 0:
		m.index = func(string) int { return -1 }
	case 1:
		c := firsts[0]
		m.index = func(s string) int { return strings.IndexByte(s, c) }
	default:
		var set [256]bool
		for _, c := range firsts {
			set[c] = true
		}
		m.index = func(s string) int {
			for i := 0; i < len(s); i++ {
				if set[s[i]] {
					return i
				}
			}
			return -1
		}
	}
	return m
}

// find returns the position, length and id of the first added token in s (n == 0: none).
func (m *matcher) find(s string) (at, n, id int) {
	if m.index == nil {
		return 0, 0, 0
	}
	for off := 0; off < len(s); {
		i := m.index(s[off:])
		if i < 0 {
			return 0, 0, 0
		}
		p := off + i
		for _, a := range m.byByte[s[p]] {
			if strings.HasPrefix(s[p:], a.text) {
				return p, len(a.text), a.id
			}
		}
		off = p + 1
	}
	return 0, 0, 0
}
