package backend

import (
	"fmt"

	"github.com/qwengo/qwengo/engine/tensor"
)

// GradientFormat is implemented by training backends that can keep parameter gradients as
// bf16, half the bytes of float32: what PyTorch keeps for a bf16 model. The optimizer step
// reads every gradient once (AdamW with int8 moments moves 12.25 bytes a parameter with f32
// gradients, 10.25 with bf16 ones), and an unfused step holds every gradient at once.
//
// A bf16 gradient tensor is taken only by the ops that make and use parameter gradients:
//
//   - MatMulBackward's dw: dw = bf16(dw + doutᵀ·x) — the product summed in float32, added to
//     the widened dw in float32 and rounded to nearest even once a call;
//   - EmbeddingBackward's dtable: each touched row is its widened value plus that call's dout
//     rows in position order, in float32, rounded once;
//   - Zero, SumSquares (and SumSquaresMany), AdamW's and AdamWMany's grad (widened exactly:
//     the update is the float32 gradient's update of the widened values, bit for bit);
//   - Upload (rounded to nearest even), Download (widened exactly) and Free.
//
// Every other op refuses it with an error that names it. Gradients of activations stay float32.
type GradientFormat interface {
	// AllocGradient returns a zeroed [rows, cols] parameter-gradient tensor of element type dt
	// (F32 or BF16), accounted under Gradients at its element size.
	AllocGradient(rows, cols int, dt tensor.DType) (Tensor, error)
}

// AllocGradient allocates a [rows, cols] parameter gradient of element type dt on b: F32 works
// on every backend (Alloc under Gradients), BF16 needs a backend that implements GradientFormat.
func AllocGradient(b Backend, rows, cols int, dt tensor.DType) (Tensor, error) {
	if f, ok := b.(GradientFormat); ok {
		return f.AllocGradient(rows, cols, dt)
	}
	if dt == tensor.F32 {
		return b.Alloc(Gradients, rows, cols)
	}
	return nil, fmt.Errorf("backend %s keeps gradients in float32 only, not %s", b.Name(), dt)
}

// CheckGradDType is the argument check of AllocGradient implementations (who names the backend).
func CheckGradDType(who string, dt tensor.DType) error {
	if dt != tensor.F32 && dt != tensor.BF16 {
		return fmt.Errorf("%s: a parameter gradient holds F32 or BF16, not %s", who, dt)
	}
	return nil
}
