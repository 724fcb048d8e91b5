//go:build cuda

package cuda

import (
	"fmt"
	"unsafe"

	"github.com/qwengo/qwengo/engine/backend"
)

var _ backend.ArgMaxer = (*Backend)(nil)

// argmaxChunk and argmaxMaxParts size argmax_rows_f32's blocks: up to 32 blocks per row of at
// least 8192 elements each (a 151936-entry vocabulary row: 19 blocks).
const (
	argmaxChunk    = 8192
	argmaxMaxParts = 32
)

// ArgMaxRows implements backend.ArgMaxer: argmax_rows_f32 (up to 32 blocks per row, merged by the
// last to finish), then a download of one int32 per row.
func (b *Backend) ArgMaxRows(x backend.Tensor) ([]int, error) {
	var ids []int
	err := b.do(func() error {
		t, err := b.ten(x, "argmax", "x")
		if err != nil {
			return err
		}
		// Blocks of up to argmaxChunk elements; ids, then P values and P indices per row.
		P := min(argmaxMaxParts, (t.cols+argmaxChunk-1)/argmaxChunk)
		chunk := (t.cols + P - 1) / P
		rows := int64(t.rows)
		if err := b.grow(&b.argmaxBuf, backend.Workspace, 4*rows+8*rows*int64(P), "argmax ids and partials"); err != nil {
			return fmt.Errorf("cuda: argmax: %w", err)
		}
		// Arrival counters in a buffer of their own: zero when allocated, left zero by every
		// launch, whatever the layout of the partials.
		if b.argmaxCounters.bytes < 4*rows {
			if err := b.grow(&b.argmaxCounters, backend.Workspace, 4*rows, "argmax counters"); err != nil {
				return fmt.Errorf("cuda: argmax: %w", err)
			}
			if err := memsetD8(b.argmaxCounters.ptr, 0, b.argmaxCounters.bytes); err != nil {
				return fmt.Errorf("cuda: argmax: %w", err)
			}
		}
		base := b.argmaxBuf.ptr
		pv := base + devPtr(4*rows)
		pi := pv + devPtr(4*rows*int64(P))
		ctr := b.argmaxCounters.ptr
		if err := launch(b.fns["argmax_rows_f32"], [3]int{t.rows, P, 1}, [3]int{256, 1, 1}, 0,
			ptrArg(base), ptrArg(pv), ptrArg(pi), ptrArg(ctr), ptrArg(t.ptr), intArg(t.cols), intArg(chunk)); err != nil {
			return fmt.Errorf("cuda: argmax: %w", err)
		}
		got := make([]int32, t.rows)
		if err := memcpyDtoH(unsafe.Pointer(&got[0]), b.argmaxBuf.ptr, int64(4*t.rows)); err != nil {
			return fmt.Errorf("cuda: argmax: %w", err)
		}
		ids = make([]int, t.rows)
		for i, v := range got {
			ids[i] = int(v)
		}
		return nil
	})
	return ids, err
}
