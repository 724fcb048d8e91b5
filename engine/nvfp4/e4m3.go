package nvfp4

import "math"

// E4M3Max is the largest finite float8_e4m3fn value.
const E4M3Max = 448

// e4m3Table decodes every float8_e4m3fn byte.
var e4m3Table = func() (t [256]float32) {
	for c := 0; c < 256; c++ {
		exp, man := (c>>3)&0xf, c&7
		var v float64
		switch {
		case exp == 0xf && man == 7:
			v = math.NaN()
		case exp == 0:
			v = math.Ldexp(float64(man), -9) // subnormal: man/8 * 2^-6
		default:
			v = math.Ldexp(float64(8+man), exp-10) // (1 + man/8) * 2^(exp-7)
		}
		if c&0x80 != 0 {
			v = -v
		}
		t[c] = float32(v)
	}
	return
}()

// E4M3Table returns the decoded value of every byte (a copy of the decoder's table).
func E4M3Table() [256]float32 { return e4m3Table }

// DecodeE4M3 returns the value of a float8_e4m3fn byte: sign bit 7, exponent bits 3-6 (bias
// 7), mantissa bits 0-2. Exponent 0 is subnormal (mantissa/8 * 2^-6, smallest 2^-9); the
// largest finite value is 448 (0x7E). NaN only at 0x7F and 0xFF: the other exponent-15 codes
// 0x78..0x7E are the finite values 256..448. 0x80 is -0. There are no infinities.
func DecodeE4M3(b byte) float32 { return e4m3Table[b] }

// EncodeE4M3 rounds x to the nearest float8_e4m3fn value with ties to even. Unlike a plain
// torch cast (which gives NaN), finite values beyond ±448 and ±Inf saturate to ±448 (0x7E /
// 0xFE) — the same bytes as torch's x.clamp(-448, 448).to(torch.float8_e4m3fn), the form
// ModelOpt uses. NaN encodes as 0x7F. The sign is kept for zeros and for negative values that
// round to zero (0x80).
func EncodeE4M3(x float32) byte {
	u := math.Float32bits(x)
	sign := byte(u>>24) & 0x80
	u &= 0x7fffffff
	switch {
	case u > 0x7f800000:
		return 0x7f
	case u >= 0x43e00000: // 448
		return sign | 0x7e
	case u < 0x3c800000: // below 2^-6: subnormal, a multiple of 2^-9
		m := math.RoundToEven(float64(math.Float32frombits(u)) * 512)
		return sign | byte(m) // m = 8 is code 0x08 = 2^-6, the smallest normal
	}
	// Normal: round the 23-bit mantissa to 3 bits, ties to even; a carry bumps the exponent.
	u += 0x7ffff + (u>>20)&1
	exp := u>>23 - 127 + 7
	// x < 448 here, so the result is at most 0x7E (448) and never the NaN code.
	return sign | byte(exp<<3) | byte(u>>20)&7
}
