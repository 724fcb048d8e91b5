package data

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"strconv"
	"strings"
)

// Source is a named dataset with its share of a mixture.
type Source struct {
	Name    string
	Samples []*Sample
	Ratio   float64
}

// MixSpec is one entry of a "--data a.tsv:0.05,b.jsonl:0.95" list.
type MixSpec struct {
	Path  string
	Ratio float64
}

// ParseMix parses comma-separated FILE[:RATIO] entries. Entries without a ratio share what the
// others leave (equally); ratios must be positive and sum to at most 1 when all are given, and
// are normalised to sum 1.
func ParseMix(s string) ([]MixSpec, error) {
	var out []MixSpec
	given, unspecified := 0.0, 0
	for i, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			return nil, fmt.Errorf("data list %q: entry %d is empty", s, i+1)
		}
		path, ratio := part, -1.0
		if j := strings.LastIndex(part, ":"); j > 0 {
			if r, err := strconv.ParseFloat(part[j+1:], 64); err == nil {
				path, ratio = part[:j], r
				if !(r > 0) || r > 1 {
					return nil, fmt.Errorf("data list %q: ratio %v of %s is not in (0, 1]", s, r, path)
				}
				given += r
			}
		}
		if ratio < 0 {
			unspecified++
		}
		out = append(out, MixSpec{Path: path, Ratio: ratio})
	}
	if given > 1+1e-9 {
		return nil, fmt.Errorf("data list %q: ratios sum to %v > 1", s, given)
	}
	rest := 1 - given
	if unspecified > 0 && rest <= 1e-9 {
		return nil, fmt.Errorf("data list %q: ratios leave nothing for the %d entries without one", s, unspecified)
	}
	sum := 0.0
	for i := range out {
		if out[i].Ratio < 0 {
			out[i].Ratio = rest / float64(unspecified)
		}
		sum += out[i].Ratio
	}
	for i := range out {
		out[i].Ratio /= sum
	}
	return out, nil
}

// Mixture draws samples from several sources by ratio, each source walked in a shuffled order
// that is reshuffled every epoch. Everything derives from one seed, and State/Restore capture the
// position so a resumed run sees the identical sequence.
type Mixture struct {
	sources []Source
	cum     []float64
	seed    uint64
	rng     *rand.PCG
	pick    *rand.Rand
	epoch   []uint64
	pos     []int
	perm    [][]int
	drawn   []int
}

// NewMixture builds a mixture. Ratios are normalised; sources must be non-empty.
func NewMixture(sources []Source, seed uint64) (*Mixture, error) {
	if len(sources) == 0 {
		return nil, fmt.Errorf("data: mixture has no sources")
	}
	sum := 0.0
	for _, s := range sources {
		if len(s.Samples) == 0 {
			return nil, fmt.Errorf("data: source %q has no samples", s.Name)
		}
		if !(s.Ratio > 0) {
			return nil, fmt.Errorf("data: source %q has ratio %v, want > 0", s.Name, s.Ratio)
		}
		sum += s.Ratio
	}
	m := &Mixture{sources: sources, seed: seed, epoch: make([]uint64, len(sources)),
		pos: make([]int, len(sources)), perm: make([][]int, len(sources)), drawn: make([]int, len(sources))}
	acc := 0.0
	for _, s := range sources {
		acc += s.Ratio / sum
		m.cum = append(m.cum, acc)
	}
	m.rng = rand.NewPCG(seed, 0x9e3779b97f4a7c15)
	m.pick = rand.New(m.rng)
	for i := range sources {
		m.shuffle(i)
	}
	return m, nil
}

func (m *Mixture) shuffle(i int) {
	n := len(m.sources[i].Samples)
	p := make([]int, n)
	for j := range p {
		p[j] = j
	}
	r := rand.New(rand.NewPCG(m.seed^uint64(i+1)*0xbf58476d1ce4e5b9, m.epoch[i]))
	r.Shuffle(n, func(a, b int) { p[a], p[b] = p[b], p[a] })
	m.perm[i] = p
}

// Next returns the next sample and the index of its source.
func (m *Mixture) Next() (*Sample, int) {
	u := m.pick.Float64()
	i := len(m.cum) - 1
	for j, c := range m.cum {
		if u < c {
			i = j
			break
		}
	}
	if m.pos[i] >= len(m.perm[i]) {
		m.epoch[i]++
		m.pos[i] = 0
		m.shuffle(i)
	}
	s := m.sources[i].Samples[m.perm[i][m.pos[i]]]
	m.pos[i]++
	m.drawn[i]++
	return s, i
}

