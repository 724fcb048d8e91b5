// Package sample picks the next token from a row of logits.
//
// The pipeline follows Hugging Face transformers' generate: penalties (repetition, then the
// OpenAI-style frequency and presence penalties) → temperature → top-k → top-p → min-p →
// one draw from what is left. Temperature 0 is greedy decoding (penalties still apply).
//
// Design points:
//   - The caller's logits are never modified: with a penalty on, the row is copied into the
//     Sampler's buffer first. Every buffer is allocated by New (or grown once if a longer row
//     arrives), so Sample does not allocate in steady state.
//   - NaN logits count as -Inf and are never selected. A row with nothing above -Inf gives
//     token 0; a +Inf logit is taken outright. Sample never panics.
//   - top-p always keeps the most likely token (the seed project's top-p could remove every
//     token): kept tokens are the shortest most-likely-first prefix whose mass reaches p.
//   - top-k keeps exactly k tokens (ties at the k-th value go to the lower id; transformers
//     keeps every token tied with the k-th).
//   - Nothing sorts the vocabulary: top-k uses a size-k heap; top-p sums the row once (also
//     collecting the tokens with probability >= 1/256 of the top one), then finds its prefix
//     by a quickselect on mass among candidates above a threshold that it lowers only when
//     their mass falls short of p; min-p is a threshold on the logits; plain temperature
//     draws by inverse CDF over per-256-token block sums. exp is an inlined float32
//     table-and-polynomial version (relative error < 2e-7), several times faster than
//     math.Exp; tokens below e^-87 of the top one (float32 underflow) get probability 0.
//   - Random numbers come from math/rand/v2's PCG seeded with Params.Seed: the same seed, the
//     same rows and the same histories give the same tokens. Exactly one number is drawn per
//     sampled (non-greedy) call.
package sample

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
)

// Params are the sampling settings. The zero value is greedy decoding without penalties.
type Params struct {
	// Temperature divides the logits; 0 means greedy (argmax).
	Temperature float64
	// TopK keeps the K most likely tokens; 0 = off.
	TopK int
	// TopP keeps the smallest most-likely-first set of tokens whose probability reaches TopP
	// (the most likely token is always kept); 0 or 1 = off.
	TopP float64
	// MinP drops tokens whose probability is below MinP times the top token's; 0 = off.
	MinP float64
	// RepetitionPenalty (HF semantics) divides positive logits and multiplies negative
	// logits of every token present in the history; 0 or 1 = off.
	RepetitionPenalty float64
	// FrequencyPenalty (OpenAI semantics) subtracts count×FrequencyPenalty from the logit of
	// each token that occurs count times in the history; 0 = off.
	FrequencyPenalty float64
	// PresencePenalty (OpenAI semantics) subtracts PresencePenalty from the logit of each
	// token present in the history; 0 = off.
	PresencePenalty float64
	// Seed seeds the random generator.
	Seed int64
}

// Validate reports the first invalid field, naming it and its value.
func (p Params) Validate() error {
	finite := func(name string, v float64) error {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Errorf("sample: %s = %v: must be a finite number", name, v)
		}
		return nil
	}
	for _, f := range []struct {
		name string
		v    float64
	}{{"Temperature", p.Temperature}, {"TopP", p.TopP}, {"MinP", p.MinP},
		{"RepetitionPenalty", p.RepetitionPenalty}, {"FrequencyPenalty", p.FrequencyPenalty},
		{"PresencePenalty", p.PresencePenalty}} {
		if err := finite(f.name, f.v); err != nil {
			return err
		}
	}
	switch {
	case p.Temperature < 0:
		return fmt.Errorf("sample: Temperature = %v: must be >= 0 (0 = greedy)", p.Temperature)
	case p.TopK < 0:
		return fmt.Errorf("sample: TopK = %d: must be >= 0 (0 = off)", p.TopK)
	case p.TopP < 0 || p.TopP > 1:
		return fmt.Errorf("sample: TopP = %v: must be in [0, 1] (0 or 1 = off)", p.TopP)
	case p.MinP < 0 || p.MinP > 1:
		return fmt.Errorf("sample: MinP = %v: must be in [0, 1] (0 = off)", p.MinP)
	case p.RepetitionPenalty < 0:
		return fmt.Errorf("sample: RepetitionPenalty = %v: must be > 0 (0 or 1 = off)", p.RepetitionPenalty)
	}
	return nil
}

