package parity

import (
	"fmt"
	"math"

	"github.com/qwengo/qwengo/engine/nvfp4"
)

// The seed project's fp8-scale bug (shared/reference/seed-lessons.md, cause 10).
//
// An NVFP4 weight stores one float8_e4m3fn block scale per 16 elements; on disk and in memory
// that scale is one byte: sign bit 7, exponent bits 3-6 (bias 7), mantissa bits 0-2. The seed
// kept those bytes in a uint8 tensor and, on one of its two numeric paths, converted that tensor
// to float with an ordinary integer-to-float cast instead of decoding the E4M3 bits. So the
// byte 0x38 (E4M3 1.0) became 56, 0x30 (0.5) became 48, 0x7E (448) became 126, 0x04 (2^-7)
// became 4. Every element then dequantised as
//
//	x = E2M1[code] · float(byte) · g      instead of      x = E2M1[code] · e4m3(byte) · g.
//
// How bad that is depends on where the scales sit:
//   - the seed's own .dat variant has no tensor scale (g = 1), so block scales are about
//     amax_block/6, 0.001-0.1 for real weights, i.e. small bytes: as integers 1..48 they
//     multiply the layer's weights by 10^2-10^4 (×406 in RMS on the tiny test model). Through
//     36 layers in bf16 the activations overflow, the logits turn NaN, and an argmax over an
//     all-NaN row returns index 0, the token "!" — the seed's `!!!!` output;
//   - ModelOpt checkpoints (and our NVFP4 quantiser) carry g = amax/(6·448), so block scales
//     sit near 448·amax_block/amax, typically 32..448 (bytes 0x60..0x7E): as integers 96..126.
//     The per-block scale structure flattens and the layer is rescaled (weight RMS ×0.5 on the
//     tiny test model, hidden-state cosine 0.70 at that layer) — not a crash but a silently
//     wrong layer, exactly what a layer-wise parity report must catch.
//
// ScaleBugDequantize gives the exact buggy image; ReadScalesAsIntegers the closest NVFP4 matrix
// (used where the backend keeps weights as NVFP4, so the image must still be E4M3 scales).

// ScaleBugDequantize returns q dequantised the way the bug did: each block scale byte taken
// as the unsigned integer it is (0..255) rather than decoded as E4M3, times the tensor scale.
// q must be valid.
func ScaleBugDequantize(q *nvfp4.Matrix) []float32 {
	e2m1 := nvfp4.E2M1Magnitudes()
	out := make([]float32, q.Rows*q.Cols)
	nb := q.Cols / nvfp4.BlockSize
	for r := 0; r < q.Rows; r++ {
		for b := 0; b < nb; b++ {
			f := float32(q.Scales[r*nb+b]) * q.Global
			for k := 0; k < nvfp4.BlockSize; k++ {
				c := r*q.Cols + b*nvfp4.BlockSize + k
				code := q.Packed[c/2] >> (4 * (c & 1)) & 0xf
				v := e2m1[code&7] * f
				if code&8 != 0 {
					v = -v
				}
				out[c] = v
			}
		}
	}
	return out
}

// ReadScalesAsIntegers returns a copy of q whose block scales decode to (the E4M3 value
// nearest to) the integer value of the original scale bytes, so an NVFP4 backend computes what
// the bug computed. Integers up to 16 are exact in E4M3; above, the rounding is within 1/16
// relative (3 mantissa bits), far below the bug's own error. q itself is unchanged.
func ReadScalesAsIntegers(q *nvfp4.Matrix) *nvfp4.Matrix {
	c := *q
	c.Scales = make([]byte, len(q.Scales))
	for i, s := range q.Scales {
		c.Scales[i] = nvfp4.EncodeE4M3(float32(s))
	}
	c.Packed = append([]byte(nil), q.Packed...)
	return &c
}

// scaleStats summarises what the bug did to one weight, for the report's notes.
type scaleStats struct {
	blocks               int
	minDec, maxDec       float32 // decoded E4M3 scales
	minInt, maxInt       int     // the same bytes as integers
	sumOrig2, sumBuggy2  float64 // Σx² of the correct and the buggy image
	nonFinite, zeroBytes int
}

func (s *scaleStats) add(q *nvfp4.Matrix, buggy []float32) {
	for _, b := range q.Scales {
		d := nvfp4.DecodeE4M3(b)
		if s.blocks == 0 || d < s.minDec {
			s.minDec = d
		}
		if s.blocks == 0 || d > s.maxDec {
			s.maxDec = d
		}
		if s.blocks == 0 || int(b) < s.minInt {
			s.minInt = int(b)
		}
		if s.blocks == 0 || int(b) > s.maxInt {
			s.maxInt = int(b)
		}
		if b == 0 {
			s.zeroBytes++
		}
		s.blocks++
	}
	orig := q.Dequantize()
	for i, x := range orig {
		s.sumOrig2 += float64(x) * float64(x)
		y := float64(buggy[i])
		if math.IsNaN(y) || math.IsInf(y, 0) {
			s.nonFinite++
		}
		s.sumBuggy2 += y * y
	}
}

func (s *scaleStats) String() string {
	ratio := math.NaN()
	if s.sumOrig2 > 0 {
		ratio = math.Sqrt(s.sumBuggy2 / s.sumOrig2)
	}
	return fmt.Sprintf("%d block scales: decoded E4M3 %.4g..%.4g, read as integers %d..%d; weight RMS ×%.3g",
		s.blocks, s.minDec, s.maxDec, s.minInt, s.maxInt, ratio)
}
