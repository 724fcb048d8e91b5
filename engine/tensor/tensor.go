// Package tensor holds the small vocabulary every engine package shares:
// element types (DType), host tensors as raw little-endian bytes (Host), and
// exact conversions between the 16-bit float formats and float32.
//
// It deliberately knows nothing about devices or models: formats decode into
// Host tensors, backends upload Host tensors, and the codec packages (nvfp4)
// interpret the packed types.
package tensor

import (
	"encoding/binary"
	"fmt"
	"math"
	"sync"

	"github.com/qwengo/qwengo/engine/internal/par"
)

// DType is an element type as stored in a file or a buffer.
type DType uint8

// Element types. The names follow safetensors spelling where one exists.
const (
	Invalid DType = iota
	F32
	F16
	BF16
	F64
	F8E4M3   // float8_e4m3fn: NVFP4 block scales
	F4E2M1x2 // two E2M1 codes per byte, even element in the low nibble
	U8
	I8
	I16
	I32
	I64
	Bool
)

var dtypeInfo = [...]struct {
	name string
	size int
}{
	Invalid:  {"invalid", 0},
	F32:      {"F32", 4},
	F16:      {"F16", 2},
	BF16:     {"BF16", 2},
	F64:      {"F64", 8},
	F8E4M3:   {"F8_E4M3", 1},
	F4E2M1x2: {"F4_E2M1x2", 1},
	U8:       {"U8", 1},
	I8:       {"I8", 1},
	I16:      {"I16", 2},
	I32:      {"I32", 4},
	I64:      {"I64", 8},
	Bool:     {"BOOL", 1},
}

// String returns the safetensors spelling of d.
func (d DType) String() string {
	if int(d) < len(dtypeInfo) {
		return dtypeInfo[d].name
	}
	return fmt.Sprintf("dtype(%d)", uint8(d))
}

// Size is the number of bytes one element (or one packed pair) occupies.
func (d DType) Size() int {
	if int(d) < len(dtypeInfo) {
		return dtypeInfo[d].size
	}
	return 0
}

// IsFloat reports whether d converts to float32 with Host.Float32s.
func (d DType) IsFloat() bool { return d == F32 || d == F16 || d == BF16 || d == F64 }

// ParseDType maps a safetensors dtype string to a DType.
func ParseDType(s string) (DType, error) {
	for i, info := range dtypeInfo {
		if i != int(Invalid) && info.name == s {
			return DType(i), nil
		}
	}
	return Invalid, fmt.Errorf("unknown dtype %q", s)
}

// Numel is the product of shape (1 for a scalar).
func Numel(shape []int) int {
	n := 1
	for _, d := range shape {
		n *= d
	}
	return n
}

// Host is a tensor in host memory: raw little-endian bytes plus metadata.
type Host struct {
	Name  string
	DType DType
	Shape []int
	Data  []byte
}

// Numel is the element count of t.
func (t *Host) Numel() int { return Numel(t.Shape) }

// Validate checks that the data length matches dtype and shape.
func (t *Host) Validate() error {
	want := t.Numel() * t.DType.Size()
	if t.DType.Size() == 0 {
		return fmt.Errorf("tensor %q: invalid dtype %v", t.Name, t.DType)
	}
	if len(t.Data) != want {
		return fmt.Errorf("tensor %q: %v%v needs %d bytes, have %d", t.Name, t.DType, t.Shape, want, len(t.Data))
	}
	return nil
}

// Float32s decodes a floating-point tensor into float32 (exact for F16/BF16).
// dst is reused when it has the capacity.
func (t *Host) Float32s(dst []float32) ([]float32, error) {
	if err := t.Validate(); err != nil {
		return nil, err
	}
	n := t.Numel()
	if cap(dst) < n {
		dst = make([]float32, n)
	}
	dst = dst[:n]
	b := t.Data
	var conv func(lo, hi int)
	switch t.DType {
	case F32:
		conv = func(lo, hi int) {
			for i := lo; i < hi; i++ {
				dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
			}
		}
	case F16:
		conv = func(lo, hi int) {
			for i := lo; i < hi; i++ {
				dst[i] = F16ToF32(binary.LittleEndian.Uint16(b[2*i:]))
			}
		}
	case BF16:
		conv = func(lo, hi int) {
			for i := lo; i < hi; i++ {
				dst[i] = BF16ToF32(binary.LittleEndian.Uint16(b[2*i:]))
			}
		}
	case F64:
		conv = func(lo, hi int) {
			for i := lo; i < hi; i++ {
				dst[i] = float32(math.Float64frombits(binary.LittleEndian.Uint64(b[8*i:])))
			}
		}
	default:
		return nil, fmt.Errorf("tensor %q: dtype %v is not a float type", t.Name, t.DType)
	}
	inParallel(n, conv)
	return dst, nil
}