// Greedy reports whether p selects the argmax (Temperature 0).
func (p Params) Greedy() bool { return p.Temperature == 0 }

// Penalties reports whether p penalises tokens of the history (so the choice depends on more
// than the logits).
func (p Params) Penalties() bool {
	rp := p.RepetitionPenalty
	return (rp != 0 && rp != 1) || p.FrequencyPenalty != 0 || p.PresencePenalty != 0
}

type cand struct {
	e  float32 // exp((l - max) / T), in (0, 1]
	id int32
}

// blockSize is the number of logits per partial sum in the whole-row draw.
const blockSize = 256

// Sampler draws tokens with fixed Params. It is not safe for concurrent use.
type Sampler struct {
	p       Params
	rng     *rand.Rand
	pcg     *rand.PCG
	size    int       // the row length the buffers fit
	buf     []float32 // penalised copy of the row (only when a penalty is on)
	blocks  []float64 // per-block sums of exp((l-max)/T)
	counts  []int32   // occurrences in history, zeroed again after each call
	touched []int32
	heap    []int32
	cands   []cand
}

const pcgStream = 0x9e3779b97f4a7c15

// New validates p and returns a Sampler for rows of vocab logits (longer rows still work,
// at the cost of one allocation to grow the buffers).
func New(p Params, vocab int) (*Sampler, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if vocab <= 0 {
		return nil, fmt.Errorf("sample: vocab = %d: must be positive", vocab)
	}
	pcg := rand.NewPCG(uint64(p.Seed), pcgStream)
	s := &Sampler{p: p, pcg: pcg, rng: rand.New(pcg)}
	s.grow(vocab)
	return s, nil
}

// Params returns the sampler's settings.
func (s *Sampler) Params() Params { return s.p }

// Reset re-seeds the random generator, as if New had been called with this seed.
func (s *Sampler) Reset(seed int64) {
	s.p.Seed = seed
	s.pcg.Seed(uint64(seed), pcgStream)
}

func (s *Sampler) penalties() bool { return s.p.Penalties() }

func (s *Sampler) grow(n int) {
	if s.size >= n {
		return
	}
	s.size = n
	if s.penalties() {
		s.buf = make([]float32, n)
		s.counts = make([]int32, n)
	}
	s.blocks = make([]float64, (n+blockSize-1)/blockSize)
	k := min(n, 1024)
	if s.p.TopK > 0 {
		k = min(n, max(k, s.p.TopK))
	}
	s.heap = make([]int32, 0, k)
	s.cands = make([]cand, 0, k)
}

// Argmax returns the index of the largest logit, the first one on ties. NaN is never
// chosen; a row without a number above -Inf (or an empty row) gives 0.
func Argmax(logits []float32) int {
	best, bi := float32(math.Inf(-1)), 0
	for i, v := range logits {
		if v > best { // false for NaN
			best, bi = v, i
		}
	}
	return bi
}

// Sample returns the next token id for a row of logits, which it does not modify. history
// holds the ids seen so far (prompt and generated) and is used only by the penalties; ids
// outside the row are ignored.
func (s *Sampler) Sample(logits []float32, history []int) int {
	n := len(logits)
	if n == 0 {
		return 0
	}
	s.grow(n)
	row := logits
	if s.penalties() {
		row = s.buf[:n]
		copy(row, logits)
		s.penalise(row, history)
	}
	if s.p.Temperature == 0 {
		return Argmax(row)
	}
	return s.draw(row, s.rng.Float64()) // always one draw per sampled call
}

