package grad

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"

	"github.com/qwengo/qwengo/engine/data"
	"github.com/qwengo/qwengo/engine/format"
	"github.com/qwengo/qwengo/engine/nvfp4"
	"github.com/qwengo/qwengo/engine/optim"
	"github.com/qwengo/qwengo/engine/qwen3"
	"github.com/qwengo/qwengo/engine/tensor"
	"github.com/qwengo/qwengo/engine/train"
)

// Param is one trainable tensor, named as in Hugging Face checkpoints.
type Param struct {
	Name       string
	Rows, Cols int
	W          []float32
	NoDecay    bool
}

type layer struct {
	ln1, q, k, v, qn, kn, o, ln2, gate, up, down int // indices into Model.Params
}

// Model is Qwen3 as float32 trainable parameters.
type Model struct {
	Config *qwen3.Config
	Params []*Param
	embed  int
	lm     int // == embed when tied
	norm   int
	layers []layer
	byName map[string]int
	// QAT runs projections through their NVFP4 quantise-dequantise image (STE), so that the
	// trained model loses nothing when exported to NVFP4 (the seed's training path).
	QAT bool
	// OnPhase, when set, is called with "forward_done" and "backward_done" per sequence.
	OnPhase func(phase string)
	fq      map[int][]float32
	fqMu    sync.Mutex
}

func (m *Model) add(name string, rows, cols int, noDecay bool) int {
	m.byName[name] = len(m.Params)
	m.Params = append(m.Params, &Param{Name: name, Rows: rows, Cols: cols, W: make([]float32, rows*cols), NoDecay: noDecay})
	return len(m.Params) - 1
}

// New allocates a zero model with the config's shapes (parameters in HF checkpoint order).
func New(cfg *qwen3.Config) (*Model, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m := &Model{Config: cfg, byName: map[string]int{}}
	h, qd, kv, in := cfg.HiddenSize, cfg.QDim(), cfg.KVDim(), cfg.IntermediateSize
	m.embed = m.add("model.embed_tokens.weight", cfg.VocabSize, h, false)
	for i := 0; i < cfg.NumLayers; i++ {
		p := fmt.Sprintf("model.layers.%d.", i)
		var l layer
		l.ln1 = m.add(p+"input_layernorm.weight", 1, h, true)
		l.q = m.add(p+"self_attn.q_proj.weight", qd, h, false)
		l.k = m.add(p+"self_attn.k_proj.weight", kv, h, false)
		l.v = m.add(p+"self_attn.v_proj.weight", kv, h, false)
		l.qn = m.add(p+"self_attn.q_norm.weight", 1, cfg.HeadDim, true)
		l.kn = m.add(p+"self_attn.k_norm.weight", 1, cfg.HeadDim, true)
		l.o = m.add(p+"self_attn.o_proj.weight", h, qd, false)
		l.ln2 = m.add(p+"post_attention_layernorm.weight", 1, h, true)
		l.gate = m.add(p+"mlp.gate_proj.weight", in, h, false)
		l.up = m.add(p+"mlp.up_proj.weight", in, h, false)
		l.down = m.add(p+"mlp.down_proj.weight", h, in, false)
		m.layers = append(m.layers, l)
	}
	m.norm = m.add("model.norm.weight", 1, h, true)
	m.lm = m.embed
	if !cfg.TieEmbeddings {
		m.lm = m.add("lm_head.weight", cfg.VocabSize, h, false)
	}
	return m, nil
}

