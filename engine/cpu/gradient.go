package cpu

import (
	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/tensor"
)

// bf16 parameter gradients (backend.GradientFormat).
//
// Storage stays float32 (like a bf16 KV cache) and holds bf16 values: every op that writes a
// bf16 gradient rounds what it wrote to nearest even once a call (roundStored), so the values
// are the ones a GPU keeps in 2 bytes, and the accounting charges 2 bytes an element. AdamW and
// SumSquares read the values as they are (widening bf16 is exact).

// AllocGradient implements backend.GradientFormat.
func (b *Backend) AllocGradient(rows, cols int, dt tensor.DType) (backend.Tensor, error) {
	if err := backend.CheckGradDType("cpu", dt); err != nil {
		return nil, err
	}
	if dt == tensor.F32 {
		return b.Alloc(backend.Gradients, rows, cols)
	}
	if rows <= 0 || cols <= 0 || rows > maxElems/cols {
		return nil, errAlloc(backend.Gradients, rows, cols)
	}
	if err := b.account(backend.Gradients, int64(rows)*int64(cols)*2); err != nil {
		return nil, err
	}
	return &Tensor{rows: rows, cols: cols, Data: make([]float32, rows*cols), cat: backend.Gradients, owner: b, bf16Values: true, bf16Grad: true}, nil
}

var _ backend.GradientFormat = (*Backend)(nil)
