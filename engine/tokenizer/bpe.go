package tokenizer

import (
	"math"
	"strings"
)

// heapThreshold is the word length (bytes) from which bpe uses a heap instead of rescanning the
// pair ranks after every merge. Rescanning is O(n²) but allocation-free with a tiny constant, and
// measured faster than the heap up to 256 bytes on English and mixed text; the heap, O(n log n),
// keeps pathological inputs (a megabyte without a space) linear-ish. A variable so that tests can
// force either path.
var heapThreshold = 384

const noRank = math.MaxInt32

// bpe appends the BPE ids of one pre-token w: its bytes as single-byte tokens, then repeatedly
// the adjacent pair with the lowest merge rank is merged, leftmost first among equal ranks, until
// no pair has a merge. This is the tokenizers library's merge order.
func (t *Tokenizer) bpe(dst []int, w string) []int {
	if t.ignoreMerges {
		if id, ok := t.vocab[t.byteString(w)]; ok {
			return append(dst, id)
		}
	}
	if len(w) >= heapThreshold {
		return t.bpeHeap(dst, w)
	}
	var symBuf, rankBuf, idBuf [64]int32
	n := len(w)
	sym, rank, mid := symBuf[:0], rankBuf[:0], idBuf[:0]
	if n > len(symBuf) {
		sym, rank, mid = make([]int32, 0, n), make([]int32, 0, n), make([]int32, 0, n)
	}
	for i := 0; i < n; i++ {
		sym = append(sym, t.byteID[w[i]])
	}
	rank, mid = rank[:n], mid[:n]
	for i := 0; i+1 < n; i++ {
		rank[i], mid[i] = t.pair(sym[i], sym[i+1])
	}
	for n > 1 {
		best, bestRank := -1, int32(noRank)
		for i, r := range rank[:n-1] {
			if r < bestRank {
				best, bestRank = i, r
			}
		}
		if best < 0 {
			break
		}
		sym[best] = mid[best]
		copy(sym[best+1:n], sym[best+2:n])
		if best+2 < n-1 { // shift the pair entries right of the merged pair
			copy(rank[best+1:n-2], rank[best+2:n-1])
			copy(mid[best+1:n-2], mid[best+2:n-1])
		}
		n--
		if best > 0 {
			rank[best-1], mid[best-1] = t.pair(sym[best-1], sym[best])
		}
		if best+1 < n {
			rank[best], mid[best] = t.pair(sym[best], sym[best+1])
		}
	}
	for _, s := range sym[:n] {
		dst = append(dst, int(s))
	}
	return dst
}

// pair returns the merge rank and merged id of (a, b), or noRank.
func (t *Tokenizer) pair(a, b int32) (int32, int32) {
	if m, ok := t.merges.get(a, b); ok {
		return m.rank, m.id
	}
	return noRank, 0
}

// byteString is w in the byte alphabet (the form of vocabulary entries).
func (t *Tokenizer) byteString(w string) string {
	var b strings.Builder
	for i := 0; i < len(w); i++ {
		b.WriteRune(t.byteRune[w[i]])
	}
	return b.String()
}

// bpeHeap is bpe for long words: symbols in a linked list, candidate merges in a min-heap on
// (rank, position) with lazy invalidation.
func (t *Tokenizer) bpeHeap(dst []int, w string) []int {
	n := len(w)
	sym := make([]int32, n)
	next := make([]int32, n) // -1: end
	prev := make([]int32, n) // -1: start
	alive := make([]bool, n)
	for i := range n {
		sym[i] = t.byteID[w[i]]
		next[i], prev[i] = int32(i+1), int32(i-1)
		alive[i] = true
	}
	next[n-1] = -1
	h := pairHeap{}
	push := func(l int32) {
		r := next[l]
		if r < 0 {
			return
		}
		if rk, id := t.pair(sym[l], sym[r]); rk != noRank {
			h.push(cand{rk, l, r, sym[l], sym[r], id})
		}
	}
	for i := range n - 1 {
		push(int32(i))
	}
	for len(h) > 0 {
		c := h.pop()
		if !alive[c.l] || next[c.l] != c.r || sym[c.l] != c.a || sym[c.r] != c.b {
			continue // stale: one side has merged since
		}
		sym[c.l] = c.id
		alive[c.r] = false
		next[c.l] = next[c.r]
		if next[c.r] >= 0 {
			prev[next[c.r]] = c.l
		}
		if p := prev[c.l]; p >= 0 {
			push(p)
		}
		push(c.l)
	}
	for i := int32(0); i >= 0; i = next[i] {
		dst = append(dst, int(sym[i]))
	}
	return dst
}

// cand is a candidate merge of the symbols at l and r (ids a, b at push time) into id.
type cand struct {
	rank, l, r, a, b, id int32
}

func (c cand) less(d cand) bool { return c.rank < d.rank || (c.rank == d.rank && c.l < d.l) }

// pairHeap is a binary min-heap of candidates (container/heap without the interface calls).
type pairHeap []cand

func (h *pairHeap) push(c cand) {
	*h = append(*h, c)
	s := *h
	for i := len(s) - 1; i > 0; {
		p := (i - 1) / 2
		if !s[i].less(s[p]) {
			break
		}
		s[i], s[p] = s[p], s[i]
		i = p
	}
}

func (h *pairHeap) pop() cand {
	s := *h
	top := s[0]
	last := len(s) - 1
	s[0] = s[last]
	s = s[:last]
	for i := 0; ; {
		l, r, m := 2*i+1, 2*i+2, i
		if l < len(s) && s[l].less(s[m]) {
			m = l
		}
		if r < len(s) && s[r].less(s[m]) {
			m = r
		}
		if m == i {
			break
		}
		s[i], s[m] = s[m], s[i]
		i = m
	}
	*h = s
	return top
}
