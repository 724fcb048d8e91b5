// Package nvfp4 is the NVFP4 codec: 4-bit E2M1 elements in blocks of 16 along a row's input
// dimension, an FP8 E4M3 scale per block, and an FP32 scale per tensor.
//
// Two quantisers are provided. QuantizeModelOpt follows NVIDIA ModelOpt (the layout vLLM and
// TensorRT-LLM load): g = amax/(6*448), block scale e4m3(amax_block/(6g)), elements rounded to
// the nearest E2M1 value with ties to the even code. QuantizeSeed reproduces the seed project's
// variant (no tensor scale, scales clamped to [2^-16, 448], ties away from zero) so its `.dat`
// files can be read and rewritten byte for byte. Both share one Matrix type and one decoder.
//
// Bytes are packed as the checkpoints store them: byte j of a row holds element 2j in the low
// nibble and 2j+1 in the high nibble. Code 8 is -0 (both quantisers set the sign bit of tiny
// negative inputs).
package nvfp4

import (
	"fmt"
	"math"
)

// BlockSize is the number of elements sharing one E4M3 scale.
const BlockSize = 16

// E2M1 holds the magnitudes of the eight non-negative codes.
var E2M1 = [8]float32{0, 0.5, 1, 1.5, 2, 3, 4, 6}

// e2m1Bounds are the rounding boundaries between neighbouring magnitudes.
var e2m1Bounds = [7]float32{0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0}

// DecodeE2M1 returns the value of a 4-bit code (bit 3 = sign).
func DecodeE2M1(code byte) float32 {
	v := E2M1[code&7]
	if code&8 != 0 {
		return -v
	}
	return v
}

// EncodeE2M1Even rounds v to the nearest E2M1 code, ties to the even code (ModelOpt). Values
// beyond ±6 saturate; any negative input (even one that rounds to 0) gets the sign bit, as
// ModelOpt's (x < 0) does; -0 does not.
func EncodeE2M1Even(v float32) byte {
	a := float32(math.Abs(float64(v)))
	var code byte
	for i, b := range e2m1Bounds {
		if a > b || (a == b && i%2 == 1) { // at a boundary, odd boundaries round up to the even code
			code = byte(i + 1)
		}
	}
	if v < 0 {
		code |= 8
	}
	return code
}

// EncodeE2M1Away rounds v to the nearest E2M1 code, ties away from zero (the seed).
func EncodeE2M1Away(v float32) byte {
	a := float32(math.Abs(float64(v)))
	var code byte
	for i, b := range e2m1Bounds {
		if a >= b {
			code = byte(i + 1)
		}
	}
	if v < 0 {
		code |= 8
	}
	return code
}

// e4m3Table decodes every FP8 E4M3 (fn variant) byte.
var e4m3Table = func() (t [256]float32) {
	for c := 0; c < 256; c++ {
		sign := float32(1)
		if c&0x80 != 0 {
			sign = -1
		}
		exp := (c >> 3) & 0xf
		man := c & 7
		switch {
		case exp == 0xf && man == 7:
			t[c] = float32(math.NaN())
		case exp == 0:
			t[c] = sign * float32(man) / 8 * float32(math.Ldexp(1, -6))
		default:
			t[c] = sign * (1 + float32(man)/8) * float32(math.Ldexp(1, exp-7))
		}
	}
	return
}()

// DecodeE4M3 returns the value of an FP8 E4M3 byte: subnormals below 2^-6, maximum 448, NaN
// only at 0x7F and 0xFF (exponent 15 with other mantissas is finite: 256..416).
func DecodeE4M3(b byte) float32 { return e4m3Table[b] }