// draw picks from the penalised row with the uniform number u in [0, 1).
func (s *Sampler) draw(row []float32, u float64) int {
	top := Argmax(row)
	m := row[top]
	switch {
	case !(m > float32(math.Inf(-1))): // nothing above -Inf (row[0] may be NaN)
		return 0
	case math.IsInf(float64(m), 1):
		return top
	}
	invT := float32(1 / s.p.Temperature)
	cutK := s.p.TopK > 0 && s.p.TopK < len(row)
	cutP := s.p.TopP > 0 && s.p.TopP < 1
	if !cutK && !cutP && s.p.MinP == 0 {
		return s.drawRow(row, m, invT, u)
	}
	return drawList(s.keep(row, m, invT), u)
}

// keep applies top-k, top-p and min-p (temperature 1/invT, row maximum m) and returns the
// kept candidates, in no promised order, with their relative probabilities e.
func (s *Sampler) keep(row []float32, m, invT float32) []cand {
	topP := s.p.TopP
	if topP >= 1 {
		topP = 0
	}
	minP := float32(s.p.MinP)

	if k := s.p.TopK; k > 0 && k < len(row) {
		cands := s.topK(row, k)
		kept := cands[:0]
		z := 0.0
		for _, c := range cands {
			e := expRel(row[c.id], m, invT)
			z += float64(e)
			if e >= minP && e > 0 {
				kept = append(kept, cand{e, c.id})
			}
		}
		if topP > 0 {
			kept = kept[:prefixByMass(kept, topP*z)]
		}
		return kept
	}
	if topP == 0 { // min-p alone: a threshold on the logits, no sum over the row
		return s.collect(row, m, invT, minP, minP)
	}
	// The sum over the row also collects the tokens with e >= 1/256 (while there are few):
	// they include every token of probability >= 1/256, the usual top-p set.
	z, cands := s.sumBlocks(row, m, invT, 1.0/256)
	// Keep the tokens above a probability threshold, lowering it until their mass reaches
	// topP (or min-p bounds the kept set anyway), then find the top-p prefix among them.
	for _, tau := range [...]float64{1.0 / 256, 1.0 / 65536, 0} {
		thr := float32(tau * z)
		minBound := minP >= thr
		if minBound {
			thr = minP
		}
		if cands != nil && tau == 1.0/256 {
			kept := cands[:0]
			for _, c := range cands {
				if c.e >= thr {
					kept = append(kept, c)
				}
			}
			cands = kept
		} else {
			cands = s.collect(row, m, invT, thr, minP)
		}
		mass := 0.0
		for _, c := range cands {
			mass += float64(c.e)
		}
		if mass >= topP*z || minBound || tau == 0 {
			break
		}
	}
	return cands[:prefixByMass(cands, topP*z)]
}

// collect returns the tokens whose relative probability e is at least thr (thr > 0) or
// positive (thr == 0), and at least minP.
func (s *Sampler) collect(row []float32, m, invT, thr, minP float32) []cand {
	// e >= thr  <=>  l >= m + T ln(thr); the logit bound is lowered a little so that rounding
	// cannot drop a token that the exact test on e below keeps.
	lo := float32(math.Inf(-1))
	if thr > 0 {
		t := float64(m) + math.Log(float64(thr))/float64(invT)
		lo = float32(t - 1e-4*(1+math.Abs(t)))
	}
	cands := s.cands[:0]
	for i, v := range row {
		if v >= lo { // false for NaN
			if e := expRel(v, m, invT); e > 0 && e >= thr && e >= minP {
				cands = append(cands, cand{e, int32(i)})
			}
		}
	}
	s.cands = cands
	return cands
}