// Load reads every parameter from a checkpoint (dense, NVFP4 ModelOpt or seed .dat; NVFP4
// weights are dequantised: training keeps dense masters).
func Load(cfg *qwen3.Config, src format.Source) (*Model, error) {
	m, err := New(cfg)
	if err != nil {
		return nil, err
	}
	infos := map[string]format.TensorInfo{}
	for _, ti := range src.Tensors() {
		infos[ti.Name] = ti
	}
	read := func(name string) (*tensor.Host, error) {
		if _, ok := infos[name]; !ok {
			return nil, nil
		}
		return src.Read(name)
	}
	for _, p := range m.Params {
		base := p.Name[:len(p.Name)-len(".weight")]
		t, err := read(p.Name)
		if err != nil {
			return nil, err
		}
		if t != nil && t.DType.IsFloat() {
			v, err := t.Float32s(nil)
			if err != nil {
				return nil, err
			}
			if len(v) != len(p.W) {
				return nil, fmt.Errorf("grad: tensor %q has %d values, want [%d %d]", p.Name, len(v), p.Rows, p.Cols)
			}
			copy(p.W, v)
			continue
		}
		// NVFP4: ModelOpt (weight + weight_scale + weight_scale_2) or seed (qdata + scale).
		packed, scales, global := t, (*tensor.Host)(nil), float32(1)
		if packed != nil {
			if scales, err = read(base + ".weight_scale"); err != nil {
				return nil, err
			}
			g, err := read(base + ".weight_scale_2")
			if err != nil {
				return nil, err
			}
			if g != nil {
				gv, err := g.Float32s(nil)
				if err != nil || len(gv) != 1 {
					return nil, fmt.Errorf("grad: %s.weight_scale_2: want one float", base)
				}
				global = gv[0]
			}
		} else {
			for _, pair := range [][2]string{{".weight.qdata", ".weight.scale"}, {".qdata", ".scale"}} {
				if packed, err = read(base + pair[0]); err != nil {
					return nil, err
				}
				if packed != nil {
					if scales, err = read(base + pair[1]); err != nil {
						return nil, err
					}
					break
				}
			}
		}
		if packed == nil || scales == nil {
			if p.Name == "lm_head.weight" || cfg.TieEmbeddings && base == "lm_head" {
				continue
			}
			return nil, fmt.Errorf("grad: missing tensor %q", p.Name)
		}
		q := &nvfp4.Matrix{Rows: p.Rows, Cols: p.Cols, Packed: packed.Data, Scales: scales.Data, Global: global}
		if err := q.Validate(); err != nil {
			return nil, fmt.Errorf("grad: %s: %w", base, err)
		}
		q.DecodeRows(p.W, 0, p.Rows)
	}
	return m, nil
}

// Specs describes the parameters for the optimizer.
func (m *Model) Specs() []optim.ParamSpec {
	out := make([]optim.ParamSpec, len(m.Params))
	for i, p := range m.Params {
		out[i] = optim.ParamSpec{Name: p.Name, Rows: p.Rows, Cols: p.Cols, Init: p.W, NoDecay: p.NoDecay}
	}
	return out
}

// Tensors returns the parameters as host tensors of dtype dt (F32 or BF16) in checkpoint order,
// norms as vectors — ready for format.WriteSafetensors.
func (m *Model) Tensors(dt tensor.DType) ([]*tensor.Host, error) {
	var out []*tensor.Host
	for _, p := range m.Params {
		shape := []int{p.Rows, p.Cols}
		if p.Rows == 1 {
			shape = []int{p.Cols}
		}
		t, err := tensor.FromFloat32s(p.Name, dt, shape, p.W)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, nil
}

// Trainable adapts the model to train.Differentiable.
func (m *Model) Trainable() train.Differentiable { return trainable{m} }

type trainable struct{ m *Model }

func (t trainable) Params() []optim.ParamSpec { return t.m.Specs() }
func (t trainable) SetParam(i int, w []float32) error {
	if i < 0 || i >= len(t.m.Params) || len(w) != len(t.m.Params[i].W) {
		return fmt.Errorf("grad: SetParam %d with %d values", i, len(w))
	}
	copy(t.m.Params[i].W, w)
	t.m.fqMu.Lock()
	delete(t.m.fq, i)
	t.m.fqMu.Unlock()
	return nil
}
func (t trainable) Grad(ctx context.Context, b *data.Batch, loss train.Loss) (float64, int, [][]float32, error) {
	return t.m.Grad(ctx, b, loss)
}
func (t trainable) LossOnly(ctx context.Context, b *data.Batch, loss train.Loss) (float64, int, error) {
	return t.m.LossOnly(ctx, b, loss)
}

// Randomize sets every matrix to N(0, std²) and every norm to 1, from a PCG seeded with
// (seed, stream): the starting point of pretraining, and the random models tests build.
func (m *Model) Randomize(seed, stream uint64, std float64) {
	r := rand.New(rand.NewPCG(seed, stream))
	for _, p := range m.Params {
		for i := range p.W {
			if p.Rows == 1 {
				p.W[i] = 1
			} else {
				p.W[i] = float32(r.NormFloat64() * std)
			}
		}
	}
	m.fqMu.Lock()
	clear(m.fq)
	m.fqMu.Unlock()
}
