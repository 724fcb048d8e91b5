package optim

import (
	"math"
	"math/rand/v2"
	"testing"
)

// TestInt8CodesRound checks the int8 codes' float32 sums against float64 rounding of the same
// products: m codes are round-half-even(y), √v codes round(y) − 1 clamped to 0…255 with the sum's
// ties, for random products and for every exact tie of a half-integer.
func TestInt8CodesRound(t *testing.T) {
	r := rand.New(rand.NewPCG(10, 10))
	type tc struct{ y float32 }
	var ys []tc
	for k := -255; k <= 513; k++ {
		ys = append(ys, tc{float32(k) / 2}) // every tie and integer in range
	}
	for range 20000 {
		ys = append(ys, tc{float32(r.Float64()*257 - 0.5)})
	}
	for _, c := range ys {
		if math.Abs(float64(c.y)) <= 127.25 {
			got := int8(uint8(math.Float32bits(c.y + int8Round)))
			want := int8(math.RoundToEven(float64(c.y)))
			if got != want {
				t.Fatalf("m code of %v: %d, want %d", c.y, got, want)
			}
		}
		if c.y >= 0 {
			got := max(0, min(255, int64(math.Float32bits(c.y+(int8Round-1)))-int8Bits))
			want := max(0, min(255, int64(math.RoundToEven(float64(c.y)+(int8Round-1))-int8Round)))
			if got != want {
				t.Fatalf("√v code of %v: %d, want %d", c.y, got, want)
			}
		}
	}
}

// TestInt8CodecBounds checks the int8 format end to end on blocks of several magnitudes: m's
// decoded error is at most half a level (plus one rounding of the product), √v's decoded value
// is within one level above or half a level below, and nothing decodes to zero.
func TestInt8CodecBounds(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 11))
	for _, std := range []float64{1e-30, 1e-8, 1e-3, 1, 1e4, 1e30} {
		m := randVec(r, Int8Block, std)
		q := make([]int8, Int8Block)
		s := EncodeInt8M(q, m)
		d := make([]float32, Int8Block)
		DecodeInt8M(d, q, s)
		for i := range m {
			if e := math.Abs(float64(m[i] - d[i])); e > float64(s)/254*(1+1e-5) {
				t.Fatalf("std %g: m[%d] = %g decoded %g (scale %g)", std, i, m[i], d[i], s)
			}
		}
		v := make([]float32, Int8Block)
		for i := range v {
			v[i] = m[i] * m[i]
		}
		v[3] = 0
		u := make([]uint8, Int8Block)
		vs := EncodeInt8V(u, v)
		DecodeInt8V(d, u, vs)
		for i := range v {
			sv, sd := math.Sqrt(float64(v[i])), math.Sqrt(float64(d[i]))
			if d[i] <= 0 && vs > 0 || sd-sv > float64(vs)/256*(1+1e-5)+float64(vs)/512 || sv-sd > float64(vs)/512*(1+1e-5) {
				t.Fatalf("std %g: √v[%d] = %g decoded %g (scale %g)", std, i, sv, sd, vs)
			}
		}
	}
}

// TestSRDraw checks the masters' stochastic rounding: unbiased on average for values between two
// bf16 neighbours, uniform draws, and keys that differ for neighbouring seeds, steps and
// parameters.
func TestSRDraw(t *testing.T) {
	const n = 1 << 16
	for _, x := range []float32{1 + 1.0/512, 1 + 3.0/1024, -0.3, 123.456, 1e-20} {
		lo := math.Float32frombits(math.Float32bits(x) &^ 0xffff)
		hi := math.Float32frombits(math.Float32bits(lo) + 0x10000)
		for _, key := range []uint32{0, 1, SRKey(7, 1, 3), SRKey(7, 2, 3)} {
			var sum float64
			for i := range uint64(n) {
				b := StochasticBF16Key(x, key, i)
				sum += float64(math.Float32frombits(uint32(b) << 16))
			}
			mean := sum / n
			p := (float64(x) - float64(lo)) / (float64(hi) - float64(lo))
			sigma := math.Abs(float64(hi-lo)) * math.Sqrt(p*(1-p)/n)
			if d := math.Abs(mean - float64(x)); d > 5*sigma+1e-12*math.Abs(float64(x)) {
				t.Fatalf("x %g key %#x: mean of the rounded values %g, %.1f σ away", x, key, mean, d/sigma)
			}
		}
	}
	var buckets [16]int
	for i := range uint64(n) {
		buckets[SRDraw(0x12345678, i)>>12]++
	}
	chi := 0.0
	for _, c := range buckets {
		d := float64(c) - n/16
		chi += d * d / (n / 16)
	}
	if chi > 50 { // 15 degrees of freedom: p < 1e-5
		t.Fatalf("draws not uniform: χ² = %.1f over %v", chi, buckets)
	}
	keys := map[uint32]bool{}
	for seed := range uint64(4) {
		for step := range uint64(4) {
			for param := range uint64(4) {
				keys[SRKey(seed, step, param)] = true
			}
		}
	}
	if len(keys) != 64 {
		t.Fatalf("%d distinct keys for 64 (seed, step, param)", len(keys))
	}
}

// TestEncodeV4Bits checks the 4-bit v code from the ratio's bits against math.Log2 and
// math.Round: every float32 ratio within 4,096 units in the last place of a binade's start and
// of √2 times it, for binades 2^-30 … 2^2, subnormals, and a million random ratios.
func TestEncodeV4Bits(t *testing.T) {
	check := func(r float32) {
		if !(r > 0) {
			return
		}
		got := encodeV4(r, 1)
		if r/1 != r {
			t.Fatalf("ratio %g", r)
		}
		if want := encodeV4Log(r); got != want {
			t.Fatalf("ratio %g (bits %#x): code %d from its bits, %d from math.Log2", r, math.Float32bits(r), got, want)
		}
	}
	for e := -30; e <= 2; e++ {
		for _, base := range []float64{1, math.Sqrt2} {
			c := math.Float32bits(float32(math.Ldexp(base, e)))
			for d := uint32(0); d < 4096; d++ {
				check(math.Float32frombits(c + d))
				check(math.Float32frombits(c - d))
			}
		}
	}
	for b := uint32(1); b < 1<<23; b += 977 {
		check(math.Float32frombits(b))
	}
	r := rand.New(rand.NewPCG(12, 12))
	for range 1_000_000 {
		check(float32(math.Ldexp(1+r.Float64(), -r.IntN(40))))
	}
	for c := range byte(16) {
		if got, want := decodeV4(c, 3), 3*float32(math.Exp2(-float64(15-c))); got != want {
			t.Fatalf("decode %d: %g, want %g", c, got, want)
		}
	}
}
