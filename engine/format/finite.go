package format

import (
	"encoding/binary"
	"fmt"

	"github.com/qwengo/qwengo/engine/tensor"
)

// CheckFinite returns an error when a floating-point tensor holds NaN or ±Inf, naming the
// tensor, the first bad element by flat index and by multi-index, its value and how many bad
// elements there are. It checks F32, F16, BF16 and F64 by their bit patterns (no conversion,
// no allocation; a large finite F64 is not mistaken for Inf) and F8_E4M3, whose only
// non-finite codes are the NaNs 0x7F and 0xFF. Other dtypes pass. A tensor whose data length
// does not match its dtype and shape is an error too.
func CheckFinite(t *tensor.Host) error {
	if err := t.Validate(); err != nil {
		return err
	}
	b := t.Data
	first, count := -1, 0
	note := func(i int) {
		if first < 0 {
			first = i
		}
		count++
	}
	switch t.DType {
	case tensor.F32:
		for i := 0; i+4 <= len(b); i += 4 {
			if binary.LittleEndian.Uint32(b[i:])&0x7f800000 == 0x7f800000 {
				note(i / 4)
			}
		}
	case tensor.F16:
		for i := 0; i+2 <= len(b); i += 2 {
			if binary.LittleEndian.Uint16(b[i:])&0x7c00 == 0x7c00 {
				note(i / 2)
			}
		}
	case tensor.BF16:
		for i := 0; i+2 <= len(b); i += 2 {
			if binary.LittleEndian.Uint16(b[i:])&0x7f80 == 0x7f80 {
				note(i / 2)
			}
		}
	case tensor.F64:
		for i := 0; i+8 <= len(b); i += 8 {
			if binary.LittleEndian.Uint64(b[i:])&0x7ff0000000000000 == 0x7ff0000000000000 {
				note(i / 8)
			}
		}
	case tensor.F8E4M3:
		for i, x := range b {
			if x&0x7f == 0x7f {
				note(i)
			}
		}
	default:
		return nil
	}
	if first < 0 {
		return nil
	}
	more := ""
	if count > 1 {
		more = fmt.Sprintf(" (%d non-finite elements in all)", count)
	}
	return fmt.Errorf("tensor %q: %v%v element %d %v is %s%s", t.Name, t.DType, t.Shape, first, multiIndex(first, t.Shape), describe(t, first), more)
}

// multiIndex converts a flat row-major index into one index per dimension.
func multiIndex(flat int, shape []int) []int {
	idx := make([]int, len(shape))
	for d := len(shape) - 1; d >= 0; d-- {
		if shape[d] > 0 {
			idx[d] = flat % shape[d]
			flat /= shape[d]
		}
	}
	return idx
}

// describe names the non-finite value of element i.
func describe(t *tensor.Host, i int) string {
	var neg, nan bool
	switch t.DType {
	case tensor.F32:
		v := binary.LittleEndian.Uint32(t.Data[4*i:])
		neg, nan = v>>31 == 1, v&0x7fffff != 0
	case tensor.F16:
		v := binary.LittleEndian.Uint16(t.Data[2*i:])
		neg, nan = v>>15 == 1, v&0x3ff != 0
	case tensor.BF16:
		v := binary.LittleEndian.Uint16(t.Data[2*i:])
		neg, nan = v>>15 == 1, v&0x7f != 0
	case tensor.F64:
		v := binary.LittleEndian.Uint64(t.Data[8*i:])
		neg, nan = v>>63 == 1, v&(1<<52-1) != 0
	case tensor.F8E4M3:
		return fmt.Sprintf("NaN (e4m3 code 0x%02X)", t.Data[i])
	}
	switch {
	case nan:
		return "NaN"
	case neg:
		return "-Inf"
	}
	return "+Inf"
}
