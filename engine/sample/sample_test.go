package sample

import (
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

var (
	nan  = float32(math.NaN())
	ninf = float32(math.Inf(-1))
	pinf = float32(math.Inf(1))
)

func mustNew(t testing.TB, p Params, vocab int) *Sampler {
	t.Helper()
	s, err := New(p, vocab)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func randomRow(seed uint64, n int, scale float64) []float32 {
	r := rand.New(rand.NewPCG(seed, 7))
	l := make([]float32, n)
	for i := range l {
		l[i] = float32(r.NormFloat64() * scale)
	}
	return l
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		p    Params
		want string // substring of the error; "" = valid
	}{
		{Params{}, ""},
		{Params{Temperature: 0.7, TopK: 20, TopP: 0.8, MinP: 0.05, RepetitionPenalty: 1.1, FrequencyPenalty: -0.5, PresencePenalty: 2, Seed: -3}, ""},
		{Params{TopP: 1, MinP: 1}, ""},
		{Params{Temperature: -1}, "Temperature = -1"},
		{Params{Temperature: math.NaN()}, "Temperature = NaN"},
		{Params{Temperature: math.Inf(1)}, "Temperature = +Inf"},
		{Params{TopK: -2}, "TopK = -2"},
		{Params{TopP: 1.5}, "TopP = 1.5"},
		{Params{TopP: -0.1}, "TopP = -0.1"},
		{Params{MinP: 2}, "MinP = 2"},
		{Params{RepetitionPenalty: -1}, "RepetitionPenalty = -1"},
		{Params{FrequencyPenalty: math.NaN()}, "FrequencyPenalty = NaN"},
		{Params{PresencePenalty: math.Inf(-1)}, "PresencePenalty = -Inf"},
	} {
		err := tc.p.Validate()
		if tc.want == "" {
			if err != nil {
				t.Errorf("%+v: unexpected error %v", tc.p, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want it to contain %q", tc.p, err, tc.want)
		}
		if _, err := New(tc.p, 10); err == nil {
			t.Errorf("New accepted %+v", tc.p)
		}
	}
	if _, err := New(Params{}, 0); err == nil || !strings.Contains(err.Error(), "vocab = 0") {
		t.Errorf("New with vocab 0: %v", err)
	}
}

func TestArgmax(t *testing.T) {
	for _, tc := range []struct {
		l    []float32
		want int
	}{
		{nil, 0},
		{[]float32{1, 3, 2}, 1},
		{[]float32{3, 1, 3}, 0},
		{[]float32{nan, 1, nan, 2}, 3},
		{[]float32{nan, ninf}, 0},
		{[]float32{ninf, ninf, ninf}, 0},
		{[]float32{nan, nan}, 0},
		{[]float32{ninf, -5, nan}, 1},
		{[]float32{1, pinf, 2, pinf}, 1},
	} {
		if got := Argmax(tc.l); got != tc.want {
			t.Errorf("Argmax(%v) = %d, want %d", tc.l, got, tc.want)
		}
	}
}

func TestDegenerateRows(t *testing.T) {
	for _, p := range []Params{{}, {Temperature: 1}, {Temperature: 1, TopK: 2}, {Temperature: 1, TopP: 0.5}, {Temperature: 0.5, MinP: 0.3, RepetitionPenalty: 1.3}} {
		s := mustNew(t, p, 4)
		for _, tc := range []struct {
			l    []float32
			want int
		}{
			{[]float32{ninf, nan, ninf, nan}, 0},
			{[]float32{nan, nan, nan, nan}, 0},
			{[]float32{nan, ninf, 5, nan}, 2},
			{[]float32{1, pinf, nan, 2}, 1},
			{nil, 0},
		} {
			for i := 0; i < 20; i++ {
				if got := s.Sample(tc.l, []int{0, 2, -1, 99}); got != tc.want {
					t.Fatalf("%+v on %v: %d, want %d", p, tc.l, got, tc.want)
				}
			}
		}
	}
}

func TestNaNNeverSampled(t *testing.T) {
	l := []float32{nan, 0, nan, 0.5, nan, -0.2}
	for _, p := range []Params{{Temperature: 5}, {Temperature: 5, TopK: 4}, {Temperature: 5, TopP: 0.99}, {Temperature: 5, MinP: 0.01}} {
		s := mustNew(t, p, len(l))
		for i := 0; i < 2000; i++ {
			if got := s.Sample(l, nil); got%2 == 0 {
				t.Fatalf("%+v drew NaN entry %d", p, got)
			}
		}
	}
}

func TestGreedyIsArgmax(t *testing.T) {
	s := mustNew(t, Params{}, 1000)
	for seed := uint64(0); seed < 20; seed++ {
		l := randomRow(seed, 1000, 2)
		l[seed*7] = nan
		if got, want := s.Sample(l, nil), Argmax(l); got != want {
			t.Fatalf("row %d: greedy %d, argmax %d", seed, got, want)
		}
	}
}

func TestTopK1IsGreedy(t *testing.T) {
	s := mustNew(t, Params{Temperature: 1.3, TopK: 1, Seed: 4}, 5000)
	for seed := uint64(0); seed < 50; seed++ {
		l := randomRow(seed, 5000, 1)
		if got, want := s.Sample(l, nil), Argmax(l); got != want {
			t.Fatalf("row %d: top-k 1 drew %d, argmax %d", seed, got, want)
		}
	}
}

func TestTinyTopPKeepsExactlyTheTopToken(t *testing.T) {
	// A nearly flat 151936-wide row: the top token has probability ~7e-6, far below
	// top_p, so every threshold level is tried and only the top token must remain.
	l := randomRow(3, 151936, 0.01)
	l[777] = 0.2
	s := mustNew(t, Params{Temperature: 1, TopP: 1e-9, Seed: 1}, len(l))
	for i := 0; i < 20; i++ {
		if got := s.Sample(l, nil); got != 777 {
			t.Fatalf("tiny top_p drew %d", got)
		}
	}
	if got := s.draw(l, 1-1e-12); got != 777 {
		t.Fatalf("tiny top_p, u→1: %d", got)
	}
}

// reference restates the transformers pipeline directly (sort everything, HF's top-k tie rule
// aside): it returns the kept ids, most likely first, and their probabilities.
func reference(logits []float32, history []int, p Params) (ids []int, probs []float64) {
	n := len(logits)
	x := make([]float64, n)
	for i, v := range logits {
		x[i] = float64(v)
		if v != v {
			x[i] = math.Inf(-1)
		}
	}
	seen := map[int]int{}
	for _, id := range history {
		if id >= 0 && id < n {
			seen[id]++
		}
	}
	for id, c := range seen {
		if r := p.RepetitionPenalty; r != 0 {
			if x[id] < 0 {
				x[id] *= r
			} else {
				x[id] /= r
			}
		}
		x[id] -= float64(c)*p.FrequencyPenalty + p.PresencePenalty
	}
	order := make([]int, n)
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int {
		switch {
		case x[a] > x[b]:
			return -1
		case x[a] < x[b]:
			return 1
		}
		return 0
	})
	for _, id := range order {
		if !math.IsInf(x[id], -1) {
			ids = append(ids, id)
		}
	}
	if p.TopK > 0 && p.TopK < len(ids) {
		ids = ids[:p.TopK]
	}
	softmax := func(ids []int) []float64 {
		out := make([]float64, len(ids))
		z := 0.0
		for i, id := range ids {
			out[i] = math.Exp((x[id] - x[ids[0]]) / p.Temperature)
			z += out[i]
		}
		for i := range out {
			out[i] /= z
		}
		return out
	}
	if p.TopP > 0 && p.TopP < 1 {
		pr := softmax(ids)
		// HF: sorted ascending, drop tokens whose cumulative mass is <= 1-top_p, keep the top.
		cum, keep := 0.0, len(ids)
		for i := len(ids) - 1; i >= 1; i-- {
			cum += pr[i]
			if cum <= 1-p.TopP {
				keep = i
			}
		}
		ids = ids[:keep]
	}
	if p.MinP > 0 {
		pr := softmax(ids)
		keep := 1
		for keep < len(ids) && pr[keep] >= p.MinP*pr[0] {
			keep++
		}
		ids = ids[:keep]
	}
	return ids, softmax(ids)
}

var pipelineCases = []struct {
	name string
	n    int
	p    Params
}{
	{"temperature", 12, Params{Temperature: 1}},
	{"cold", 12, Params{Temperature: 0.5}},
	{"topk", 12, Params{Temperature: 0.8, TopK: 4}},
	{"topp", 12, Params{Temperature: 1, TopP: 0.7}},
	{"minp", 12, Params{Temperature: 1, MinP: 0.2}},
	{"all", 12, Params{Temperature: 1.4, TopK: 8, TopP: 0.9, MinP: 0.05}},
	{"topp+minp", 12, Params{Temperature: 1.2, TopP: 0.95, MinP: 0.3}},
	{"penalties", 12, Params{Temperature: 1, RepetitionPenalty: 1.8, FrequencyPenalty: 0.3, PresencePenalty: 0.2}},
	{"penalties+topp", 12, Params{Temperature: 0.9, TopP: 0.8, RepetitionPenalty: 1.3, PresencePenalty: -0.5}},
}

var pipelineHistory = []int{1, 1, 4, 7, 7, 7, 11, -3, 40}

// TestKeptSetBoundaries checks the kept set exactly: u→0 must draw the most likely kept
// token and u→1 the least likely one, on small rows and on wide flat rows where top-p has to
// lower its candidate threshold.
func TestKeptSetBoundaries(t *testing.T) {
	type tcase struct {
		name string
		n    int
		p    Params
	}
	cases := []tcase{}
	for _, c := range pipelineCases {
		cases = append(cases, tcase{c.name, c.n, c.p})
	}
	cases = append(cases,
		tcase{"wide-topp-flat", 100000, Params{Temperature: 1, TopP: 0.9}},
		tcase{"wide-topp-mid", 100000, Params{Temperature: 3, TopP: 0.5}},
		tcase{"wide-topp-peaked", 151936, Params{Temperature: 0.7, TopP: 0.8}},
		tcase{"wide-topp-minp", 100000, Params{Temperature: 1, TopP: 0.9, MinP: 0.5}},
		tcase{"wide-topk-topp", 151936, Params{Temperature: 1, TopK: 500, TopP: 0.6}},
		tcase{"wide-minp", 151936, Params{Temperature: 1, MinP: 0.1}},
	)
	for _, c := range cases {
		seeds := uint64(5)
		if c.n > 1000 {
			seeds = 2 // the reference sorts the whole row
		}
		for seed := uint64(1); seed <= seeds; seed++ {
			scale := 2.0
			switch {
			case strings.Contains(c.name, "flat"):
				scale = 0.05
			case strings.Contains(c.name, "peaked"):
				scale = 3
			}
			l := randomRow(seed, c.n, scale)
			ids, _ := reference(l, pipelineHistory, c.p)
			s := mustNew(t, c.p, c.n)
			buf := slices.Clone(l)
			s.penalise(buf, pipelineHistory)
			if (c.p.TopK == 0 || c.p.TopK >= c.n) && (c.p.TopP == 0 || c.p.TopP == 1) && c.p.MinP == 0 {
				// No top-k/top-p cut: the draw walks the row in id order, so u→0 and u→1
				// must give the lowest and the highest kept id.
				first, last := slices.Min(ids), slices.Max(ids)
				if got := s.draw(buf, 0); got != first {
					t.Errorf("%s seed %d: u=0 drew %d, want %d", c.name, seed, got, first)
				}
				if got := s.draw(buf, 1-1e-13); got != last {
					t.Errorf("%s seed %d: u→1 drew %d, want %d (kept %d tokens)", c.name, seed, got, last, len(ids))
				}
				continue
			}
			cands := s.keep(buf, buf[Argmax(buf)], float32(1/c.p.Temperature))
			got := make([]int, len(cands))
			for i, c := range cands {
				got[i] = int(c.id)
			}
			slices.Sort(got)
			want := slices.Clone(ids)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("%s seed %d: kept %d tokens, want %d (first differences: %v vs %v)", c.name, seed, len(got), len(want), got[:min(5, len(got))], want[:min(5, len(want))])
			}
		}
	}
}

// TestEmpiricalFrequencies draws 20000 tokens per case and compares the counts with the
// reference distribution (chi-square, far tail) and its support.
func TestEmpiricalFrequencies(t *testing.T) {
	const draws = 20000
	for _, c := range pipelineCases {
		t.Run(c.name, func(t *testing.T) {
			l := randomRow(11, c.n, 1.5)
			ids, probs := reference(l, pipelineHistory, c.p)
			want := map[int]float64{}
			for i, id := range ids {
				want[id] = probs[i]
			}
			s := mustNew(t, c.p, c.n)
			counts := map[int]float64{}
			for i := 0; i < draws; i++ {
				id := s.Sample(l, pipelineHistory)
				if _, ok := want[id]; !ok {
					t.Fatalf("drew %d outside the kept set %v", id, ids)
				}
				counts[id]++
			}
			chi := 0.0
			for id, pr := range want {
				e := draws * pr
				chi += (counts[id] - e) * (counts[id] - e) / e
			}
			// df = len(ids)-1 <= 11; the 0.9999 quantile of chi-square(11) is ~37.
			if df := len(ids) - 1; df > 0 && chi > 10+3*float64(df) {
				t.Fatalf("chi-square %.1f with %d dof: counts %v, probabilities %v of %v", chi, df, counts, probs, ids)
			}
		})
	}
}

func TestSoftmaxAtTemperatureOne(t *testing.T) {
	l := []float32{1, 2, 0.5, 1.5, -1, 0, 0.25, 3}
	s := mustNew(t, Params{Temperature: 1, Seed: 9}, len(l))
	const n = 20000
	counts := make([]float64, len(l))
	for i := 0; i < n; i++ {
		counts[s.Sample(l, nil)]++
	}
	var z float64
	for _, x := range l {
		z += math.Exp(float64(x))
	}
	chi := 0.0
	for i, x := range l {
		e := n * math.Exp(float64(x)) / z
		chi += (counts[i] - e) * (counts[i] - e) / e
	}
	if chi > 31 { // 7 degrees of freedom: p < 1e-4
		t.Fatalf("chi-square %.1f: frequencies %v", chi, counts)
	}
}

func TestPenalties(t *testing.T) {
	l := []float32{2, -2, 0, 3, 1}
	for _, tc := range []struct {
		name    string
		p       Params
		history []int
		want    []float32
	}{
		{"off", Params{RepetitionPenalty: 1}, []int{0, 1}, []float32{2, -2, 0, 3, 1}},
		{"zero is off", Params{}, []int{0, 1}, []float32{2, -2, 0, 3, 1}},
		// HF: positive logits divided, negative multiplied, once per distinct token.
		{"repetition", Params{RepetitionPenalty: 2}, []int{0, 1, 2, 0, 0}, []float32{1, -4, 0, 3, 1}},
		{"repetition<1 favours", Params{RepetitionPenalty: 0.5}, []int{0, 1}, []float32{4, -1, 0, 3, 1}},
		// OpenAI: minus count*frequency + presence.
		{"frequency", Params{FrequencyPenalty: 0.5}, []int{3, 3, 3, 1}, []float32{2, -2.5, 0, 1.5, 1}},
		{"presence", Params{PresencePenalty: 0.25}, []int{3, 3, 3, 1}, []float32{2, -2.25, 0, 2.75, 1}},
		{"all", Params{RepetitionPenalty: 2, FrequencyPenalty: 1, PresencePenalty: 0.5}, []int{4, 4, 1}, []float32{2, -5.5, 0, 3, -2}},
		{"ignores bad ids", Params{RepetitionPenalty: 2}, []int{-1, 5, 1 << 30}, []float32{2, -2, 0, 3, 1}},
	} {
		s := mustNew(t, tc.p, len(l))
		for rep := 0; rep < 2; rep++ { // counts must be cleared between calls
			buf := slices.Clone(l)
			s.penalise(buf, tc.history)
			if !slices.Equal(buf, tc.want) {
				t.Errorf("%s: %v, want %v", tc.name, buf, tc.want)
			}
		}
	}
	// Through Sample (greedy): token 0 (4 -> 2 after penalty) loses to token 1 (3).
	in := []float32{4, 3, -1}
	s := mustNew(t, Params{RepetitionPenalty: 2}, 3)
	if got := s.Sample(in, []int{0, 2}); got != 1 {
		t.Fatalf("greedy with repetition penalty: %d, want 1", got)
	}
	if !slices.Equal(in, []float32{4, 3, -1}) {
		t.Fatalf("Sample modified the caller's logits: %v", in)
	}
	s = mustNew(t, Params{FrequencyPenalty: 1}, 2)
	if got := s.Sample([]float32{4, 3}, []int{0, 0}); got != 1 {
		t.Fatalf("greedy with frequency penalty: %d, want 1", got)
	}
}

func TestSeedDeterminismAndReset(t *testing.T) {
	l := randomRow(1, 3000, 1)
	p := Params{Temperature: 0.8, TopP: 0.95, TopK: 200, Seed: 42}
	draw := func(s *Sampler) []int {
		out := make([]int, 200)
		for i := range out {
			out[i] = s.Sample(l, out[:i])
		}
		return out
	}
	s := mustNew(t, p, len(l))
	a := draw(s)
	b := draw(mustNew(t, p, len(l)))
	if !slices.Equal(a, b) {
		t.Fatal("same seed, different draws")
	}
	s.Reset(42)
	if c := draw(s); !slices.Equal(a, c) {
		t.Fatal("Reset(seed) does not replay the sequence")
	}
	s.Reset(43)
	if d := draw(s); slices.Equal(a, d) {
		t.Fatal("a different seed gave the same 200 draws")
	}
}

func TestLongerRowThanVocab(t *testing.T) {
	s := mustNew(t, Params{Temperature: 1, TopK: 3}, 4)
	l := randomRow(5, 100, 1)
	ids, _ := reference(l, nil, s.Params())
	for i := 0; i < 50; i++ {
		if got := s.Sample(l, []int{99}); !slices.Contains(ids, got) {
			t.Fatalf("drew %d outside top-3 %v", got, ids)
		}
	}
}

func TestExp32(t *testing.T) {
	worst := 0.0
	for x := float32(-86.99); x <= 0; x += 0.00123 {
		got, want := float64(exp32(x)), math.Exp(float64(x))
		if r := math.Abs(got/want - 1); r > worst {
			worst = r
		}
	}
	if worst > 2.5e-7 {
		t.Fatalf("exp32: worst relative error %.3g", worst)
	}
	for _, v := range []float32{-87.5, -1000, ninf, nan} {
		if got := expRel(v, 0, 1); got != 0 {
			t.Fatalf("expRel(%v) = %v, want 0", v, got)
		}
	}
	if got := expRel(3, 3, 2); got != 1 {
		t.Fatalf("expRel at the maximum = %v, want 1", got)
	}
}

// qwenRow imitates a language-model row: most logits far below a few dozen plausible ones.
func qwenRow() []float32 {
	l := randomRow(1, 151936, 2)
	r := rand.New(rand.NewPCG(9, 9))
	for i := 0; i < 40; i++ {
		l[r.IntN(len(l))] = float32(12 + r.NormFloat64()*2)
	}
	return l
}

var benchParams = []struct {
	name string
	p    Params
}{
	{"greedy", Params{}},
	{"temperature", Params{Temperature: 0.7}},
	{"topk20-topp0.8", Params{Temperature: 0.7, TopK: 20, TopP: 0.8}},
	{"topp0.9", Params{Temperature: 0.7, TopP: 0.9}},
	{"minp0.05", Params{Temperature: 1, MinP: 0.05}},
	{"qwen-default+penalties", Params{Temperature: 0.7, TopK: 20, TopP: 0.8, RepetitionPenalty: 1.05, PresencePenalty: 0.5}},
}

func TestNoAllocations(t *testing.T) {
	l := qwenRow()
	hist := randomHistory(2048, len(l))
	for _, c := range benchParams {
		s := mustNew(t, c.p, len(l))
		s.Sample(l, hist)
		if a := testing.AllocsPerRun(5, func() { s.Sample(l, hist) }); a != 0 {
			t.Errorf("%s: %v allocations per Sample", c.name, a)
		}
	}
}

func randomHistory(n, vocab int) []int {
	r := rand.New(rand.NewPCG(3, 3))
	h := make([]int, n)
	for i := range h {
		h[i] = r.IntN(vocab)
	}
	return h
}

func BenchmarkSample151936(b *testing.B) {
	l := qwenRow()
	hist := randomHistory(2048, len(l))
	for _, c := range benchParams {
		b.Run(c.name, func(b *testing.B) {
			s := mustNew(b, c.p, len(l))
			for b.Loop() {
				s.Sample(l, hist)
			}
		})
	}
	b.Run("flat-topp0.9", func(b *testing.B) { // worst case: most of the row is kept
		l := randomRow(2, 151936, 0.05)
		s := mustNew(b, Params{Temperature: 1, TopP: 0.9}, len(l))
		for b.Loop() {
			s.Sample(l, nil)
		}
	})
}