// Shares reports the realised share of each source over the draws so far.
func (m *Mixture) Shares() map[string]float64 {
	total := 0
	for _, d := range m.drawn {
		total += d
	}
	out := map[string]float64{}
	for i, s := range m.sources {
		if total > 0 {
			out[s.Name] = float64(m.drawn[i]) / float64(total)
		}
	}
	return out
}

// State serialises the iteration position (RNG, epochs, offsets, counts).
func (m *Mixture) State() ([]byte, error) {
	rs, err := m.rng.MarshalBinary()
	if err != nil {
		return nil, err
	}
	b := binary.AppendUvarint(nil, uint64(len(rs)))
	b = append(b, rs...)
	b = binary.AppendUvarint(b, uint64(len(m.sources)))
	for i := range m.sources {
		b = binary.AppendUvarint(b, m.epoch[i])
		b = binary.AppendUvarint(b, uint64(m.pos[i]))
		b = binary.AppendUvarint(b, uint64(m.drawn[i]))
	}
	return b, nil
}

// Restore sets the position saved by State (on a mixture built from the same sources and seed).
func (m *Mixture) Restore(b []byte) error {
	bad := fmt.Errorf("data: mixture state is corrupt or from another mixture")
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)-k) {
		return bad
	}
	b = b[k:]
	if err := m.rng.UnmarshalBinary(b[:n]); err != nil {
		return fmt.Errorf("data: mixture state: %w", err)
	}
	b = b[n:]
	count, k := binary.Uvarint(b)
	if k <= 0 || count != uint64(len(m.sources)) {
		return bad
	}
	b = b[k:]
	for i := range m.sources {
		var v [3]uint64
		for j := range v {
			x, k := binary.Uvarint(b)
			if k <= 0 {
				return bad
			}
			v[j], b = x, b[k:]
		}
		if v[1] > uint64(len(m.sources[i].Samples)) {
			return bad
		}
		m.epoch[i], m.pos[i], m.drawn[i] = v[0], int(v[1]), int(v[2])
		m.shuffle(i)
	}
	return nil
}

// Batch is B samples padded to a common length T, flattened row-major.
type Batch struct {
	B, T    int
	IDs     []int
	Mask    []bool
	Sources []string
	Targets int
}

// MakeBatch pads samples to the longest with pad (masked out).
func MakeBatch(samples []*Sample, pad int) *Batch {
	t := 0
	for _, s := range samples {
		t = max(t, len(s.IDs))
	}
	b := &Batch{B: len(samples), T: t, IDs: make([]int, len(samples)*t), Mask: make([]bool, len(samples)*t)}
	for i, s := range samples {
		row := b.IDs[i*t : (i+1)*t]
		for j := range row {
			row[j] = pad
		}
		copy(row, s.IDs)
		copy(b.Mask[i*t:], s.Mask)
		b.Sources = append(b.Sources, s.Source)
		b.Targets += s.Targets()
	}
	return b
}

// NextBatch draws b samples from the mixture.
func (m *Mixture) NextBatch(b, pad int) *Batch {
	ss := make([]*Sample, b)
	for i := range ss {
		ss[i], _ = m.Next()
	}
	return MakeBatch(ss, pad)
}

// Split divides examples into train and held-out sets by a hash of their content, so a row
// stays on the same side however the file is reordered or extended. heldOut is the share
// (0..1) kept out; seed varies the split.
func Split(examples []Example, heldOut float64, seed uint64) (train, held []Example) {
	for _, ex := range examples {
		h := fnv.New64a()
		var sb [8]byte
		binary.LittleEndian.PutUint64(sb[:], seed)
		h.Write(sb[:])
		for _, m := range ex.Messages {
			h.Write([]byte(m.Role))
			h.Write([]byte{0})
			h.Write([]byte(m.Content))
			h.Write([]byte{0})
		}
		h.Write([]byte(ex.Text))
		if float64(h.Sum64()>>11)/float64(1<<53) < heldOut {
			held = append(held, ex)
		} else {
			train = append(train, ex)
		}
	}
	return train, held
}