// sumBlocks fills s.blocks with the per-block sums of e = exp((l-m)*invT) and returns their
// total. With collectThr > 0 it also returns the tokens with e >= collectThr, or nil when
// there are more than maxCollect of them.
func (s *Sampler) sumBlocks(row []float32, m, invT, collectThr float32) (float64, []cand) {
	const maxCollect = 4096
	cands := s.cands[:0]
	collecting := collectThr > 0
	z := 0.0
	for b := 0; b*blockSize < len(row); b++ {
		blk := row[b*blockSize : min(len(row), (b+1)*blockSize)]
		var s0, s1 float32 // two chains, so that the adds overlap
		for i := 0; i < len(blk); i += 2 {
			var e0, e1 float32
			if x := (blk[i] - m) * invT; x > -87 { // false for NaN, -Inf and underflow
				e0 = exp32(x)
			}
			if i+1 < len(blk) {
				if x := (blk[i+1] - m) * invT; x > -87 {
					e1 = exp32(x)
				}
			}
			s0 += e0
			s1 += e1
			if collecting && max(e0, e1) >= collectThr {
				for j, e := range [2]float32{e0, e1} {
					if e >= collectThr {
						if len(cands) == maxCollect {
							collecting = false
							break
						}
						cands = append(cands, cand{e, int32(b*blockSize + i + j)})
					}
				}
			}
		}
		s.blocks[b] = float64(s0 + s1)
		z += s.blocks[b]
	}
	s.cands = cands
	if !collecting {
		return z, nil
	}
	return z, cands
}

// drawRow draws from the softmax of the whole row (temperature only) by inverse CDF over
// the block sums, then within the chosen block.
func (s *Sampler) drawRow(row []float32, m, invT float32, u float64) int {
	z, _ := s.sumBlocks(row, m, invT, 0)
	target := u * z
	acc := 0.0
	last := -1
	for b := 0; b*blockSize < len(row); b++ {
		if s.blocks[b] <= 0 {
			continue
		}
		if acc+s.blocks[b] <= target {
			acc += s.blocks[b]
			continue
		}
		for i := b * blockSize; i < min(len(row), (b+1)*blockSize); i++ {
			if e := expRel(row[i], m, invT); e > 0 {
				acc += float64(e)
				last = i
				if acc > target {
					return i
				}
			}
		}
		// Rounding left the target past this block's recomputed sum: go on.
	}
	if last < 0 {
		return Argmax(row)
	}
	return last
}

// drawList draws from the candidates in proportion to e.
func drawList(cands []cand, u float64) int {
	total := 0.0
	for _, c := range cands {
		total += float64(c.e)
	}
	target := u * total
	acc := 0.0
	for _, c := range cands {
		acc += float64(c.e)
		if acc > target {
			return int(c.id)
		}
	}
	return int(cands[len(cands)-1].id)
}

// prefixByMass reorders c so that c[:k] holds the fewest most likely candidates whose mass
// reaches need (ties at the boundary go to the lower id), and returns k (>= 1 when c is not
// empty and need > 0; len(c) when the whole mass is below need). It is a quickselect on
// mass: expected linear time, with a sort only for the last few dozen entries.
func prefixByMass(c []cand, need float64) int {
	lo, hi := 0, len(c)
	for hi-lo > 48 {
		a, b, d := c[lo].e, c[lo+(hi-lo)/2].e, c[hi-1].e
		pivot := max(min(a, b), min(max(a, b), d)) // median of three
		lt, i, gt := lo, lo, hi                    // c[lo:lt] > pivot, c[lt:i] == pivot, c[gt:hi] < pivot
		massGT, massEQ := 0.0, 0.0
		for i < gt {
			switch x := c[i].e; {
			case x > pivot:
				c[lt], c[i] = c[i], c[lt]
				massGT += float64(x)
				lt++
				i++
			case x < pivot:
				gt--
				c[i], c[gt] = c[gt], c[i]
			default:
				massEQ += float64(x)
				i++
			}
		}
		if massGT >= need {
			hi = lt
			continue
		}
		need -= massGT
		if massEQ >= need { // the boundary falls among equal values: lower ids first
			slices.SortFunc(c[lt:gt], func(x, y cand) int { return int(x.id - y.id) })
			for j := lt; j < gt; j++ {
				need -= float64(c[j].e)
				if need <= 0 {
					return j + 1
				}
			}
			return gt
		}
		need -= massEQ
		lo = gt
	}
	sortCands(c[lo:hi])
	for j := lo; j < hi; j++ {
		need -= float64(c[j].e)
		if need <= 0 {
			return j + 1
		}
	}
	return hi
}

