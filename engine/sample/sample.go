// Package sample picks the next token from a row of logits.
//
// The order of operations is Hugging Face generate's: repetition/frequency/presence penalties,
// temperature, top-k, top-p, min-p, then a draw. Top-p always keeps the most likely token (the
// seed project's top-p could zero the whole distribution). NaN logits are never chosen, and a row
// with nothing finite falls back to argmax rather than failing. Candidates are found by partial
// selection, not by sorting all 151,936 logits.
package sample

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
)

// Params are the sampling settings.
type Params struct {
	Temperature       float64 // 0 = greedy
	TopK              int     // 0 = off
	TopP              float64 // 0 or 1 = off
	MinP              float64 // 0 = off
	RepetitionPenalty float64 // 1 (or 0) = off; HF semantics
	FrequencyPenalty  float64 // OpenAI semantics: minus count × penalty
	PresencePenalty   float64 // minus penalty once a token has appeared
	Seed              uint64
}

// Validate checks every field and names the first bad one.
func (p Params) Validate() error {
	switch {
	case p.Temperature < 0 || math.IsNaN(p.Temperature):
		return fmt.Errorf("sample: temperature %v must be >= 0", p.Temperature)
	case p.TopK < 0:
		return fmt.Errorf("sample: top_k %d must be >= 0", p.TopK)
	case p.TopP < 0 || p.TopP > 1 || math.IsNaN(p.TopP):
		return fmt.Errorf("sample: top_p %v must be in [0, 1]", p.TopP)
	case p.MinP < 0 || p.MinP > 1 || math.IsNaN(p.MinP):
		return fmt.Errorf("sample: min_p %v must be in [0, 1]", p.MinP)
	case p.RepetitionPenalty < 0 || math.IsNaN(p.RepetitionPenalty):
		return fmt.Errorf("sample: repetition_penalty %v must be > 0 (1 = off)", p.RepetitionPenalty)
	}
	return nil
}

// Greedy reports whether the params pick the argmax.
func (p Params) Greedy() bool { return p.Temperature == 0 || p.TopK == 1 }

// Sampler draws tokens with fixed params and its own seeded RNG.
type Sampler struct {
	p      Params
	rng    *rand.Rand
	work   []float32
	idx    []int
	counts map[int]int
}

// New returns a sampler.
func New(p Params) (*Sampler, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return &Sampler{p: p, rng: rand.New(rand.NewPCG(p.Seed, 0x5eed)), counts: map[int]int{}}, nil
}

// Params returns the sampler's settings.
func (s *Sampler) Params() Params { return s.p }

// Reset reseeds the RNG.
func (s *Sampler) Reset(seed uint64) {
	s.p.Seed = seed
	s.rng = rand.New(rand.NewPCG(seed, 0x5eed))
}

// Argmax returns the index of the largest non-NaN logit (0 when there is none).
func Argmax(logits []float32) int {
	best := -1
	for i, x := range logits {
		if x == x && (best < 0 || x > logits[best]) {
			best = i
		}
	}
	return max(best, 0)
}

// Sample picks a token. history holds the ids seen so far (prompt and generated), used by the
// penalties; logits are not modified.
func (s *Sampler) Sample(logits []float32, history []int) int {
	p := s.p
	penalise := (p.RepetitionPenalty != 0 && p.RepetitionPenalty != 1) || p.FrequencyPenalty != 0 || p.PresencePenalty != 0
	l := logits
	if penalise {
		s.work = append(s.work[:0], logits...)
		l = s.work
		clear(s.counts)
		for _, id := range history {
			if id >= 0 && id < len(l) {
				s.counts[id]++
			}
		}
		for id, n := range s.counts {
			x := l[id]
			if r := p.RepetitionPenalty; r != 0 && r != 1 {
				if x > 0 {
					x /= float32(r)
				} else {
					x *= float32(r)
				}
			}
			x -= float32(p.FrequencyPenalty*float64(n) + p.PresencePenalty)
			l[id] = x
		}
	}
	if p.Greedy() {
		return Argmax(l)
	}
	// Candidates: the top-k (or, without top-k, every finite logit above a cut that cannot
	// matter: exp(-30) relative to the max).
	maxv := float32(math.Inf(-1))
	for _, x := range l {
		if x > maxv {
			maxv = x
		}
	}
	if math.IsInf(float64(maxv), -1) || maxv != maxv {
		return Argmax(l)
	}
	temp := float32(p.Temperature)
	cut := maxv - 30*temp
	s.idx = s.idx[:0]
	for i, x := range l {
		if x >= cut {
			s.idx = append(s.idx, i)
		}
	}
	// Only the head of the distribution is ever sorted: top-k keeps k, and top-p needs the
	// smallest sorted prefix that reaches its mass, found by growing the prefix.
	var z float64 // normaliser over all candidates
	for _, id := range s.idx {
		z += math.Exp(float64((l[id] - maxv) / temp))
	}
	m := len(s.idx)
	if p.TopK > 0 {
		m = min(m, p.TopK)
	}
	want := m
	if p.TopP > 0 && p.TopP < 1 {
		want = min(m, 64)
	}
	var head []int
	var probs []float64
	for {
		head = topM(l, s.idx, want)
		probs = probs[:0]
		acc := 0.0
		for _, id := range head {
			pr := math.Exp(float64((l[id] - maxv) / temp))
			probs = append(probs, pr)
			acc += pr
		}
		if want >= m || !(p.TopP > 0 && p.TopP < 1) || acc/z >= p.TopP {
			break
		}
		want = min(m, want*8)
	}
	sum := z
	if p.TopK > 0 && m < len(s.idx) {
		sum = 0
		for _, pr := range probs {
			sum += pr
		}
	}
	n := len(probs)
	if p.TopP > 0 && p.TopP < 1 {
		acc := 0.0
		for i := range probs {
			acc += probs[i] / sum
			if acc >= p.TopP {
				n = i + 1 // keeps at least the top token
				break
			}
		}
	}
	if p.MinP > 0 {
		thresh := p.MinP * probs[0]
		for i := 1; i < n; i++ {
			if probs[i] < thresh {
				n = i
				break
			}
		}
	}
	total := 0.0
	for i := 0; i < n; i++ {
		total += probs[i]
	}
	u := s.rng.Float64() * total
	for i := 0; i < n; i++ {
		u -= probs[i]
		if u < 0 {
			return head[i]
		}
	}
	return head[n-1]
}

// topM returns the m candidates with the largest logits, sorted descending, using a bounded
// min-heap: O(len(cand) log m).
func topM(l []float32, cand []int, m int) []int {
	if m >= len(cand) {
		out := append([]int(nil), cand...)
		sort.Slice(out, func(a, b int) bool { return l[out[a]] > l[out[b]] })
		return out
	}
	h := make([]int, 0, m)
	less := func(a, b int) bool { return l[h[a]] < l[h[b]] }
	down := func(i int) {
		for {
			c := 2*i + 1
			if c >= len(h) {
				return
			}
			if c+1 < len(h) && less(c+1, c) {
				c++
			}
			if !less(c, i) {
				return
			}
			h[i], h[c] = h[c], h[i]
			i = c
		}
	}
	for _, id := range cand {
		if len(h) < m {
			h = append(h, id)
			for i := len(h) - 1; i > 0 && less(i, (i-1)/2); i = (i - 1) / 2 {
				h[i], h[(i-1)/2] = h[(i-1)/2], h[i]
			}
		} else if l[id] > l[h[0]] {
			h[0] = id
			down(0)
		}
	}
	sort.Slice(h, func(a, b int) bool { return l[h[a]] > l[h[b]] })
	return h
}