// EncodeE4M3 rounds x to the nearest E4M3 value, ties to even. Finite values beyond ±448
// saturate to ±448 (torch would give NaN; callers clamp first, as ModelOpt does); NaN → 0x7F.
func EncodeE4M3(x float32) byte {
	if x != x {
		return 0x7f
	}
	var sign byte
	if math.Signbit(float64(x)) {
		sign = 0x80
		x = -x
	}
	if x >= 448 {
		return sign | 0x7e
	}
	// Binary search over the 127 non-negative finite codes, which are monotonic.
	lo, hi := 0, 0x7e
	for lo < hi {
		mid := (lo + hi + 1) / 2
		if e4m3Table[mid] <= x {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	if lo == 0x7e || e4m3Table[lo] == x {
		return sign | byte(lo)
	}
	below, above := e4m3Table[lo], e4m3Table[lo+1]
	d1, d2 := x-below, above-x
	if d2 < d1 || (d1 == d2 && lo&1 == 1) {
		lo++
	}
	return sign | byte(lo)
}

// Matrix is an NVFP4-quantised [Rows, Cols] matrix.
type Matrix struct {
	Rows, Cols int
	Packed     []byte  // [Rows][Cols/2] E2M1 codes, even element in the low nibble
	Scales     []byte  // [Rows][Cols/16] E4M3 block scales
	Global     float32 // per-tensor scale g (ModelOpt weight_scale_2); 1 for the seed variant
}

// Validate checks shapes and buffer sizes.
func (m *Matrix) Validate() error {
	switch {
	case m.Rows <= 0 || m.Cols <= 0:
		return fmt.Errorf("nvfp4: shape [%d, %d] must be positive", m.Rows, m.Cols)
	case m.Cols%BlockSize != 0:
		return fmt.Errorf("nvfp4: %d columns is not a multiple of the block size %d", m.Cols, BlockSize)
	case len(m.Packed) != m.Rows*m.Cols/2:
		return fmt.Errorf("nvfp4: packed data has %d bytes, [%d, %d] needs %d", len(m.Packed), m.Rows, m.Cols, m.Rows*m.Cols/2)
	case len(m.Scales) != m.Rows*m.Cols/BlockSize:
		return fmt.Errorf("nvfp4: scales have %d bytes, [%d, %d] needs %d", len(m.Scales), m.Rows, m.Cols, m.Rows*m.Cols/BlockSize)
	case math.IsNaN(float64(m.Global)) || math.IsInf(float64(m.Global), 0):
		return fmt.Errorf("nvfp4: tensor scale %v is not finite", m.Global)
	}
	for i, s := range m.Scales {
		if s&0x7f == 0x7f {
			return fmt.Errorf("nvfp4: block scale %d (row %d, block %d) is NaN (byte %#02x)", i, i/(m.Cols/BlockSize), i%(m.Cols/BlockSize), s)
		}
	}
	return nil
}

// Bytes is the storage size: 4.5 bits per element plus 4 bytes for the tensor scale.
func (m *Matrix) Bytes() int64 { return int64(len(m.Packed) + len(m.Scales) + 4) }

func checkShape(w []float32, rows, cols int) error {
	if rows <= 0 || cols <= 0 || cols%BlockSize != 0 {
		return fmt.Errorf("nvfp4: cannot quantise shape [%d, %d]: columns must be a positive multiple of %d", rows, cols, BlockSize)
	}
	if len(w) != rows*cols {
		return fmt.Errorf("nvfp4: %d values for shape [%d, %d]", len(w), rows, cols)
	}
	for i, x := range w {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return fmt.Errorf("nvfp4: value %v at row %d, column %d is not finite", x, i/cols, i%cols)
		}
	}
	return nil
}

func newMatrix(rows, cols int) *Matrix {
	return &Matrix{Rows: rows, Cols: cols, Packed: make([]byte, rows*cols/2), Scales: make([]byte, rows*cols/BlockSize)}
}

func absMax(v []float32) float32 {
	var a float32
	for _, x := range v {
		if x < 0 {
			x = -x
		}
		if x > a {
			a = x
		}
	}
	return a
}

// QuantizeModelOpt quantises a row-major [rows, cols] matrix the way NVIDIA ModelOpt does,
// in float32 arithmetic matching torch's. An all-zero tensor gets g = 1 (and zero codes).
// A block scale that underflows E4M3 (amax_block/(6g) < 2^-10) would divide by zero in
// ModelOpt; here it is raised to the smallest subnormal so the result stays finite.
func QuantizeModelOpt(w []float32, rows, cols int) (*Matrix, error) {
	if err := checkShape(w, rows, cols); err != nil {
		return nil, err
	}
	m := newMatrix(rows, cols)
	amax := absMax(w)
	g := amax / (6 * 448)
	if g == 0 {
		g = 1
	}
	m.Global = g
	six := 6 * g
	for b := 0; b < rows*cols/BlockSize; b++ {
		blk := w[b*BlockSize : (b+1)*BlockSize]
		bs := absMax(blk) / six
		if bs == 0 {
			bs = 1
		}
		s := EncodeE4M3(bs)
		if s == 0 {
			s = 1
		}
		m.Scales[b] = s
		denom := DecodeE4M3(s) * g
		for j := 0; j < BlockSize; j += 2 {
			lo := EncodeE2M1Even(blk[j] / denom)
			hi := EncodeE2M1Even(blk[j+1] / denom)
			m.Packed[(b*BlockSize+j)/2] = lo | hi<<4
		}
	}
	return m, nil
}

// QuantizeSeed quantises like the seed project's `.dat` writer: no tensor scale (Global = 1),
// scale e4m3(clamp(amax_block/6, 2^-16, 448)), v = clamp(x/(scale+1e-12), -6, 6), magnitudes by
// the midpoint thresholds with ties away from zero. A block whose amax is below ~0.0059 rounds
// to all zeros: the scale's floor (2^-16) is below E4M3's smallest subnormal (2^-9).
func QuantizeSeed(w []float32, rows, cols int) (*Matrix, error) {
	if err := checkShape(w, rows, cols); err != nil {
		return nil, err
	}
	m := newMatrix(rows, cols)
	m.Global = 1
	for b := 0; b < rows*cols/BlockSize; b++ {
		blk := w[b*BlockSize : (b+1)*BlockSize]
		bs := absMax(blk) / 6
		bs = min(max(bs, float32(math.Ldexp(1, -16))), 448)
		s := EncodeE4M3(bs)
		m.Scales[b] = s
		denom := DecodeE4M3(s) + 1e-12
		for j := 0; j < BlockSize; j += 2 {
			lo := EncodeE2M1Away(min(max(blk[j]/denom, -6), 6))
			hi := EncodeE2M1Away(min(max(blk[j+1]/denom, -6), 6))
			m.Packed[(b*BlockSize+j)/2] = lo | hi<<4
		}
	}
	return m, nil
}

// pairTable[b] holds the two E2M1 values of packed byte b (low nibble first).
var pairTable = func() (t [256][2]float32) {
	for b := 0; b < 256; b++ {
		t[b] = [2]float32{DecodeE2M1(byte(b) & 0xf), DecodeE2M1(byte(b) >> 4)}
	}
	return
}()

// DecodeRow writes row r, dequantised, into dst[:Cols].
func (m *Matrix) DecodeRow(dst []float32, r int) { m.DecodeRows(dst, r, r+1) }

// DecodeRows writes rows r0..r1-1, dequantised, into dst[:(r1-r0)*Cols]. It allocates nothing.
func (m *Matrix) DecodeRows(dst []float32, r0, r1 int) {
	blocks := m.Cols / BlockSize
	dst = dst[:(r1-r0)*m.Cols]
	packed := m.Packed[r0*m.Cols/2 : r1*m.Cols/2]
	scales := m.Scales[r0*blocks : r1*blocks]
	for b, s := range scales {
		f := e4m3Table[s] * m.Global
		src := packed[b*BlockSize/2 : (b+1)*BlockSize/2]
		out := dst[b*BlockSize : (b+1)*BlockSize]
		for j, p := range src {
			pr := &pairTable[p]
			out[2*j] = pr[0] * f
			out[2*j+1] = pr[1] * f
		}
	}
}

// Dequantize returns the whole matrix as float32.
func (m *Matrix) Dequantize() []float32 {
	out := make([]float32, m.Rows*m.Cols)
	m.DecodeRows(out, 0, m.Rows)
	return out
}

// RelRMSE is sqrt(Σ(x-x̂)²/Σx²): the per-tensor relative error of the quantisation.
func RelRMSE(orig []float32, m *Matrix) float64 {
	deq := m.Dequantize()
	var num, den float64
	for i, x := range orig {
		d := float64(x) - float64(deq[i])
		num += d * d
		den += float64(x) * float64(x)
	}
	if den == 0 {
		return math.Sqrt(num)
	}
	return math.Sqrt(num / den)
}
