//go:build cuda

package cuda

import (
	"fmt"
	"unsafe"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/nvfp4"
	"github.com/qwengo/qwengo/engine/tensor"
)

// Weight kinds.
const (
	kindF32   = "f32"
	kindBF16  = "bf16"
	kindNVFP4 = "nvfp4"
)

// Weight is a device weight [Out, In] in its stored precision, in one allocation: float32 or
// bf16 elements row-major, or NVFP4 packed codes [Out, In/2] followed (at a 256-byte boundary)
// by the E4M3 block scales [Out, In/16]; the FP32 tensor scale stays on the host and is passed
// to the kernels.
type Weight struct {
	name    string
	out, in int
	kind    string
	ptr     devPtr // 0 after FreeWeight
	scales  devPtr // NVFP4: ptr + scaleOff
	global  float32
	bytes   int64
	owner   *Backend
}

// Name is the weight's name as uploaded.
func (w *Weight) Name() string { return w.name }

// Out implements backend.Weight.
func (w *Weight) Out() int { return w.out }

// In implements backend.Weight.
func (w *Weight) In() int { return w.in }

// Kind implements backend.Weight: "f32", "bf16" or "nvfp4".
func (w *Weight) Kind() string { return w.kind }

// Bytes implements backend.Weight: the device allocation's size.
func (w *Weight) Bytes() int64 { return w.bytes }

func align256(n int64) int64 { return (n + 255) &^ 255 }

