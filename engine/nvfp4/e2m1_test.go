package nvfp4

import (
	"math"
	"math/rand/v2"
	"testing"
)

func TestDecodeE2M1(t *testing.T) {
	want := []float32{0, 0.5, 1, 1.5, 2, 3, 4, 6, 0, -0.5, -1, -1.5, -2, -3, -4, -6}
	for c, w := range want {
		got := DecodeE2M1(byte(c))
		if got != w {
			t.Errorf("code %d = %v, want %v", c, got, w)
		}
		if c >= 8 && !math.Signbit(float64(got)) {
			t.Errorf("code %d lacks the sign bit", c)
		}
	}
	if !math.Signbit(float64(DecodeE2M1(8))) || math.Signbit(float64(DecodeE2M1(0))) {
		t.Error("code 8 must be -0 and code 0 +0")
	}
	if DecodeE2M1(0xf3) != DecodeE2M1(3) {
		t.Error("high nibble not ignored")
	}
	if m := E2M1Magnitudes(); m != [8]float32{0, 0.5, 1, 1.5, 2, 3, 4, 6} {
		t.Errorf("magnitudes %v", m)
	}
	if b := E2M1Bounds(); b != [7]float32{0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5} {
		t.Errorf("bounds %v", b)
	}
}

func TestE2M1Rounding(t *testing.T) {
	below := func(x float32) float32 { return math.Nextafter32(x, 0) }
	above := func(x float32) float32 { return math.Nextafter32(x, 10) }
	cases := []struct {
		v          float32
		even, away byte
	}{
		{0, 0, 0},
		{float32(math.Copysign(0, -1)), 0, 0},       // -0 keeps code 0 (v < 0 is false)
		{1e-30, 0, 0}, {-1e-30, 8, 8}, {-0.1, 8, 8}, // tiny negatives become -0
		// exact ties: even picks the even code, away the larger magnitude
		{0.25, 0, 1}, {0.75, 2, 2}, {1.25, 2, 3}, {1.75, 4, 4}, {2.5, 4, 5}, {3.5, 6, 6}, {5, 6, 7},
		{-0.25, 8, 9}, {-0.75, 10, 10}, {-1.25, 10, 11}, {-1.75, 12, 12}, {-2.5, 12, 13}, {-3.5, 14, 14}, {-5, 14, 15},
		// one ulp either side of each boundary
		{below(0.25), 0, 0}, {above(0.25), 1, 1}, {below(0.75), 1, 1}, {above(0.75), 2, 2},
		{below(1.25), 2, 2}, {above(1.25), 3, 3}, {below(1.75), 3, 3}, {above(1.75), 4, 4},
		{below(2.5), 4, 4}, {above(2.5), 5, 5}, {below(3.5), 5, 5}, {above(3.5), 6, 6},
		{below(5), 6, 6}, {above(5), 7, 7},
		// grid points and saturation
		{0.5, 1, 1}, {1, 2, 2}, {1.5, 3, 3}, {2, 4, 4}, {3, 5, 5}, {4, 6, 6}, {6, 7, 7},
		{6.5, 7, 7}, {1e30, 7, 7}, {-100, 15, 15}, {float32(math.Inf(1)), 7, 7}, {float32(math.Inf(-1)), 15, 15},
		{float32(math.NaN()), 0, 0},
	}
	for _, c := range cases {
		if got := EncodeE2M1Even(c.v); got != c.even {
			t.Errorf("EncodeE2M1Even(%v) = %d, want %d", c.v, got, c.even)
		}
		if got := EncodeE2M1Away(c.v); got != c.away {
			t.Errorf("EncodeE2M1Away(%v) = %d, want %d", c.v, got, c.away)
		}
	}
}

// TestE2M1TableMatchesSlow checks the table-driven encoders against the comparison-based
// specification on every bucket start and its neighbours and on a wide sample of bit patterns.
func TestE2M1TableMatchesSlow(t *testing.T) {
	check := func(u uint32) {
		v := math.Float32frombits(u)
		if got, want := EncodeE2M1Even(v), encodeE2M1Slow(v, false); got != want {
			t.Fatalf("even %v (%#08x): table %d, spec %d", v, u, got, want)
		}
		if got, want := EncodeE2M1Away(v), encodeE2M1Slow(v, true); got != want {
			t.Fatalf("away %v (%#08x): table %d, spec %d", v, u, got, want)
		}
	}
	for b := uint32(0); b < 2048; b++ {
		for _, d := range []uint32{0, 1, 2, 1<<21 - 1, 1<<21 - 2} {
			check(b<<21 + d)
		}
	}
	for u := uint64(0); u < 1<<32; u += 4093 {
		check(uint32(u))
	}
	r := rand.New(rand.NewPCG(5, 6))
	for range 100000 {
		check(math.Float32bits(float32(r.NormFloat64() * 3)))
	}
}
