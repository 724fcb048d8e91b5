//go:build cuda

package cuda

import (
	"fmt"
	"unsafe"

	"github.com/qwengo/qwengo/engine/backend"
)

var _ backend.ArgMaxer = (*Backend)(nil)

// ArgMaxRows implements backend.ArgMaxer: one block per row (argmax_rows_f32), then a download
// of one int32 per row.
func (b *Backend) ArgMaxRows(x backend.Tensor) ([]int, error) {
	var ids []int
	err := b.do(func() error {
		t, err := b.ten(x, "argmax", "x")
		if err != nil {
			return err
		}
		if err := b.grow(&b.argmaxBuf, backend.Workspace, int64(4*t.rows), "argmax ids"); err != nil {
			return fmt.Errorf("cuda: argmax: %w", err)
		}
		if err := launch(b.fns["argmax_rows_f32"], [3]int{t.rows, 1, 1}, [3]int{1024, 1, 1}, 0,
			ptrArg(b.argmaxBuf.ptr), ptrArg(t.ptr), intArg(t.cols)); err != nil {
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