// UploadWeight implements backend.Backend: dense weights as f32 or bf16 (HostWeight.Keep),
// NVFP4 matrices as they are. The host data is converted before the device is involved.
func (b *Backend) UploadWeight(hw backend.HostWeight) (backend.Weight, error) {
	w := &Weight{name: hw.Name, owner: b}
	var parts [][]byte // host bytes, concatenated at 256-byte boundaries
	switch {
	case hw.NVFP4 != nil:
		m := hw.NVFP4
		if err := m.Validate(); err != nil {
			return nil, fmt.Errorf("weight %q: %w", hw.Name, err)
		}
		w.out, w.in, w.kind, w.global = m.Rows, m.Cols, kindNVFP4, m.Global
		parts = [][]byte{m.Packed, m.Scales}
	case hw.Dense != nil:
		d := hw.Dense
		if err := d.Validate(); err != nil {
			return nil, fmt.Errorf("weight %q: %w", hw.Name, err)
		}
		if len(d.Shape) != 2 || d.Shape[0] <= 0 || d.Shape[1] <= 0 {
			return nil, fmt.Errorf("weight %q: want a non-empty matrix, got shape %v", hw.Name, d.Shape)
		}
		if !d.DType.IsFloat() {
			return nil, fmt.Errorf("weight %q: dtype %v is not a float type", hw.Name, d.DType)
		}
		w.out, w.in = d.Shape[0], d.Shape[1]
		keep := hw.Keep
		if keep == "" {
			keep = kindF32
			if d.DType == tensor.BF16 {
				keep = kindBF16
			}
		}
		switch {
		case keep == kindBF16 && d.DType == tensor.BF16:
			parts = [][]byte{d.Data}
		case keep == kindBF16:
			v, err := d.Float32s(nil)
			if err != nil {
				return nil, fmt.Errorf("weight %q: %w", hw.Name, err)
			}
			h := make([]uint16, len(v))
			for i, x := range v {
				h[i] = tensor.F32ToBF16(x)
			}
			parts = [][]byte{unsafe.Slice((*byte)(unsafe.Pointer(&h[0])), 2*len(h))}
		case keep == kindF32 && d.DType == tensor.F32:
			parts = [][]byte{d.Data}
		case keep == kindF32:
			v, err := d.Float32s(nil)
			if err != nil {
				return nil, fmt.Errorf("weight %q: %w", hw.Name, err)
			}
			parts = [][]byte{unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 4*len(v))}
		default:
			return nil, fmt.Errorf("weight %q: unknown precision %q (want f32 or bf16)", hw.Name, keep)
		}
		w.kind = keep
	default:
		return nil, fmt.Errorf("weight %q: no data", hw.Name)
	}
	offs := make([]int64, len(parts))
	for i, p := range parts {
		offs[i] = w.bytes
		w.bytes = align256(w.bytes + int64(len(p)))
	}
	if len(parts) == 1 {
		w.bytes = int64(len(parts[0]))
	}
	err := b.do(func() error {
		p, err := b.alloc(backend.Weights, w.bytes, fmt.Sprintf("weight %q (%s [%d, %d])", hw.Name, w.kind, w.out, w.in))
		if err != nil {
			return err
		}
		for i, part := range parts {
			if err := memcpyHtoD(p+devPtr(offs[i]), unsafe.Pointer(&part[0]), int64(len(part))); err != nil {
				b.free(p)
				return fmt.Errorf("cuda: upload weight %q: %w", hw.Name, err)
			}
		}
		w.ptr = p
		if w.kind == kindNVFP4 {
			w.scales = p + devPtr(offs[1])
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return w, nil
}

// weight checks that x is a live weight of this backend (worker goroutine).
func (b *Backend) weight(x backend.Weight, op string) (*Weight, error) {
	w, ok := x.(*Weight)
	switch {
	case !ok || w == nil:
		return nil, fmt.Errorf("cuda: %s: weight is %T, not a CUDA weight", op, x)
	case w.owner != b:
		return nil, fmt.Errorf("cuda: %s: weight %q belongs to another backend", op, w.name)
	case w.ptr == 0:
		return nil, fmt.Errorf("cuda: %s: weight %q was freed", op, w.name)
	}
	return w, nil
}

// DownloadWeight implements backend.Backend: the stored precision, copied back from the device.
func (b *Backend) DownloadWeight(x backend.Weight) (backend.HostWeight, error) {
	var hw backend.HostWeight
	err := b.do(func() error {
		w, err := b.weight(x, "download weight")
		if err != nil {
			return err
		}
		hw = backend.HostWeight{Name: w.name, Keep: w.kind}
		n := int64(w.out) * int64(w.in)
		switch w.kind {
		case kindNVFP4:
			m := &nvfp4.Matrix{Rows: w.out, Cols: w.in, Packed: make([]byte, n/2), Scales: make([]byte, n/nvfp4.BlockSize), Global: w.global}
			if err := memcpyDtoH(unsafe.Pointer(&m.Packed[0]), w.ptr, int64(len(m.Packed))); err != nil {
				return fmt.Errorf("cuda: download weight %q: %w", w.name, err)
			}
			if err := memcpyDtoH(unsafe.Pointer(&m.Scales[0]), w.scales, int64(len(m.Scales))); err != nil {
				return fmt.Errorf("cuda: download weight %q: %w", w.name, err)
			}
			hw.NVFP4 = m
		case kindBF16, kindF32:
			dt, size := tensor.BF16, int64(2)
			if w.kind == kindF32 {
				dt, size = tensor.F32, 4
			}
			data := make([]byte, n*size)
			if err := memcpyDtoH(unsafe.Pointer(&data[0]), w.ptr, int64(len(data))); err != nil {
				return fmt.Errorf("cuda: download weight %q: %w", w.name, err)
			}
			hw.Dense = &tensor.Host{Name: w.name, DType: dt, Shape: []int{w.out, w.in}, Data: data}
		}
		return nil
	})
	if err != nil {
		return backend.HostWeight{}, err
	}
	return hw, nil
}

// FreeWeight implements backend.Backend.
func (b *Backend) FreeWeight(x backend.Weight) {
	w, ok := x.(*Weight)
	if !ok || w == nil || w.owner != b {
		return
	}
	b.do(func() error {
		if w.ptr != 0 {
			b.free(w.ptr)
			w.ptr, w.scales = 0, 0
		}
		return nil
	})
}
