package sample

import (
	"math"
	"math/rand/v2"
	"testing"
)

func TestValidate(t *testing.T) {
	bad := []Params{{Temperature: -1}, {TopP: 1.5}, {TopK: -2}, {MinP: 2}, {RepetitionPenalty: -1}, {Temperature: math.NaN()}}
	for _, p := range bad {
		if p.Validate() == nil {
			t.Errorf("%+v accepted", p)
		}
	}
}

func TestGreedyAndTopK1(t *testing.T) {
	l := []float32{0.1, 3, float32(math.NaN()), 2.9, -1}
	for _, p := range []Params{{}, {Temperature: 1, TopK: 1}} {
		s, _ := New(p)
		if got := s.Sample(l, nil); got != 1 {
			t.Errorf("%+v: %d", p, got)
		}
	}
	if Argmax([]float32{float32(math.NaN()), float32(math.Inf(-1))}) != 1 {
		t.Error("argmax must skip NaN")
	}
}

func TestTopPKeepsTopToken(t *testing.T) {
	s, _ := New(Params{Temperature: 1, TopP: 1e-9, Seed: 3})
	l := []float32{1, 5, 4.99, 0}
	for i := 0; i < 200; i++ {
		if got := s.Sample(l, nil); got != 1 {
			t.Fatalf("tiny top_p drew %d", got)
		}
	}
}

func TestMinP(t *testing.T) {
	s, _ := New(Params{Temperature: 1, MinP: 0.5, Seed: 1})
	l := []float32{0, float32(math.Log(0.4)), float32(math.Log(0.6))} // probs ∝ 1, .4, .6
	for i := 0; i < 500; i++ {
		if got := s.Sample(l, nil); got == 1 {
			t.Fatal("min_p 0.5 kept a token at 0.4 of the top")
		}
	}
}

func TestRepetitionPenalty(t *testing.T) {
	s, _ := New(Params{RepetitionPenalty: 2})
	// token 0: 4 -> 2 (seen, positive); token 1: 3; token 2: -1 -> -2 (seen, negative)
	if got := s.Sample([]float32{4, 3, -1}, []int{0, 2}); got != 1 {
		t.Fatalf("penalty: %d", got)
	}
	s, _ = New(Params{FrequencyPenalty: 1})
	if got := s.Sample([]float32{4, 3}, []int{0, 0}); got != 1 {
		t.Fatalf("frequency penalty: %d", got)
	}
}

func TestSeedDeterminism(t *testing.T) {
	l := make([]float32, 100)
	r := rand.New(rand.NewPCG(1, 1))
	for i := range l {
		l[i] = float32(r.NormFloat64())
	}
	draw := func() []int {
		s, _ := New(Params{Temperature: 0.8, TopP: 0.9, Seed: 42})
		var out []int
		for i := 0; i < 50; i++ {
			out = append(out, s.Sample(l, nil))
		}
		return out
	}
	a, b := draw(), draw()
	for i := range a {
		if a[i] != b[i] {
			t.Fatal("same seed, different draws")
		}
	}
}

func TestFrequenciesMatchSoftmax(t *testing.T) {
	l := []float32{1, 2, 0.5, 1.5, -1}
	s, _ := New(Params{Temperature: 1, Seed: 9})
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
	if chi > 20 { // 4 degrees of freedom: p < 0.001
		t.Fatalf("chi-square %.1f: frequencies %v", chi, counts)
	}
}

func BenchmarkSampleQwenVocab(b *testing.B) {
	l := make([]float32, 151936)
	r := rand.New(rand.NewPCG(1, 1))
	for i := range l {
		l[i] = float32(r.NormFloat64() * 3)
	}
	s, _ := New(Params{Temperature: 0.7, TopP: 0.8, TopK: 20})
	for i := 0; i < b.N; i++ {
		s.Sample(l, nil)
	}
}

func TestTopKAndTopPOnWideRow(t *testing.T) {
	l := make([]float32, 5000)
	r := rand.New(rand.NewPCG(2, 2))
	for i := range l {
		l[i] = float32(r.NormFloat64())
	}
	l[10], l[20], l[30] = 9, 8.5, 8
	s, _ := New(Params{Temperature: 1, TopK: 3, Seed: 5})
	for i := 0; i < 300; i++ {
		if got := s.Sample(l, nil); got != 10 && got != 20 && got != 30 {
			t.Fatalf("top_k 3 drew %d", got)
		}
	}
	s, _ = New(Params{Temperature: 1, TopP: 0.5, Seed: 5})
	for i := 0; i < 300; i++ {
		if got := s.Sample(l, nil); got != 10 && got != 20 {
			t.Fatalf("top_p 0.5 drew %d", got)
		}
	}
}
