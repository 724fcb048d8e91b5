package nvfp4

import "math"

// e2m1Mag holds the magnitudes of the eight non-negative E2M1 codes.
var e2m1Mag = [8]float32{0, 0.5, 1, 1.5, 2, 3, 4, 6}

// e2m1Bounds are the rounding boundaries between neighbouring magnitudes.
var e2m1Bounds = [7]float32{0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0}

// E2M1Max is the largest E2M1 magnitude.
const E2M1Max = 6

// E2M1Magnitudes returns the magnitudes of codes 0..7 (codes 8..15 are their negatives).
func E2M1Magnitudes() [8]float32 { return e2m1Mag }

// E2M1Bounds returns the rounding boundaries between neighbouring magnitudes:
// 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0.
func E2M1Bounds() [7]float32 { return e2m1Bounds }

// DecodeE2M1 returns the value of a 4-bit code (bit 3 = sign; code 8 is -0). Bits above the
// low nibble are ignored.
func DecodeE2M1(code byte) float32 {
	v := e2m1Mag[code&7]
	if code&8 != 0 {
		return -v
	}
	return v
}

// encodeE2M1Slow is the specification of both rounding modes, one comparison per boundary.
// Boundary i sits between magnitude codes i and i+1; at a tie "even" rounds to the even code,
// "away" to the larger magnitude. Values beyond 6 saturate to code 7. The sign bit is set for
// v < 0 (so tiny negatives become -0, code 8, as ModelOpt's and the seed's `v < 0` do) but not
// for -0. NaN encodes as 0.
func encodeE2M1Slow(v float32, away bool) byte {
	a := float32(math.Abs(float64(v)))
	var code byte
	for i, b := range e2m1Bounds {
		if a > b || (a == b && (away || i%2 == 1)) {
			code = byte(i + 1)
		}
	}
	if v < 0 {
		code |= 8
	}
	return code
}

// e2m1EvenTab and e2m1AwayTab map a float32 to its code: index = bits>>21 (sign, exponent,
// two mantissa bits) times two, plus 1 when the remaining 21 mantissa bits are zero. Every
// boundary has at most two mantissa bits, so all values strictly inside a bucket round alike.
var e2m1EvenTab, e2m1AwayTab = buildE2M1Tables()

func buildE2M1Tables() (even, away [4096]byte) {
	for b := uint32(0); b < 2048; b++ {
		start := b << 21
		for exact := uint32(0); exact < 2; exact++ {
			bits := start | 1 // a value strictly inside the bucket
			if exact == 1 {
				bits = start
			}
			v := math.Float32frombits(bits)
			even[b<<1|exact] = encodeE2M1Slow(v, false)
			away[b<<1|exact] = encodeE2M1Slow(v, true)
		}
	}
	return
}

// e2m1Index is the table index of v (see e2m1EvenTab).
func e2m1Index(v float32) uint32 {
	u := math.Float32bits(v)
	exact := ((u & (1<<21 - 1)) - 1) >> 31 // 1 when the low 21 bits are zero
	return (u>>21)<<1 | exact
}

// EncodeE2M1Even rounds v to the nearest E2M1 code with ties to the even code (ModelOpt).
// Magnitudes beyond 6 saturate to ±6. The sign bit is set whenever v < 0, so negative values
// that round to zero give code 8 (-0); -0 itself gives code 0. NaN gives code 0.
func EncodeE2M1Even(v float32) byte { return e2m1EvenTab[e2m1Index(v)&4095] }

// EncodeE2M1Away rounds v to the nearest E2M1 code with ties away from zero (the seed
// project). Saturation and signs as for EncodeE2M1Even.
func EncodeE2M1Away(v float32) byte { return e2m1AwayTab[e2m1Index(v)&4095] }
