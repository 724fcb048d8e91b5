package grad

import (
	"fmt"

	"github.com/qwengo/qwengo/engine/format"
	"github.com/qwengo/qwengo/engine/tensor"
)

// memSource serves the model's current parameters as a format.Source (float32, in memory).
type memSource struct {
	m     *Model
	infos []format.TensorInfo
}

// Source returns the current weights as a format.Source, so an inference model can be built
// from the model being trained without writing a file — e.g. to generate on probe prompts
// between training steps: qwen3.Load(m.Config, m.Source(), backend, qwen3.LoadOptions{}).
func (m *Model) Source() format.Source {
	s := &memSource{m: m}
	for _, p := range m.Params {
		shape := []int{p.Rows, p.Cols}
		if p.Rows == 1 {
			shape = []int{p.Cols}
		}
		s.infos = append(s.infos, format.TensorInfo{Name: p.Name, DType: tensor.F32, Shape: shape, Size: int64(4 * len(p.W))})
	}
	return s
}

func (s *memSource) Tensors() []format.TensorInfo { return s.infos }

func (s *memSource) Read(name string) (*tensor.Host, error) {
	i, ok := s.m.byName[name]
	if !ok {
		return nil, fmt.Errorf("grad: no parameter %q", name)
	}
	return tensor.FromFloat32s(name, tensor.F32, s.infos[i].Shape, s.m.Params[i].W)
}

func (s *memSource) Close() error { return nil }
