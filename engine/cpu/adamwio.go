package cpu

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/qwengo/qwengo/engine/backend"
)

var _ backend.AdamWStateIO = (*Backend)(nil)

// adamOf checks that st is a live AdamW state of this backend.
func (b *Backend) adamOf(st backend.AdamWState, op string) (*adamState, error) {
	s, ok := st.(*adamState)
	switch {
	case !ok || s == nil:
		return nil, fmt.Errorf("cpu: %s: state is %T, not a CPU AdamW state", op, st)
	case s.owner != b:
		return nil, fmt.Errorf("cpu: %s: the state belongs to another backend", op)
	case s.bytes == 0:
		return nil, fmt.Errorf("cpu: %s: the state [%d, %d] was freed", op, s.rows, s.cols)
	}
	return s, nil
}

// ReadAdamWState implements backend.AdamWStateIO: copies, in engine/optim's layout.
func (b *Backend) ReadAdamWState(st backend.AdamWState) (*backend.AdamWMoments, error) {
	s, err := b.adamOf(st, "read adamw state")
	if err != nil {
		return nil, err
	}
	m := &backend.AdamWMoments{Format: s.format, Rows: s.rows, Cols: s.cols}
	switch s.format {
	case "fp32":
		m.M, m.V = f32Bytes(s.m32), f32Bytes(s.v32)
	case "int8":
		m.M, m.V = make([]byte, len(s.m8)), append([]byte(nil), s.v8...)
		for i, c := range s.m8 {
			m.M[i] = byte(c)
		}
		m.MScale, m.VScale = append([]float32(nil), s.msc...), append([]float32(nil), s.vsc...)
	case "4bit":
		m.M, m.V = append([]byte(nil), s.m4...), append([]byte(nil), s.v4...)
		m.MScale = append([]float32(nil), s.msc...)
		if s.rows > 1 {
			m.VScale = append(append([]float32(nil), s.rowM...), s.colM...)
		} else {
			m.VScale = append([]float32(nil), s.vsc...)
		}
	}
	return m, nil
}

// WriteAdamWState implements backend.AdamWStateIO.
func (b *Backend) WriteAdamWState(st backend.AdamWState, m *backend.AdamWMoments) error {
	s, err := b.adamOf(st, "write adamw state")
	if err != nil {
		return err
	}
	if err := backend.CheckAdamWMoments(m, s.format, s.rows, s.cols); err != nil {
		return fmt.Errorf("cpu: write adamw state: %w", err)
	}
	switch s.format {
	case "fp32":
		bytesF32(s.m32, m.M)
		bytesF32(s.v32, m.V)
	case "int8":
		for i, c := range m.M {
			s.m8[i] = int8(c)
		}
		copy(s.v8, m.V)
		copy(s.msc, m.MScale)
		copy(s.vsc, m.VScale)
	case "4bit":
		copy(s.m4, m.M)
		copy(s.v4, m.V)
		copy(s.msc, m.MScale)
		if s.rows > 1 {
			copy(s.rowM, m.VScale[:s.rows])
			copy(s.colM, m.VScale[s.rows:])
		} else {
			copy(s.vsc, m.VScale)
		}
	}
	return nil
}

// f32Bytes encodes v as little-endian float32s.
func f32Bytes(v []float32) []byte {
	out := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(out[4*i:], math.Float32bits(x))
	}
	return out
}

// bytesF32 decodes little-endian float32s from src into dst (len(src) = 4·len(dst)).
func bytesF32(dst []float32, src []byte) {
	for i := range dst {
		dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))
	}
}