// topK returns the k largest entries of row above -Inf (ties: lower id), in heap order.
func (s *Sampler) topK(row []float32, k int) []cand {
	h := s.heap[:0]
	less := func(a, b int32) bool { // a ranks below b in the min-heap
		va, vb := row[a], row[b]
		return va < vb || (va == vb && a > b)
	}
	i := 0
	for ; i < len(row) && len(h) < k; i++ {
		if !(row[i] > float32(math.Inf(-1))) { // NaN or -Inf
			continue
		}
		h = append(h, int32(i))
		for j := len(h) - 1; j > 0; { // sift up
			p := (j - 1) / 2
			if !less(h[j], h[p]) {
				break
			}
			h[j], h[p] = h[p], h[j]
			j = p
		}
	}
	if len(h) > 0 {
		floor := row[h[0]]
		for ; i < len(row); i++ {
			if !(row[i] > floor) { // later ties lose to the lower ids already held
				continue
			}
			h[0] = int32(i)
			for j := 0; ; { // sift down
				l := 2*j + 1
				if l >= len(h) {
					break
				}
				c := l
				if r := l + 1; r < len(h) && less(h[r], h[l]) {
					c = r
				}
				if !less(h[c], h[j]) {
					break
				}
				h[j], h[c] = h[c], h[j]
				j = c
			}
			floor = row[h[0]]
		}
	}
	s.heap = h
	cands := s.cands[:0]
	for _, id := range h {
		cands = append(cands, cand{id: id})
	}
	s.cands = cands
	return cands
}

// sortCands orders candidates most likely first, lower id first on ties.
func sortCands(c []cand) {
	slices.SortFunc(c, func(a, b cand) int {
		switch {
		case a.e > b.e:
			return -1
		case a.e < b.e:
			return 1
		}
		return int(a.id - b.id)
	})
}

// penalise applies the repetition, frequency and presence penalties for the ids in history.
func (s *Sampler) penalise(row []float32, history []int) {
	if !s.penalties() {
		return
	}
	s.grow(len(row))
	rp, fp, pp := s.p.RepetitionPenalty, s.p.FrequencyPenalty, s.p.PresencePenalty
	if rp == 0 {
		rp = 1
	}
	n := len(row)
	touched := s.touched[:0]
	for _, id := range history {
		if id < 0 || id >= n {
			continue
		}
		if s.counts[id] == 0 {
			touched = append(touched, int32(id))
		}
		s.counts[id]++
	}
	for _, id := range touched {
		v := float64(row[id])
		if rp != 1 {
			if v < 0 {
				v *= rp
			} else {
				v /= rp
			}
		}
		v -= float64(s.counts[id])*fp + pp
		row[id] = float32(v)
		s.counts[id] = 0
	}
	s.touched = touched
}

// expRel is exp((v-m)*invT) for v <= m, 0 for NaN, -Inf and values that underflow float32.
func expRel(v, m, invT float32) float32 {
	if x := (v - m) * invT; x > -87 {
		return exp32(x)
	}
	return 0
}

// expTab holds the float32 bits of 2^(j/64).
var expTab = func() (t [64]uint32) {
	for j := range t {
		t[j] = math.Float32bits(float32(math.Exp2(float64(j) / 64)))
	}
	return
}()

// exp32 is exp(x) for -87 < x <= 0 with a relative error below 2e-7 (float32 resolution):
// x = (64k' + j) ln2/64 + r, exp(x) = 2^k' 2^(j/64) (1 + r + r²/2), |r| <= ln2/128. Callers
// check the range; it is written to be inlined (math.Exp on a 151936-wide row costs several
// times more).
func exp32(x float32) float32 {
	const (
		l2e64 = 64 * 1.4426950408889634
		c1    = 0.693359375 / 64    // ln2/64, high part (exact in few bits)
		c2    = -2.12194440e-4 / 64 // ln2/64, low part
		shift = 12582912            // 1.5·2^23: adding it rounds to an integer
	)
	y := x*l2e64 + shift
	kf := y - shift
	k := math.Float32bits(y) - math.Float32bits(shift) // two's complement k = 64k' + j
	r := x - kf*c1 - kf*c2
	return math.Float32frombits(expTab[k&63]+(k>>6)<<23) * (1 + r*(1+r*0.5))
}
