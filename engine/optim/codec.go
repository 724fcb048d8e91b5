package optim

import (
	"fmt"
	"math"
)

// StateFormat is how the AdamW moments m and v are stored.
type StateFormat int

// State formats.
const (
	// FP32 stores m and v as float32: 8 bytes per parameter.
	FP32 StateFormat = iota
	// Int8 stores m as signed linear int8 and √v as a zero-free unsigned 8-bit code, each in
	// blocks of 64 with a float32 absmax per block: 2.125 bytes per parameter.
	Int8
	// Bit4 stores m as a signed 4-bit companded code (blocks of 128, float32 absmax) and v as a
	// zero-free 4-bit logarithmic code normalised by min(row max, column max) of v (the rank-1
	// normalisation of Li, Chen and Zhu 2023): about 1.03-1.06 bytes per parameter.
	Bit4
)

// ParseStateFormat parses "fp32", "int8" or "4bit".
func ParseStateFormat(s string) (StateFormat, error) {
	switch s {
	case "fp32", "f32":
		return FP32, nil
	case "int8", "8bit":
		return Int8, nil
	case "4bit", "int4":
		return Bit4, nil
	}
	return 0, fmt.Errorf("optimizer state format %q: want fp32, int8 or 4bit", s)
}

func (f StateFormat) String() string {
	return [...]string{"fp32", "int8", "4bit"}[f]
}

const (
	// Int8Block is the number of elements that share one float32 scale in the Int8 format.
	Int8Block = 64
	// Bit4Block is the number of elements that share one float32 absmax in the Bit4 format: the
	// scale of m, and of v for one-row parameters (matrices normalise v by row and column
	// maxima instead).
	Bit4Block = 128
	bit4Block = Bit4Block
)

// The Int8 format's codec, one block (at most Int8Block elements) at a time. Exported so that a
// backend keeping the moments in this layout (engine/cpu's in-place AdamW) encodes them with
// this very code and stays bit-identical to AdamW.

// EncodeInt8M stores a block of m in dst (signed linear int8 of the block's absmax) and
// returns that absmax, the block's scale.
func EncodeInt8M(dst []int8, m []float32) (scale float32) {
	scale = absMax(m)
	encodeInt8Signed(dst, m, scale)
	return scale
}

// DecodeInt8M decodes a block of m stored by EncodeInt8M with its scale.
func DecodeInt8M(dst []float32, src []int8, scale float32) { decodeInt8Signed(dst, src, scale) }

// EncodeInt8V stores a block of v in dst (√v in the zero-free unsigned 8-bit code of the block's
// largest √v) and returns that largest √v, the block's scale.
func EncodeInt8V(dst []uint8, v []float32) (scale float32) {
	scale = Sqrt32(absMax(v))
	encodeSqrtU8(dst, v, scale)
	return scale
}

// DecodeInt8V decodes a block of v stored by EncodeInt8V with its scale.
func DecodeInt8V(dst []float32, src []uint8, scale float32) { decodeSqrtU8(dst, src, scale) }

// The Bit4 format's codec, exported for the same reason: engine/cpu's in-place 4-bit AdamW
// calls these (the very functions AdamW uses) and stays bit-identical to it; engine/cuda's
// kernels are tested against engine/cpu. Element i of a parameter is nibble i&1 (low first) of
// byte i>>1 of its m and v arrays.

// EncodeBit4M stores a block of m, elements off … off+len(m)-1 of parameter param, in the
// nibbles of dst: sign and companded magnitude (k/7)² of the block's absmax, rounded
// stochastically between the two neighbouring levels with Bit4Draw(seed, step, param, index).
// It returns the absmax, the block's scale.
func EncodeBit4M(dst []byte, m []float32, off int, seed, step, param uint64) (scale float32) {
	scale = absMax(m)
	key := Bit4Key(seed, step, param)
	encodeM4(dst, m, scale, off, func(i int) float32 { return Bit4DrawKey(key, uint64(i)) })
	return scale
}

// DecodeBit4M decodes len(dst) elements of m from offset off of src with their block's scale.
func DecodeBit4M(dst []float32, src []byte, scale float32, off int) { decodeM4(dst, src, scale, off) }

