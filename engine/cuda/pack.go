//go:build cuda

package cuda

import (
	"fmt"

	"github.com/qwengo/qwengo/engine/backend"
)

// bf16 storage of float32 activations (backend.BF16Store, kernels/pack.cu): engine/devtrain
// keeps each layer's input as bf16 between the forward and the layer's recomputation, half
// the bytes of a float32 tensor. The buffers are ordinary allocations (Alloc's pool included).

// BF16 is a device bf16 buffer: row-major [Rows, Cols] in one allocation.
type BF16 struct {
	rows, cols int
	ptr        devPtr // 0 after FreeBF16
	owner      *Backend
}

// Rows implements backend.BF16.
func (t *BF16) Rows() int { return t.rows }

// Cols implements backend.BF16.
func (t *BF16) Cols() int { return t.cols }

var _ backend.BF16Store = (*Backend)(nil)

// AllocBF16 implements backend.BF16Store: 2 bytes an element, accounted under cat, zeroed.
func (b *Backend) AllocBF16(cat backend.Category, rows, cols int) (backend.BF16, error) {
	if cat < 0 || cat >= backend.NumCategories {
		return nil, fmt.Errorf("cuda: alloc bf16: unknown category %d", int(cat))
	}
	if rows <= 0 || cols <= 0 || rows > maxElems/cols {
		return nil, fmt.Errorf("cuda: alloc bf16 %s: cannot allocate [%d, %d]", cat, rows, cols)
	}
	t := &BF16{rows: rows, cols: cols, owner: b}
	n := 2 * int64(rows) * int64(cols)
	err := b.do(func() error {
		p, err := b.allocTensor(cat, n, fmt.Sprintf("%s bf16 [%d, %d]", cat, rows, cols))
		if err != nil {
			return err
		}
		if err := memsetD8(p, 0, n); err != nil {
			b.freeTensor(p)
			return fmt.Errorf("cuda: alloc bf16 %s [%d, %d]: %w", cat, rows, cols, err)
		}
		t.ptr = p
		return nil
	})
	if err != nil {
		return nil, err
	}
	return t, nil
}

// FreeBF16 implements backend.BF16Store.
func (b *Backend) FreeBF16(x backend.BF16) {
	t, ok := x.(*BF16)
	if !ok || t == nil || t.owner != b {
		return
	}
	b.do(func() error {
		if t.ptr != 0 {
			b.freeTensor(t.ptr)
			t.ptr = 0
		}
		return nil
	})
}

// bf16Buf checks that x is a live bf16 buffer of this backend (worker goroutine).
func (b *Backend) bf16Buf(x backend.BF16, op string) (*BF16, error) {
	t, ok := x.(*BF16)
	switch {
	case !ok || t == nil:
		return nil, fmt.Errorf("cuda: %s: buffer is %T, not a CUDA bf16 buffer", op, x)
	case t.owner != b:
		return nil, fmt.Errorf("cuda: %s: the bf16 buffer belongs to another backend", op)
	case t.ptr == 0:
		return nil, fmt.Errorf("cuda: %s: the bf16 buffer [%d, %d] was freed", op, t.rows, t.cols)
	}
	return t, nil
}

// packArgs checks a ToBF16/FromBF16 call (worker goroutine): the buffer's rows [row0,
// row0+t.rows) and t's width; it returns the buffer's address at row0 and the element count.
func (b *Backend) packArgs(op string, x backend.BF16, row0 int, y backend.Tensor, name string) (devPtr, *Tensor, int64, error) {
	buf, err := b.bf16Buf(x, op)
	if err != nil {
		return 0, nil, 0, err
	}
	t, err := b.ten(y, op, name)
	if err != nil {
		return 0, nil, 0, err
	}
	if err := backend.CheckBF16Rows("cuda: "+op, buf, row0, t); err != nil {
		return 0, nil, 0, err
	}
	return buf.ptr + devPtr(2*int64(row0)*int64(buf.cols)), t, int64(t.n()), nil
}

// ToBF16 implements backend.BF16Store: round to nearest even (kernels/pack.cu bf16_pack).
func (b *Backend) ToBF16(buf backend.BF16, row0 int, src backend.Tensor) error {
	return b.do(func() error {
		const op = "to bf16"
		dst, s, n, err := b.packArgs(op, buf, row0, src, "source")
		if err != nil {
			return err
		}
		if err := launch(b.fns["bf16_pack"], [3]int{b.blocks(int(min(n, 1<<30))), 1, 1}, [3]int{256, 1, 1}, 0,
			ptrArg(dst), ptrArg(s.ptr), sizeArg(n)); err != nil {
			return fmt.Errorf("cuda: %s: %w", op, err)
		}
		return nil
	})
}

// FromBF16 implements backend.BF16Store: exact widening (kernels/pack.cu bf16_unpack).
func (b *Backend) FromBF16(dst backend.Tensor, buf backend.BF16, row0 int) error {
	return b.do(func() error {
		const op = "from bf16"
		src, d, n, err := b.packArgs(op, buf, row0, dst, "destination")
		if err != nil {
			return err
		}
		if err := launch(b.fns["bf16_unpack"], [3]int{b.blocks(int(min(n, 1<<30))), 1, 1}, [3]int{256, 1, 1}, 0,
			ptrArg(d.ptr), ptrArg(src), sizeArg(n)); err != nil {
			return fmt.Errorf("cuda: %s: %w", op, err)
		}
		return nil
	})
}
