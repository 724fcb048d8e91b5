package qwen3

import (
	"fmt"
	"sort"
	"strings"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/format"
	"github.com/qwengo/qwengo/engine/nvfp4"
	"github.com/qwengo/qwengo/engine/tensor"
)

// Layer holds one decoder block's weights on the backend.
type Layer struct {
	InputNorm, PostNorm, QNorm, KNorm backend.Tensor
	Q, K, V, O, Gate, Up, Down        backend.Weight
}

// Model is a Qwen3 model resident on a backend.
type Model struct {
	Config  *Config
	B       backend.Backend
	Embed   backend.Weight
	LMHead  backend.Weight // the embedding when tied (unless a checkpoint stores its own, as the seed's do)
	Norm    backend.Tensor
	Layers  []Layer
	Sources map[string]string // parameter prefix -> stored form ("bf16", "nvfp4 (modelopt)", …)
}

// LoadOptions controls loading.
type LoadOptions struct {
	// Precision of the linear weights: "" keeps what the file stores; "f32" or "bf16" stores
	// dense (dequantising NVFP4); "nvfp4" quantises dense weights with the ModelOpt recipe.
	// Embeddings, lm_head and norms stay dense.
	Precision string
	// Progress is called after each tensor with bytes read so far and in total.
	Progress func(done, total int64)
}

type pending struct {
	weight, scale, scale2 *tensor.Host
	seed                  bool
}

// splitName maps a stored tensor name to (parameter prefix, part).
func splitName(name string) (prefix, part string) {
	for _, suf := range []string{".weight.qdata", ".weight.scale", ".weight_scale_2", ".weight_scale", ".input_scale", ".weight", ".qdata", ".scale"} {
		if strings.HasSuffix(name, suf) {
			part = strings.TrimPrefix(suf[1:], "weight.") // the seed's X.weight.qdata is X.qdata
			return strings.TrimSuffix(name, suf), part
		}
	}
	return name, ""
}

// expected returns every parameter prefix with its shape [out, in] (norms: [n, 0]).
func (c *Config) expected() map[string][2]int {
	h, q, kv, in := c.HiddenSize, c.QDim(), c.KVDim(), c.IntermediateSize
	e := map[string][2]int{
		"model.embed_tokens": {c.VocabSize, h},
		"model.norm":         {h, 0},
	}
	if !c.TieEmbeddings {
		e["lm_head"] = [2]int{c.VocabSize, h}
	}
	for i := 0; i < c.NumLayers; i++ {
		p := fmt.Sprintf("model.layers.%d.", i)
		e[p+"input_layernorm"] = [2]int{h, 0}
		e[p+"post_attention_layernorm"] = [2]int{h, 0}
		e[p+"self_attn.q_norm"] = [2]int{c.HeadDim, 0}
		e[p+"self_attn.k_norm"] = [2]int{c.HeadDim, 0}
		e[p+"self_attn.q_proj"] = [2]int{q, h}
		e[p+"self_attn.k_proj"] = [2]int{kv, h}
		e[p+"self_attn.v_proj"] = [2]int{kv, h}
		e[p+"self_attn.o_proj"] = [2]int{h, q}
		e[p+"mlp.gate_proj"] = [2]int{in, h}
		e[p+"mlp.up_proj"] = [2]int{in, h}
		e[p+"mlp.down_proj"] = [2]int{h, in}
	}
	return e
}

