//go:build cuda

package cuda

import (
	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/tensor"
)

// bf16 parameter gradients (backend.GradientFormat): a Tensor of category Gradients with bf16
// set, 2 bytes an element, row-major bf16 bits. The ops that take one check it with tenG; they
// round once a call what they add (MatMulBackward's dw through cuBLASLt's bf16 output or the
// SIMT kernel's bf16 form, EmbeddingBackward's rows), and read it widened exactly (SumSquares,
// AdamW). Every other op refuses it (ten).

// AllocGradient implements backend.GradientFormat.
func (b *Backend) AllocGradient(rows, cols int, dt tensor.DType) (backend.Tensor, error) {
	if err := backend.CheckGradDType("cuda", dt); err != nil {
		return nil, err
	}
	kv := kvF32
	if dt == tensor.BF16 {
		kv = kvBF16
	}
	return b.allocAs(backend.Gradients, rows, cols, kv)
}

// bf16What names what a bf16 tensor is, for errors.
func bf16What(t *Tensor) string {
	if t.cat == backend.Gradients {
		return "parameter gradient"
	}
	return "KV cache"
}

var _ backend.GradientFormat = (*Backend)(nil)
