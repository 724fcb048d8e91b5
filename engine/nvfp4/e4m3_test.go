package nvfp4

import (
	"math"
	"math/rand/v2"
	"testing"
)

// e4m3FromFields computes a code's value from its bit fields with float64 powers, written
// independently of the package's table.
func e4m3FromFields(c byte) float64 {
	s := 1.0
	if c&0x80 != 0 {
		s = -1
	}
	e, m := int(c>>3&0xf), float64(c&7)
	switch {
	case e == 15 && m == 7:
		return math.NaN()
	case e == 0:
		return s * m / 8 * math.Pow(2, -6)
	}
	return s * (1 + m/8) * math.Pow(2, float64(e-7))
}

func TestDecodeE4M3AllCodes(t *testing.T) {
	tab := E4M3Table()
	for c := 0; c < 256; c++ {
		got, want := float64(DecodeE4M3(byte(c))), e4m3FromFields(byte(c))
		if math.IsNaN(want) != math.IsNaN(got) || (!math.IsNaN(want) && (got != want || math.Signbit(got) != math.Signbit(want))) {
			t.Errorf("code %#02x = %v, want %v", c, got, want)
		}
		if g := tab[c]; g != DecodeE4M3(byte(c)) && !math.IsNaN(float64(g)) {
			t.Errorf("E4M3Table()[%#02x] = %v", c, g)
		}
	}
	spot := []struct {
		code byte
		v    float32
	}{
		{0x00, 0}, {0x01, 1.0 / 512}, {0x07, 7.0 / 512}, {0x08, 1.0 / 64}, {0x38, 1}, {0x40, 2},
		{0x77, 240}, {0x78, 256}, {0x79, 288}, {0x7a, 320}, {0x7b, 352}, {0x7c, 384}, {0x7d, 416}, {0x7e, 448},
		{0xfe, -448}, {0xb8, -1}, {0x81, -1.0 / 512},
	}
	for _, s := range spot {
		if got := DecodeE4M3(s.code); got != s.v {
			t.Errorf("code %#02x = %v, want %v", s.code, got, s.v)
		}
	}
	if !math.Signbit(float64(DecodeE4M3(0x80))) || DecodeE4M3(0x80) != 0 {
		t.Error("0x80 must be -0")
	}
	for c := 0; c < 256; c++ {
		nan := math.IsNaN(float64(DecodeE4M3(byte(c))))
		if nan != (c == 0x7f || c == 0xff) {
			t.Errorf("code %#02x: NaN = %v", c, nan)
		}
	}
}

func TestEncodeE4M3RoundTripsEveryFiniteCode(t *testing.T) {
	for c := 0; c < 256; c++ {
		if c&0x7f == 0x7f {
			continue
		}
		if got := EncodeE4M3(DecodeE4M3(byte(c))); got != byte(c) {
			t.Errorf("EncodeE4M3(DecodeE4M3(%#02x) = %v) = %#02x", c, DecodeE4M3(byte(c)), got)
		}
	}
}

// e4m3Nearest is the brute-force specification of EncodeE4M3: the nearest finite code in
// float64 arithmetic, ties to the code with an even mantissa, |x| >= 448 saturating.
func e4m3Nearest(x float32) byte {
	if x != x {
		return 0x7f
	}
	var sign byte
	a := float64(x)
	if math.Signbit(a) {
		sign, a = 0x80, -a
	}
	if a >= 448 {
		return sign | 0x7e
	}
	best, bestD := 0, math.Inf(1)
	for c := 0; c < 0x7f; c++ {
		d := math.Abs(e4m3FromFields(byte(c)) - a)
		if d < bestD || (d == bestD && c&1 == 0) {
			best, bestD = c, d
		}
	}
	return sign | byte(best)
}

func TestEncodeE4M3(t *testing.T) {
	cases := []struct {
		x    float32
		want byte
	}{
		{0, 0x00}, {float32(math.Copysign(0, -1)), 0x80}, {-1e-6, 0x80},
		{1.0 / 1024, 0x00}, // tie between 0 and 2^-9: even code 0
		{1.5 / 512, 0x02},  // tie between codes 1 and 2: even
		{2.5 / 512, 0x02},  // tie between codes 2 and 3: even
		{7.5 / 512, 0x08},  // tie between the largest subnormal and 2^-6
		{1.0625, 0x38},     // tie between 1 and 1.125: even
		{1.1875, 0x3a},     // tie between 1.125 and 1.25: even
		{248, 0x78},        // tie between 240 and 256: carries into exponent 15
		{447, 0x7e}, {440, 0x7e}, {431.9, 0x7d}, {432, 0x7e},
		{448, 0x7e}, {449, 0x7e}, {464, 0x7e}, {1e9, 0x7e}, {-1e9, 0xfe}, // saturation
		{float32(math.Inf(1)), 0x7e}, {float32(math.Inf(-1)), 0xfe},
		{float32(math.NaN()), 0x7f},
		{3e-38, 0x00}, {1e-45, 0x00}, // float32 subnormal inputs
	}
	for _, c := range cases {
		if got := EncodeE4M3(c.x); got != c.want {
			t.Errorf("EncodeE4M3(%v) = %#02x, want %#02x", c.x, got, c.want)
		}
	}
}

func TestEncodeE4M3MatchesNearest(t *testing.T) {
	var xs []float32
	for c := 0; c < 0x7e; c++ {
		lo, hi := float64(DecodeE4M3(byte(c))), float64(DecodeE4M3(byte(c+1)))
		mid := float32((lo + hi) / 2)
		xs = append(xs, mid, math.Nextafter32(mid, 0), math.Nextafter32(mid, 1000), float32(lo), float32(hi))
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		xs = append(xs, float32(r.NormFloat64()*100), float32(r.NormFloat64()*0.01), float32(math.Exp(r.Float64()*30-20)))
	}
	for _, x := range xs {
		for _, v := range []float32{x, -x} {
			if got, want := EncodeE4M3(v), e4m3Nearest(v); got != want {
				t.Fatalf("EncodeE4M3(%v) = %#02x, nearest is %#02x", v, got, want)
			}
		}
	}
}