// Load streams the weights of src onto b in one pass.
func Load(cfg *Config, src format.Source, b backend.Backend, opt LoadOptions) (m *Model, err error) {
	switch opt.Precision {
	case "", "f32", "bf16", "nvfp4":
	default:
		return nil, fmt.Errorf("load: unknown precision %q (want f32, bf16 or nvfp4)", opt.Precision)
	}
	m = &Model{Config: cfg, B: b, Layers: make([]Layer, cfg.NumLayers), Sources: map[string]string{}}
	defer func() {
		if err != nil {
			m.Free()
			m = nil
		}
	}()
	want := cfg.expected()
	if cfg.TieEmbeddings {
		want["lm_head"] = [2]int{cfg.VocabSize, cfg.HiddenSize} // optional: see below
	}
	done := map[string]bool{}
	parts := map[string]*pending{}
	err = format.Stream(src, func(t *tensor.Host) error {
		prefix, part := splitName(t.Name)
		shape, ok := want[prefix]
		if !ok || part == "" {
			return fmt.Errorf("tensor %q (%v%v) is not part of a Qwen3 model with this config", t.Name, t.DType, t.Shape)
		}
		if part == "input_scale" {
			return nil // W4A4 activation scale: unused by W4A16 inference
		}
		if done[prefix] {
			return fmt.Errorf("tensor %q: parameter %s given twice", t.Name, prefix)
		}
		if shape[1] == 0 { // norm vector
			if part != "weight" {
				return fmt.Errorf("tensor %q: norm %s cannot be quantised", t.Name, prefix)
			}
			if len(t.Shape) != 1 || t.Shape[0] != shape[0] {
				return fmt.Errorf("tensor %q: shape %v, want [%d]", t.Name, t.Shape, shape[0])
			}
			if err := format.CheckFinite(t); err != nil {
				return err
			}
			v, err := t.Float32s(nil)
			if err != nil {
				return err
			}
			nt, err := b.Alloc(backend.Weights, 1, len(v))
			if err != nil {
				return err
			}
			if err := b.Upload(nt, v); err != nil {
				return err
			}
			m.setNorm(prefix, nt)
			m.Sources[prefix] = strings.ToLower(t.DType.String())
			done[prefix] = true
			return nil
		}
		p := parts[prefix]
		if p == nil {
			p = &pending{}
			parts[prefix] = p
		}
		switch part {
		case "weight":
			p.weight = t
		case "qdata":
			p.weight, p.seed = t, true
		case "weight_scale":
			p.scale = t
		case "scale":
			p.scale, p.seed = t, true
		case "weight_scale_2":
			p.scale2 = t
		}
		ready := (p.weight != nil && p.weight.DType.IsFloat()) ||
			(p.seed && p.weight != nil && p.scale != nil) ||
			(!p.seed && p.weight != nil && p.scale != nil && p.scale2 != nil)
		if !ready {
			return nil
		}
		delete(parts, prefix)
		w, how, err := m.upload(prefix, shape, p, opt.Precision)
		if err != nil {
			return err
		}
		m.setLinear(prefix, w)
		m.Sources[prefix] = how
		done[prefix] = true
		return nil
	}, opt.Progress)
	if err != nil {
		return nil, fmt.Errorf("load: %w", err)
	}
	for prefix, p := range parts {
		var have []string
		for n, h := range map[string]*tensor.Host{"weight": p.weight, "weight_scale": p.scale, "weight_scale_2": p.scale2} {
			if h != nil {
				have = append(have, n)
			}
		}
		sort.Strings(have)
		return nil, fmt.Errorf("load: parameter %s is incomplete: has %s, needs weight (or qdata) with its scales", prefix, strings.Join(have, ", "))
	}
	var missing []string
	for prefix := range cfg.expected() {
		if !done[prefix] {
			missing = append(missing, prefix)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		if len(missing) > 5 {
			missing = append(missing[:5], fmt.Sprintf("… (%d in all)", len(missing)))
		}
		return nil, fmt.Errorf("load: missing tensors: %s", strings.Join(missing, ", "))
	}
	if m.LMHead == nil {
		m.LMHead = m.Embed
	}
	return m, nil
}

// upload turns a complete stored parameter into a backend weight.
func (m *Model) upload(prefix string, shape [2]int, p *pending, precision string) (backend.Weight, string, error) {
	out, in := shape[0], shape[1]
	dense := prefix == "model.embed_tokens" || prefix == "lm_head"
	if p.weight.DType.IsFloat() {
		t := p.weight
		if len(t.Shape) != 2 || t.Shape[0] != out || t.Shape[1] != in {
			return nil, "", fmt.Errorf("tensor %q: shape %v, want [%d %d]", t.Name, t.Shape, out, in)
		}
		if err := format.CheckFinite(t); err != nil {
			return nil, "", err
		}
		how := strings.ToLower(t.DType.String())
		if precision == "nvfp4" && !dense {
			v, err := t.Float32s(nil)
			if err != nil {
				return nil, "", err
			}
			q, err := nvfp4.QuantizeModelOpt(v, out, in)
			if err != nil {
				return nil, "", fmt.Errorf("tensor %q: %w", t.Name, err)
			}
			w, err := m.B.UploadWeight(backend.HostWeight{Name: prefix, NVFP4: q})
			return w, how + " → nvfp4", err
		}
		keep := precision
		if keep == "nvfp4" {
			keep = ""
		}
		w, err := m.B.UploadWeight(backend.HostWeight{Name: prefix, Dense: t, Keep: keep})
		if keep != "" && keep != how {
			how += " → " + keep
		}
		return w, how, err
	}
	// NVFP4: packed codes [out, in/2] + e4m3 scales [out, in/16] (+ fp32 tensor scale).
	q := &nvfp4.Matrix{Rows: out, Cols: in, Packed: p.weight.Data, Global: 1}
	if p.weight.DType != tensor.U8 && p.weight.DType != tensor.F4E2M1x2 {
		return nil, "", fmt.Errorf("tensor %q: dtype %v is neither a float type nor packed NVFP4 (U8)", p.weight.Name, p.weight.DType)
	}
	if len(p.weight.Shape) != 2 || p.weight.Shape[0] != out || p.weight.Shape[1]*2 != in {
		return nil, "", fmt.Errorf("tensor %q: packed shape %v, want [%d %d]", p.weight.Name, p.weight.Shape, out, in/2)
	}
	if p.scale.DType != tensor.F8E4M3 && p.scale.DType != tensor.U8 {
		return nil, "", fmt.Errorf("tensor %q: block scales must be F8_E4M3, got %v", p.scale.Name, p.scale.DType)
	}
	if len(p.scale.Shape) != 2 || p.scale.Shape[0] != out || p.scale.Shape[1]*nvfp4.BlockSize != in {
		return nil, "", fmt.Errorf("tensor %q: scale shape %v, want [%d %d]", p.scale.Name, p.scale.Shape, out, in/nvfp4.BlockSize)
	}
	q.Scales = p.scale.Data
	how := "nvfp4 (seed .dat, no tensor scale)"
	if !p.seed {
		g, err := p.scale2.Float32s(nil)
		if err != nil || len(g) != 1 {
			return nil, "", fmt.Errorf("tensor %q: want one float tensor scale, got %v%v", p.scale2.Name, p.scale2.DType, p.scale2.Shape)
		}
		q.Global = g[0]
		how = "nvfp4 (modelopt)"
	}
	if err := q.Validate(); err != nil {
		return nil, "", fmt.Errorf("parameter %s: %w", prefix, err)
	}
	if precision == "f32" || precision == "bf16" {
		v := q.Dequantize()
		t, err := tensor.FromFloat32s(prefix+".weight", tensor.F32, []int{out, in}, v)
		if err != nil {
			return nil, "", err
		}
		w, err := m.B.UploadWeight(backend.HostWeight{Name: prefix, Dense: t, Keep: precision})
		return w, how + " → " + precision, err
	}
	w, err := m.B.UploadWeight(backend.HostWeight{Name: prefix, NVFP4: q})
	return w, how, err
}

func layerIndex(prefix string) (int, string) {
	var i int
	var rest string
	if n, _ := fmt.Sscanf(prefix, "model.layers.%d.", &i); n == 1 {
		rest = prefix[strings.Index(prefix[len("model.layers."):], ".")+len("model.layers.")+1:]
		return i, rest
	}
	return -1, prefix
}

func (m *Model) setNorm(prefix string, t backend.Tensor) {
	i, rest := layerIndex(prefix)
	if i < 0 {
		m.Norm = t
		return
	}
	l := &m.Layers[i]
	switch rest {
	case "input_layernorm":
		l.InputNorm = t
	case "post_attention_layernorm":
		l.PostNorm = t
	case "self_attn.q_norm":
		l.QNorm = t
	case "self_attn.k_norm":
		l.KNorm = t
	}
}

func (m *Model) setLinear(prefix string, w backend.Weight) {
	i, rest := layerIndex(prefix)
	if i < 0 {
		if prefix == "lm_head" {
			m.LMHead = w
		} else {
			m.Embed = w
		}
		return
	}
	l := &m.Layers[i]
	switch rest {
	case "self_attn.q_proj":
		l.Q = w
	case "self_attn.k_proj":
		l.K = w
	case "self_attn.v_proj":
		l.V = w
	case "self_attn.o_proj":
		l.O = w
	case "mlp.gate_proj":
		l.Gate = w
	case "mlp.up_proj":
		l.Up = w
	case "mlp.down_proj":
		l.Down = w
	}
}

// Free releases every weight of the model on its backend.
func (m *Model) Free() {
	if m == nil {
		return
	}
	fw := func(w backend.Weight) {
		if w != nil {
			m.B.FreeWeight(w)
		}
	}
	ft := func(t backend.Tensor) {
		if t != nil {
			m.B.Free(t)
		}
	}
	if m.LMHead != m.Embed {
		fw(m.LMHead)
	}
	fw(m.Embed)
	ft(m.Norm)
	for _, l := range m.Layers {
		for _, w := range []backend.Weight{l.Q, l.K, l.V, l.O, l.Gate, l.Up, l.Down} {
			fw(w)
		}
		for _, t := range []backend.Tensor{l.InputNorm, l.PostNorm, l.QNorm, l.KNorm} {
			ft(t)
		}
	}
	m.Embed, m.LMHead, m.Norm, m.Layers = nil, nil, nil, nil
}
