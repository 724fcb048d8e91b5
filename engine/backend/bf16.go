package backend

import "fmt"

// BF16Store is implemented by training backends that can hold float32 activations as bf16,
// half the bytes, between two uses: engine/devtrain keeps each layer's input that way from the
// forward to the layer's recomputation (Options.CheckpointBF16). A BF16 buffer is storage
// only: no op reads it but FromBF16. The methods follow Backend's rules (shape errors
// returned before anything is written; a buffer used by one goroutine at a time).
type BF16Store interface {
	// AllocBF16 returns a zeroed [rows, cols] bf16 buffer (2 bytes an element) accounted
	// under cat.
	AllocBF16(cat Category, rows, cols int) (BF16, error)
	// FreeBF16 releases buf; freeing twice, or nil, does nothing.
	FreeBF16(buf BF16)
	// ToBF16 rounds src (same width as buf) into buf's rows [row0, row0+src.Rows()), to
	// nearest even as engine/tensor.F32ToBF16 (a NaN stays a NaN).
	ToBF16(buf BF16, row0 int, src Tensor) error
	// FromBF16 widens buf's rows [row0, row0+dst.Rows()) into dst (same width), exactly.
	FromBF16(dst Tensor, buf BF16, row0 int) error
}

// BF16 is a backend-owned [Rows, Cols] buffer of bf16 values (see BF16Store).
type BF16 interface {
	Rows() int
	Cols() int
}

// CheckBF16Rows checks that rows [row0, row0+t.Rows()) of buf exist and have t's width (a
// helper for implementations of ToBF16 and FromBF16; op names the call in the error).
func CheckBF16Rows(op string, buf BF16, row0 int, t Tensor) error {
	if row0 < 0 || t.Cols() != buf.Cols() || row0+t.Rows() > buf.Rows() {
		return fmt.Errorf("%s: rows [%d, %d) of a [%d, %d] bf16 buffer against a [%d, %d] tensor", op, row0, row0+t.Rows(), buf.Rows(), buf.Cols(), t.Rows(), t.Cols())
	}
	return nil
}
