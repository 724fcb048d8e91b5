package nvfp4

import (
	"fmt"
	"math"
	"runtime"
	"sync"
)

// parallelMin is the element count below which quantisation stays on the calling goroutine.
const parallelMin = 1 << 16

// forRows splits [0, rows) into at most workers contiguous ranges and runs fn(k, r0, r1) for
// range k, each on its own goroutine when the matrix is large. It returns the number of ranges.
func forRows(rows, cols, workers int, fn func(k, r0, r1 int)) int {
	workers = min(workers, rows)
	if rows*cols < parallelMin || workers <= 1 {
		fn(0, 0, rows)
		return 1
	}
	var wg sync.WaitGroup
	for k := range workers {
		r0, r1 := rows*k/workers, rows*(k+1)/workers
		wg.Go(func() { fn(k, r0, r1) })
	}
	wg.Wait()
	return workers
}

// absBits is |x| as float32 bits: for non-negative floats the integer order is the float order.
func absBits(x float32) uint32 { return math.Float32bits(x) & 0x7fffffff }

// scan checks the shape and the values and returns amax(|x|) of every block and of the
// whole tensor, or an error naming the first non-finite value.
func scan(w []float32, rows, cols int) ([]float32, float32, error) {
	if rows <= 0 || cols <= 0 || cols%BlockSize != 0 {
		return nil, 0, fmt.Errorf("nvfp4: cannot quantise shape [%d, %d]: rows must be positive and columns a positive multiple of %d", rows, cols, BlockSize)
	}
	if rows > math.MaxInt/cols || len(w) != rows*cols {
		return nil, 0, fmt.Errorf("nvfp4: %d values for shape [%d, %d] (want %d)", len(w), rows, cols, rows*cols)
	}
	blocks := make([]float32, rows*cols/BlockSize)
	workers := runtime.GOMAXPROCS(0)
	amax := make([]uint32, workers)
	bad := make([]int, workers)
	n := forRows(rows, cols, workers, func(k, r0, r1 int) {
		var a uint32
		bad[k] = -1
		for b := r0 * cols / BlockSize; b < r1*cols/BlockSize; b++ {
			blk := (*[BlockSize]float32)(w[b*BlockSize:])
			var ba uint32
			for _, x := range blk {
				ba = max(ba, absBits(x))
			}
			if ba >= 0x7f800000 { // Inf or NaN (NaN bits sort above Inf)
				for j, x := range blk {
					if absBits(x) >= 0x7f800000 {
						bad[k] = b*BlockSize + j
						return
					}
				}
			}
			blocks[b] = math.Float32frombits(ba)
			a = max(a, ba)
		}
		amax[k] = a
	})
	first := -1
	var a uint32
	for k := range n {
		if bad[k] >= 0 && (first < 0 || bad[k] < first) {
			first = bad[k]
		}
		a = max(a, amax[k])
	}
	if first >= 0 {
		return nil, 0, fmt.Errorf("nvfp4: value %v at row %d, column %d is not finite", w[first], first/cols, first%cols)
	}
	return blocks, math.Float32frombits(a), nil
}

func newMatrix(rows, cols int, g float32) *Matrix {
	return &Matrix{Rows: rows, Cols: cols, Packed: make([]byte, rows*cols/2), Scales: make([]byte, rows*cols/BlockSize), Global: g}
}

// QuantizeModelOpt quantises a row-major [rows, cols] float32 matrix as NVIDIA ModelOpt does,
// every step in float32 as torch computes it:
//
//	g = amax(|W|) / 2688                      (2688 = 6*448)
//	s = e4m3(amax_block / (6*g)), all-zero block -> s = 1.0
//	q = round_e2m1(x / (float(s)*g)), ties to the even code, |x/(s g)| saturating at 6
//
// The result is byte-identical to ModelOpt's weight, weight_scale and weight_scale_2, with two
// documented departures where ModelOpt would produce NaN or lose a block: an all-zero tensor
// gets g = 1 (so every scale is 1.0 and every code 0), and a nonzero block whose scale
// rounds to E4M3 zero (amax_block <= amax/458752, up to float rounding) gets the smallest scale 2^-9 instead of
// dividing by zero. cols must be a multiple of 16 and every value finite; errors name the
// offending shape or element.
func QuantizeModelOpt(w []float32, rows, cols int) (*Matrix, error) {
	bmax, amax, err := scan(w, rows, cols)
	if err != nil {
		return nil, err
	}
	g := amax / (6 * 448)
	if g == 0 {
		g = 1
	}
	m := newMatrix(rows, cols, g)
	six := 6 * g
	forRows(rows, cols, runtime.GOMAXPROCS(0), func(_, r0, r1 int) {
		for b := r0 * cols / BlockSize; b < r1*cols/BlockSize; b++ {
			blk := (*[BlockSize]float32)(w[b*BlockSize:])
			bs := bmax[b] / six
			if bs == 0 {
				bs = 1
			}
			s := EncodeE4M3(bs)
			if s == 0 {
				s = 1
			}
			m.Scales[b] = s
			denom := e4m3Table[s] * g
			out := (*[BlockSize / 2]byte)(m.Packed[b*(BlockSize/2):])
			for j := range out {
				lo := e2m1EvenTab[e2m1Index(blk[2*j]/denom)&4095]
				hi := e2m1EvenTab[e2m1Index(blk[2*j+1]/denom)&4095]
				out[j] = lo | hi<<4
			}
		}
	})
	return m, nil
}

// seedScaleMin is the seed's lower clamp of a block scale, 2^-16 — below E4M3's smallest
// subnormal 2^-9, so it rounds to a zero scale.
const seedScaleMin = 1.0 / 65536

// QuantizeSeed quantises like the seed project's .dat writer: no tensor scale (Global = 1),
//
//	s = e4m3(clamp(amax_block/6, 2^-16, 448))
//	v = clamp(x / (float(s) + 1e-12), -6, 6)
//	q = round_e2m1(v), ties away from zero, sign bit set when v < 0 (tiny negatives -> code 8)
//
// in float32, byte-identical to the seed. Known seed behaviour, kept for compatibility: a
// block whose amax is at most 6*2^-10 (about 0.0059) gets a zero scale (the clamp floor 2^-16
// rounds to E4M3 zero), so it decodes to all zeros whatever its codes. That is harmless for
// weights and destructive for small values such as optimizer moments.
func QuantizeSeed(w []float32, rows, cols int) (*Matrix, error) {
	bmax, _, err := scan(w, rows, cols)
	if err != nil {
		return nil, err
	}
	m := newMatrix(rows, cols, 1)
	forRows(rows, cols, runtime.GOMAXPROCS(0), func(_, r0, r1 int) {
		for b := r0 * cols / BlockSize; b < r1*cols/BlockSize; b++ {
			blk := (*[BlockSize]float32)(w[b*BlockSize:])
			bs := min(max(bmax[b]/6, seedScaleMin), E4M3Max)
			s := EncodeE4M3(bs)
			m.Scales[b] = s
			denom := e4m3Table[s] + 1e-12
			out := (*[BlockSize / 2]byte)(m.Packed[b*(BlockSize/2):])
			for j := range out {
				// Clamping to ±6 first gives the same code as saturating rounding.
				lo := e2m1AwayTab[e2m1Index(blk[2*j]/denom)&4095]
				hi := e2m1AwayTab[e2m1Index(blk[2*j+1]/denom)&4095]
				out[j] = lo | hi<<4
			}
		}
	})
	return m, nil
}