// Bit4Draw is the uniform draw in [0, 1) that rounds element idx of parameter param's m at
// step: SRDraw under the key of a stream (seed ^ 1<<40) apart from the bf16 masters' rounding,
// over 2^16, as AdamW draws them (format 2; Bit4DrawKey takes the key computed once).
func Bit4Draw(seed, step, param, idx uint64) float32 {
	return Bit4DrawKey(Bit4Key(seed, step, param), idx)
}

// Bit4Key is the key of the 4-bit m draws of (seed, step, param).
func Bit4Key(seed, step, param uint64) uint32 { return SRKey(seed^1<<40, step, param) }

// Bit4DrawKey is Bit4Draw with the key from Bit4Key.
func Bit4DrawKey(key uint32, idx uint64) float32 { return float32(SRDraw(key, idx)) / 65536 }

// EncodeBit4V returns the 4-bit code of a second moment v under the normaliser norm (the
// smaller of its row's and column's maximum of v, or its block's maximum for one-row
// parameters): 15 + round(log2(v/norm)), clamped to 0…15; 0 when v or norm is not positive.
func EncodeBit4V(v, norm float32) byte { return encodeV4(v, norm) }

// DecodeBit4V decodes code c under normaliser norm: norm·2^-(15-c), or 0 when norm is 0 (a
// state never written).
func DecodeBit4V(c byte, norm float32) float32 {
	if norm == 0 {
		return 0
	}
	return decodeV4(c, norm)
}

// Bit4Nibble returns the code of element i of a nibble array.
func Bit4Nibble(b []byte, i int) byte { return nibble(b, i) }

// SetBit4Nibble stores code c (0…15) as element i of a nibble array.
func SetBit4Nibble(b []byte, i int, c byte) { setNibble(b, i, c) }

// NextV is the second moment after one step, β2·v + ((1−β2)·g·gradScale)·g·gradScale,
// computed as Update computes it: the 4-bit format needs the new v's row and column maxima
// before it encodes anything, so a backend computes them in a first pass with this.
func (k Coeffs) NextV(v, g, gradScale float32) float32 {
	gj := g * gradScale
	return float32(k.b2*v) + float32(float32(k.omb2*gj)*gj)
}

// ---- int8 m: signed linear, block absmax ----
// Format 2 (session 10): the code is the float32 sum y + 1.5·2^23 for y = x·(127/absmax), whose
// low byte is round-half-even(y) in two's complement (|y| ≤ 127.00003 when x is in the block:
// the sum's unit in the last place is 1) — one add on a GPU, where round() and its clamps were
// six instructions. It decodes with one float32 product, absmax·RN(1/127), not a division.

const (
	// int8Round is 1.5·2^23: y + int8Round rounded to float32 holds y rounded to an integer,
	// offset by 0x4B400000 in the float's bits.
	int8Round = 0x1.8p23
	int8Bits  = 0x4B400000
)

// inv127 is RN(1/127), the int8 m decode's factor.
var inv127 = float32(1.0 / 127)

func encodeInt8Signed(dst []int8, src []float32, scale float32) {
	var inv float32
	if scale != 0 {
		inv = 127 / scale
	}
	for i, x := range src {
		dst[i] = int8(uint8(math.Float32bits(float32(x*inv) + int8Round)))
	}
}

func decodeInt8Signed(dst []float32, src []int8, scale float32) {
	f := scale * inv127
	for i, c := range src {
		dst[i] = float32(c) * f
	}
}

// ---- int8 √v: zero-free, level k (0..255) decodes to (k+1)/256 of the block maximum ----
// A true zero decodes to absmax/256: v is over-estimated, so the update m/√v shrinks instead of
// exploding (the seed's NVFP4 moments rounded to exactly zero). The code of √v is k = round(y)
// − 1 for y = RN(√v)·(256/max√v), taken from the float32 sum y + (1.5·2^23 − 1) and clamped to
// 0…255 (a NaN, which only an overflowed v gives, clamps to 255): format 2, one add and two
// integer clamps on a GPU, and the same √v that the update divides by.

func encodeSqrtU8(dst []uint8, src []float32, scale float32) {
	var inv float32
	if scale != 0 {
		inv = 256 / scale
	}
	for i, x := range src {
		k := int64(math.Float32bits(float32(Sqrt32(x)*inv)+(int8Round-1))) - int8Bits
		dst[i] = uint8(max(0, min(255, k)))
	}
}

