package cpu

import (
	"fmt"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/tensor"
)

// BF16 is a CPU bf16 buffer (backend.BF16Store): row-major bf16 bits.
type BF16 struct {
	rows, cols int
	data       []uint16
	cat        backend.Category
	owner      *Backend
}

// Rows implements backend.BF16.
func (t *BF16) Rows() int { return t.rows }

// Cols implements backend.BF16.
func (t *BF16) Cols() int { return t.cols }

// AllocBF16 implements backend.BF16Store: 2 bytes an element, accounted under cat.
func (b *Backend) AllocBF16(cat backend.Category, rows, cols int) (backend.BF16, error) {
	if cat < 0 || cat >= backend.NumCategories {
		return nil, fmt.Errorf("cpu: alloc bf16: unknown category %d", int(cat))
	}
	if rows <= 0 || cols <= 0 || rows > maxElems/cols {
		return nil, fmt.Errorf("cpu: alloc bf16 %s: cannot allocate [%d, %d]", cat, rows, cols)
	}
	if err := b.account(cat, 2*int64(rows)*int64(cols)); err != nil {
		return nil, err
	}
	return &BF16{rows: rows, cols: cols, data: make([]uint16, rows*cols), cat: cat, owner: b}, nil
}

// FreeBF16 implements backend.BF16Store.
func (b *Backend) FreeBF16(x backend.BF16) {
	t, ok := x.(*BF16)
	if !ok || t == nil || t.data == nil || t.owner != b {
		return
	}
	b.account(t.cat, -2*int64(len(t.data)))
	t.data = nil
}

// bf16Buf checks that x is a live bf16 buffer of this backend.
func (b *Backend) bf16Buf(x backend.BF16, op string) (*BF16, error) {
	t, ok := x.(*BF16)
	switch {
	case !ok || t == nil:
		return nil, fmt.Errorf("cpu: %s: buffer is %T, not a CPU bf16 buffer", op, x)
	case t.owner != b:
		return nil, fmt.Errorf("cpu: %s: the bf16 buffer belongs to another backend", op)
	case t.data == nil:
		return nil, fmt.Errorf("cpu: %s: the bf16 buffer [%d, %d] was freed", op, t.rows, t.cols)
	}
	return t, nil
}

// ToBF16 implements backend.BF16Store: round to nearest even (engine/tensor.F32ToBF16).
func (b *Backend) ToBF16(buf backend.BF16, row0 int, src backend.Tensor) error {
	const op = "to bf16"
	d, err := b.bf16Buf(buf, op)
	if err != nil {
		return err
	}
	s, err := b.ten(src, op, "source")
	if err != nil {
		return err
	}
	if err := backend.CheckBF16Rows("cpu: "+op, d, row0, s); err != nil {
		return err
	}
	out := d.data[row0*d.cols : (row0+s.rows)*d.cols]
	b.parallelRange(len(out), 1<<14, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			out[i] = tensor.F32ToBF16(s.Data[i])
		}
	})
	return nil
}

// FromBF16 implements backend.BF16Store: exact widening.
func (b *Backend) FromBF16(dst backend.Tensor, buf backend.BF16, row0 int) error {
	const op = "from bf16"
	s, err := b.bf16Buf(buf, op)
	if err != nil {
		return err
	}
	d, err := b.ten(dst, op, "destination")
	if err != nil {
		return err
	}
	if err := backend.CheckBF16Rows("cpu: "+op, s, row0, d); err != nil {
		return err
	}
	widenBF16(d.Data, s.data[row0*s.cols:(row0+d.rows)*s.cols])
	return nil
}

var _ backend.BF16Store = (*Backend)(nil)
