//go:build cuda

package cuda

import (
	"fmt"
	"unsafe"

	"github.com/qwengo/qwengo/engine/backend"
)

var _ backend.AdamWStateIO = (*Backend)(nil)

// adamParts are the device ranges of a state's four parts in backend.AdamWMoments' order (m,
// v, m's scales, v's scales or normaliser), with their byte counts; fp32 states have no scales.
func (s *AdamState) adamParts() (ptrs [4]devPtr, bytes [4]int64, err error) {
	lm, lv, lms, lvs, err := backend.AdamWMomentLens(s.format, s.rows, s.cols)
	if err != nil {
		return ptrs, bytes, err
	}
	return [4]devPtr{s.m, s.v, s.ms, s.vs}, [4]int64{int64(lm), int64(lv), 4 * int64(lms), 4 * int64(lvs)}, nil
}

// liveAdam checks that st is a live AdamW state of this backend.
func (b *Backend) liveAdam(st backend.AdamWState, op string) (*AdamState, error) {
	s, ok := st.(*AdamState)
	switch {
	case !ok || s == nil:
		return nil, fmt.Errorf("cuda: %s: state is %T, not a CUDA AdamW state", op, st)
	case s.owner != b:
		return nil, fmt.Errorf("cuda: %s: the state belongs to another backend", op)
	case s.ptr == 0:
		return nil, fmt.Errorf("cuda: %s: the state [%d, %d] was freed", op, s.rows, s.cols)
	}
	return s, nil
}

// ReadAdamWState implements backend.AdamWStateIO: the state's parts downloaded as they are
// (the device layout is engine/optim's, each part at a 256-byte boundary).
func (b *Backend) ReadAdamWState(st backend.AdamWState) (*backend.AdamWMoments, error) {
	var m *backend.AdamWMoments
	err := b.do(func() error {
		s, err := b.liveAdam(st, "read adamw state")
		if err != nil {
			return err
		}
		ptrs, bytes, err := s.adamParts()
		if err != nil {
			return fmt.Errorf("cuda: read adamw state: %w", err)
		}
		m = &backend.AdamWMoments{Format: s.format, Rows: s.rows, Cols: s.cols,
			M: make([]byte, bytes[0]), V: make([]byte, bytes[1]),
			MScale: make([]float32, bytes[2]/4), VScale: make([]float32, bytes[3]/4)}
		for i, dst := range []unsafe.Pointer{sliceAddr(m.M), sliceAddr(m.V), sliceAddr(m.MScale), sliceAddr(m.VScale)} {
			if bytes[i] == 0 {
				continue
			}
			if err := memcpyDtoH(dst, ptrs[i], bytes[i]); err != nil {
				return fmt.Errorf("cuda: read adamw state [%d, %d]: %w", s.rows, s.cols, err)
			}
		}
		if len(m.MScale) == 0 {
			m.MScale, m.VScale = nil, nil
		}
		return nil
	})
	return m, err
}

// WriteAdamWState implements backend.AdamWStateIO.
func (b *Backend) WriteAdamWState(st backend.AdamWState, m *backend.AdamWMoments) error {
	return b.do(func() error {
		s, err := b.liveAdam(st, "write adamw state")
		if err != nil {
			return err
		}
		if err := backend.CheckAdamWMoments(m, s.format, s.rows, s.cols); err != nil {
			return fmt.Errorf("cuda: write adamw state: %w", err)
		}
		ptrs, bytes, err := s.adamParts()
		if err != nil {
			return fmt.Errorf("cuda: write adamw state: %w", err)
		}
		for i, src := range []unsafe.Pointer{sliceAddr(m.M), sliceAddr(m.V), sliceAddr(m.MScale), sliceAddr(m.VScale)} {
			if bytes[i] == 0 {
				continue
			}
			if err := memcpyHtoD(ptrs[i], src, bytes[i]); err != nil {
				return fmt.Errorf("cuda: write adamw state [%d, %d]: %w", s.rows, s.cols, err)
			}
		}
		return nil
	})
}

// sliceAddr is the address of a slice's first element (nil for an empty slice).
func sliceAddr[T any](s []T) unsafe.Pointer {
	if len(s) == 0 {
		return nil
	}
	return unsafe.Pointer(&s[0])
}