func decodeSqrtU8(dst []float32, src []uint8, scale float32) {
	f := scale / 256
	for i, c := range src {
		s := (float32(c) + 1) * f
		dst[i] = s * s
	}
	if scale == 0 {
		clear(dst)
	}
}

// ---- 4-bit m: sign + 3-bit companded magnitude (k/7)² of the block absmax ----

var m4Levels = func() (l [8]float32) {
	for k := range l {
		l[k] = float32(k*k) / 49
	}
	return
}()

// encodeM4 rounds stochastically between the two neighbouring levels (u in [0,1) per element
// from rnd), so that small changes of m survive on average instead of being rounded away.
func encodeM4(dst []byte, src []float32, scale float32, off int, rnd func(i int) float32) {
	for i, x := range src {
		var code byte
		if scale != 0 {
			a := min(float32(math.Abs(float64(x)))/scale, 1)
			k := 0
			for k < 7 && m4Levels[k+1] <= a {
				k++
			}
			if k < 7 {
				lo, hi := m4Levels[k], m4Levels[k+1]
				if rnd == nil {
					if a-lo > hi-a {
						k++
					}
				} else if rnd(off+i)*(hi-lo) < a-lo {
					k++
				}
			}
			code = byte(k)
			if x < 0 && k != 0 {
				code |= 8
			}
		}
		setNibble(dst, off+i, code)
	}
}

func decodeM4(dst []float32, src []byte, scale float32, off int) {
	for i := range dst {
		c := nibble(src, off+i)
		v := m4Levels[c&7] * scale
		if c&8 != 0 {
			v = -v
		}
		dst[i] = v
	}
}

// ---- 4-bit v: zero-free logarithmic code for √v ----
// Level k (0..15) decodes to √v = √norm · 2^(-(15-k)/2): half-octave steps over a 2^7.5 range of
// √v below the normaliser. Nothing decodes to zero (the update m/√v cannot explode), and unlike
// a linear zero-free code small values are not inflated to 1/16 of the normaliser.

func encodeV4(v float32, norm float32) byte {
	if norm <= 0 || v <= 0 {
		return 0
	}
	r := v / norm
	b := math.Float32bits(r)
	if b >= 0x7F800000 { // +Inf or NaN: math's own rounding decides
		return encodeV4Log(r)
	}
	// 15 + round(log2(r)) from r's bits: its exponent, plus one when its significand reaches √2
	// (the GPU kernel's test, optim4.cu v4_encode; equal to math.Log2 and math.Round for every
	// float32 r — TestEncodeV4Bits). A subnormal r gives a negative k, clamped to 0 as log2 does.
	k := 15 + int(b>>23) - 127
	if b&0x7FFFFF >= sqrt2Frac {
		k++
	}
	return byte(max(0, min(15, k)))
}

// sqrt2Frac is the 23 fraction bits of the smallest float32 significand above √2.
const sqrt2Frac = 0x3504F4

// encodeV4Log is encodeV4's code from math.Log2 and math.Round, for a positive ratio r.
func encodeV4Log(r float32) byte {
	k := 15 + math.Round(math.Log2(float64(r))) // 2·log2(√(v/norm))
	return byte(max(0, min(15, k)))
}

// v4Pow is 2^-(15-c) for each code c: decodeV4's exact power-of-two factors.
var v4Pow = func() (t [16]float32) {
	for c := range t {
		t[c] = float32(math.Exp2(-float64(15 - c)))
	}
	return
}()

func decodeV4(c byte, norm float32) float32 {
	return norm * v4Pow[c&15]
}

func nibble(b []byte, i int) byte {
	if i&1 == 0 {
		return b[i>>1] & 0xf
	}
	return b[i>>1] >> 4
}

func setNibble(b []byte, i int, c byte) {
	if i&1 == 0 {
		b[i>>1] = b[i>>1]&0xf0 | c
	} else {
		b[i>>1] = b[i>>1]&0x0f | c<<4
	}
}

func absMax(v []float32) float32 {
	var a float32
	for _, x := range v {
		a = max(a, float32(math.Abs(float64(x))))
	}
	return a
}