// FirstNonFinite returns the flat index of the first NaN or Inf of a float tensor, or -1
// (also for non-float types), reading the raw bytes: no float32 copy of a large embedding. Large
// tensors are scanned on every core.
func (t *Host) FirstNonFinite() (int, error) {
	if err := t.Validate(); err != nil {
		return -1, err
	}
	d := t.Data
	var scan func(lo, hi int) int // the first NaN or Inf in [lo, hi), or -1
	switch t.DType {
	case F32:
		scan = func(lo, hi int) int {
			for i := lo; i < hi; i++ {
				if binary.LittleEndian.Uint32(d[4*i:])&0x7f800000 == 0x7f800000 {
					return i
				}
			}
			return -1
		}
	case BF16:
		scan = func(lo, hi int) int {
			for i := lo; i < hi; i++ {
				if binary.LittleEndian.Uint16(d[2*i:])&0x7f80 == 0x7f80 {
					return i
				}
			}
			return -1
		}
	case F16:
		scan = func(lo, hi int) int {
			for i := lo; i < hi; i++ {
				if binary.LittleEndian.Uint16(d[2*i:])&0x7c00 == 0x7c00 {
					return i
				}
			}
			return -1
		}
	case F64:
		scan = func(lo, hi int) int {
			for i := lo; i < hi; i++ {
				x := math.Float64frombits(binary.LittleEndian.Uint64(d[8*i:]))
				if math.IsNaN(x) || math.IsInf(x, 0) {
					return i
				}
			}
			return -1
		}
	default:
		return -1, nil
	}
	var mu sync.Mutex
	first := -1
	inParallel(t.Numel(), func(lo, hi int) {
		if i := scan(lo, hi); i >= 0 {
			mu.Lock()
			if first < 0 || i < first {
				first = i
			}
			mu.Unlock()
		}
	})
	return first, nil
}

// parallelPer is the fewest elements Float32s and FirstNonFinite give a goroutine: a model's
// matrices (tens of millions of elements) are checked and decoded on load, on the loader's
// critical path, on every core; small tensors stay on the caller.
const parallelPer = 1 << 18

// inParallel runs fn over [0, n) in contiguous ranges, one a core when n is large.
func inParallel(n int, fn func(lo, hi int)) { par.For(n, parallelPer, fn) }

// FromFloat32s encodes v as dtype (F32, F16 or BF16, round to nearest even).
func FromFloat32s(name string, dtype DType, shape []int, v []float32) (*Host, error) {
	if Numel(shape) != len(v) {
		return nil, fmt.Errorf("tensor %q: shape %v holds %d elements, got %d", name, shape, Numel(shape), len(v))
	}
	t := &Host{Name: name, DType: dtype, Shape: append([]int(nil), shape...)}
	switch dtype {
	case F32:
		t.Data = make([]byte, 4*len(v))
		for i, x := range v {
			binary.LittleEndian.PutUint32(t.Data[4*i:], math.Float32bits(x))
		}
	case F16:
		t.Data = make([]byte, 2*len(v))
		for i, x := range v {
			binary.LittleEndian.PutUint16(t.Data[2*i:], F32ToF16(x))
		}
	case BF16:
		t.Data = make([]byte, 2*len(v))
		for i, x := range v {
			binary.LittleEndian.PutUint16(t.Data[2*i:], F32ToBF16(x))
		}
	default:
		return nil, fmt.Errorf("tensor %q: cannot encode float32 as %v", name, dtype)
	}
	return t, nil
}

// BF16ToF32 widens a bfloat16 bit pattern exactly.
func BF16ToF32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// F32ToBF16 rounds to nearest even; NaN stays NaN.
func F32ToBF16(f float32) uint16 {
	b := math.Float32bits(f)
	if b&0x7fffffff > 0x7f800000 { // NaN: keep it quiet and non-zero
		return uint16(b>>16) | 0x40
	}
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}

// F16ToF32 widens an IEEE half bit pattern exactly (subnormals, Inf, NaN).
func F16ToF32(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	man := uint32(h) & 0x3ff
	switch {
	case exp == 0 && man == 0:
		return math.Float32frombits(sign)
	case exp == 0: // subnormal: normalise
		e := uint32(127 - 15 + 1)
		for man&0x400 == 0 {
			man <<= 1
			e--
		}
		man &= 0x3ff
		return math.Float32frombits(sign | e<<23 | man<<13)
	case exp == 0x1f:
		return math.Float32frombits(sign | 0x7f800000 | man<<13)
	}
	return math.Float32frombits(sign | (exp+127-15)<<23 | man<<13)
}

// F32ToF16 rounds to nearest even, with overflow to Inf and gradual underflow.
func F32ToF16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int32(b>>23) & 0xff
	man := b & 0x7fffff
	if exp == 0xff {
		if man != 0 {
			return sign | 0x7e00
		}
		return sign | 0x7c00
	}
	e := exp - 127 + 15
	if e >= 0x1f {
		return sign | 0x7c00
	}
	if e <= 0 {
		if e < -10 {
			return sign
		}
		man |= 0x800000
		shift := uint32(14 - e)
		half := uint32(1) << (shift - 1)
		rem := man & (1<<shift - 1)
		out := man >> shift
		if rem > half || (rem == half && out&1 == 1) {
			out++
		}
		return sign | uint16(out)
	}
	out := uint32(e)<<10 | man>>13
	rem := man & 0x1fff
	if rem > 0x1000 || (rem == 0x1000 && out&1 == 1) {
		out++ // may carry into the exponent, which is the correct result
	}
	return sign | uint16(out)
}
