package parity

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/format"
	"github.com/qwengo/qwengo/engine/nvfp4"
	"github.com/qwengo/qwengo/engine/qwen3"
	"github.com/qwengo/qwengo/engine/tensor"
)

// LoadModel loads the checkpoint at path (a directory with config.json, or a weight file with
// config.json beside it) onto b the way spec s asks: precision through qwen3.LoadOptions, QAT
// and the scale bug by rewriting the linear weights as they stream past (a format.Source
// wrapper), so engine/qwen3 loads them as any checkpoint. notes says what was rewritten.
func LoadModel(path string, s Spec, b backend.Backend, progress func(done, total int64)) (m *qwen3.Model, notes []string, err error) {
	s = s.normalized()
	if err := s.Validate(); err != nil {
		return nil, nil, err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, nil, err
	}
	dir := path
	if !fi.IsDir() {
		dir = filepath.Dir(path)
	}
	cfg, err := qwen3.LoadConfig(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, nil, err
	}
	if s.ScaleBug && s.ScaleBugLayer >= cfg.NumLayers {
		return nil, nil, fmt.Errorf("spec %s: scale-bug layer %d does not exist (the model has layers 0..%d)", s, s.ScaleBugLayer, cfg.NumLayers-1)
	}
	src, err := format.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer src.Close()
	precision := s.Precision
	if precision == PrecisionStored {
		precision = qwen3.KeepStored
	}
	var ws *rewriteSource
	var load format.Source = src
	if s.QAT || s.ScaleBug {
		if ws, err = newRewriteSource(src, s); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", path, err)
		}
		load = ws
	}
	m, err = qwen3.Load(cfg, load, b, qwen3.LoadOptions{Precision: precision, Progress: progress})
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	if ws != nil {
		notes = ws.notes()
	}
	return m, notes, nil
}

// linearParam reports whether a parameter prefix is a decoder linear and its layer.
func linearParam(prefix string) (layer int, ok bool) {
	rest, ok := strings.CutPrefix(prefix, "model.layers.")
	if !ok {
		return -1, false
	}
	num, name, ok := strings.Cut(rest, ".")
	if !ok {
		return -1, false
	}
	i, err := strconv.Atoi(num)
	if err != nil || i < 0 {
		return -1, false
	}
	switch name {
	case "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
		"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj":
		return i, true
	}
	return -1, false
}

// splitPart maps a stored name to (parameter prefix, part) for the parts of a linear weight:
// "weight" (dense, or packed codes in ModelOpt), "qdata" (the seed's packed codes), "scale"
// (block scales, both layouts), "scale2" (ModelOpt tensor scale); "" for anything else.
func splitPart(name string) (prefix, part string) {
	for _, s := range []struct{ suffix, part string }{
		{".weight.qdata", "qdata"}, {".weight.scale", "scale"},
		{".weight_scale_2", "scale2"}, {".weight_scale", "scale"},
		{".weight", "weight"}, {".qdata", "qdata"}, {".scale", "scale"},
	} {
		if p, ok := strings.CutSuffix(name, s.suffix); ok {
			return p, s.part
		}
	}
	return name, ""
}

// rewritten is one linear parameter the wrapper replaces.
type rewritten struct {
	prefix string
	parts  map[string]string // part → stored tensor name
	stored []string          // the stored names in storage order
	out    []format.TensorInfo
	// ready holds computed output tensors until Stream reads them.
	ready map[string]*tensor.Host
}

// rewriteSource wraps a checkpoint, replacing the linear weights that QAT or the scale bug
// change. Tensors lists the replacements at the place of the parameter's first stored part.
type rewriteSource struct {
	src   format.Source
	spec  Spec
	infos []format.TensorInfo
	byOut map[string]*rewritten // output name → parameter

	mu    sync.Mutex
	stats scaleStats
	nQAT  int
	nBug  int
	// bugPacked: the scale-bug layer stayed NVFP4 (scales re-encoded), else a dense image.
	bugPacked bool
}

func newRewriteSource(src format.Source, s Spec) (*rewriteSource, error) {
	w := &rewriteSource{src: src, spec: s, byOut: map[string]*rewritten{}}
	params := map[string]*rewritten{}
	var order []string // parameter prefixes and pass-through names, in storage order
	stored := map[string]format.TensorInfo{}
	for _, ti := range src.Tensors() {
		stored[ti.Name] = ti
		prefix, part := splitPart(ti.Name)
		layer, lin := linearParam(prefix)
		affected := lin && part != "" && (s.QAT || (s.ScaleBug && layer == s.ScaleBugLayer))
		if !affected {
			order = append(order, ti.Name)
			continue
		}
		p := params[prefix]
		if p == nil {
			p = &rewritten{prefix: prefix, parts: map[string]string{}}
			params[prefix] = p
			order = append(order, "\x00"+prefix)
		}
		if prev, dup := p.parts[part]; dup {
			return nil, fmt.Errorf("tensors %q and %q are both the %s of %s", prev, ti.Name, part, prefix)
		}
		p.parts[part] = ti.Name
		p.stored = append(p.stored, ti.Name)
	}
	for _, key := range order {
		prefix, isParam := strings.CutPrefix(key, "\x00")
		if !isParam {
			w.infos = append(w.infos, stored[key])
			continue
		}
		p := params[prefix]
		out, err := w.plan(p, stored)
		if err != nil {
			return nil, err
		}
		if out == nil { // nothing to change (QAT on a weight already stored as NVFP4)
			for _, name := range p.stored {
				w.infos = append(w.infos, stored[name])
			}
			continue
		}
		p.out = out
		for _, o := range out {
			w.byOut[o.Name] = p
			w.infos = append(w.infos, o)
		}
	}
	return w, nil
}

// packedOut reports whether a rewritten weight must stay NVFP4 (the loader keeps NVFP4).
func (w *rewriteSource) packedOut(storedPacked bool) bool {
	switch w.spec.Precision {
	case PrecisionNVFP4:
		return true
	case PrecisionStored:
		return storedPacked
	}
	return false
}

// plan decides a parameter's output tensors (nil: pass it through unchanged).
func (w *rewriteSource) plan(p *rewritten, stored map[string]format.TensorInfo) ([]format.TensorInfo, error) {
	dense, hasW := p.parts["weight"]
	codes, hasQ := p.parts["qdata"]
	var out, in int
	packed := false
	switch {
	case hasW && stored[dense].DType.IsFloat() && !hasQ:
		sh := stored[dense].Shape
		if len(sh) != 2 {
			return nil, fmt.Errorf("tensor %q: shape %v, want [out, in]", dense, sh)
		}
		out, in = sh[0], sh[1]
	case hasW || hasQ:
		if !hasQ {
			codes = dense
		}
		sh := stored[codes].Shape
		if len(sh) != 2 {
			return nil, fmt.Errorf("tensor %q: packed shape %v, want [out, in/2]", codes, sh)
		}
		out, in = sh[0], 2*sh[1]
		packed = true
		if _, ok := p.parts["scale"]; !ok {
			return nil, fmt.Errorf("parameter %s: packed NVFP4 codes %q without block scales", p.prefix, codes)
		}
	default:
		return nil, fmt.Errorf("parameter %s: no weight tensor (have %v)", p.prefix, p.parts)
	}
	bug := w.spec.ScaleBug && w.layerOf(p) == w.spec.ScaleBugLayer
	if !bug && packed { // QAT on an NVFP4 weight: the loader's dequantisation is the image
		return nil, nil
	}
	name := p.prefix + ".weight"
	if bug && w.packedOut(packed) {
		nb := in / nvfp4.BlockSize
		return []format.TensorInfo{
			{Name: name, DType: tensor.U8, Shape: []int{out, in / 2}, Size: int64(out * (in / 2))},
			{Name: p.prefix + ".weight_scale", DType: tensor.F8E4M3, Shape: []int{out, nb}, Size: int64(out * nb)},
			{Name: p.prefix + ".weight_scale_2", DType: tensor.F32, Shape: []int{}, Size: 4},
		}, nil
	}
	return []format.TensorInfo{{Name: name, DType: tensor.F32, Shape: []int{out, in}, Size: int64(out) * int64(in) * 4}}, nil
}

func (w *rewriteSource) layerOf(p *rewritten) int {
	l, _ := linearParam(p.prefix)
	return l
}

// Tensors implements format.Source.
func (w *rewriteSource) Tensors() []format.TensorInfo { return w.infos }

// Close implements format.Source (the caller closes the wrapped source).
func (w *rewriteSource) Close() error { return nil }

// Read implements format.Source: stored tensors pass through; a rewritten parameter is computed
// when its first output is read and handed out part by part.
func (w *rewriteSource) Read(name string) (*tensor.Host, error) {
	p := w.byOut[name]
	if p == nil {
		return w.src.Read(name)
	}
	if p.ready == nil {
		if err := w.compute(p); err != nil {
			return nil, err
		}
	}
	t, ok := p.ready[name]
	if !ok {
		return nil, fmt.Errorf("parameter %s: output %q was already read", p.prefix, name)
	}
	delete(p.ready, name)
	return t, nil
}

// matrix returns the parameter as NVFP4: stored codes and scales, or the ModelOpt
// quantisation of its dense weight.
func (w *rewriteSource) matrix(p *rewritten) (*nvfp4.Matrix, []float32, error) {
	out, in := p.out[0].Shape[0], 0
	if name, ok := p.parts["qdata"]; ok || !w.denseStored(p) {
		if !ok {
			name = p.parts["weight"]
		}
		codes, err := w.src.Read(name)
		if err != nil {
			return nil, nil, err
		}
		scales, err := w.src.Read(p.parts["scale"])
		if err != nil {
			return nil, nil, err
		}
		in = 2 * codes.Shape[1]
		q := &nvfp4.Matrix{Rows: out, Cols: in, Packed: codes.Data, Scales: scales.Data, Global: 1}
		if s2, ok := p.parts["scale2"]; ok {
			g, err := w.src.Read(s2)
			if err != nil {
				return nil, nil, err
			}
			v, err := g.Float32s(nil)
			if err != nil || len(v) != 1 {
				return nil, nil, fmt.Errorf("tensor %q: want one float tensor scale, got %v%v", s2, g.DType, g.Shape)
			}
			q.Global = v[0]
		}
		if err := q.Validate(); err != nil {
			return nil, nil, fmt.Errorf("parameter %s: %w", p.prefix, err)
		}
		return q, nil, nil
	}
	t, err := w.src.Read(p.parts["weight"])
	if err != nil {
		return nil, nil, err
	}
	v, err := t.Float32s(nil)
	if err != nil {
		return nil, nil, err
	}
	if err := format.CheckFinite(t); err != nil {
		return nil, nil, err
	}
	q, err := nvfp4.QuantizeModelOpt(v, t.Shape[0], t.Shape[1])
	if err != nil {
		return nil, nil, fmt.Errorf("tensor %q: %w", t.Name, err)
	}
	return q, v, nil
}

func (w *rewriteSource) denseStored(p *rewritten) bool {
	_, hasQ := p.parts["qdata"]
	_, hasS := p.parts["scale"]
	return !hasQ && !hasS
}

func (w *rewriteSource) compute(p *rewritten) error {
	q, _, err := w.matrix(p)
	if err != nil {
		return err
	}
	bug := w.spec.ScaleBug && w.layerOf(p) == w.spec.ScaleBugLayer
	p.ready = map[string]*tensor.Host{}
	name := p.prefix + ".weight"
	if !bug { // QAT: the quantise-dequantise image, dense
		t, err := tensor.FromFloat32s(name, tensor.F32, []int{q.Rows, q.Cols}, q.Dequantize())
		if err != nil {
			return err
		}
		p.ready[name] = t
		w.mu.Lock()
		w.nQAT++
		w.mu.Unlock()
		return nil
	}
	img := ScaleBugDequantize(q)
	w.mu.Lock()
	w.stats.add(q, img)
	w.nBug++
	w.mu.Unlock()
	if len(p.out) == 3 {
		w.bugPacked = true
		bq := ReadScalesAsIntegers(q)
		g, err := tensor.FromFloat32s(p.prefix+".weight_scale_2", tensor.F32, []int{}, []float32{bq.Global})
		if err != nil {
			return err
		}
		p.ready[name] = &tensor.Host{Name: name, DType: tensor.U8, Shape: []int{q.Rows, q.Cols / 2}, Data: bq.Packed}
		p.ready[p.prefix+".weight_scale"] = &tensor.Host{Name: p.prefix + ".weight_scale", DType: tensor.F8E4M3, Shape: []int{q.Rows, q.Cols / nvfp4.BlockSize}, Data: bq.Scales}
		p.ready[p.prefix+".weight_scale_2"] = g
		return nil
	}
	t, err := tensor.FromFloat32s(name, tensor.F32, []int{q.Rows, q.Cols}, img)
	if err != nil {
		return err
	}
	p.ready[name] = t
	return nil
}

// notes describes what the wrapper rewrote.
func (w *rewriteSource) notes() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var n []string
	if w.nQAT > 0 {
		n = append(n, fmt.Sprintf("qat: %d linears replaced by their NVFP4 (ModelOpt) quantise-dequantise image", w.nQAT))
	}
	if w.nBug > 0 {
		how := "as an exact dense image"
		if w.bugPacked {
			how = "kept as NVFP4, each integer re-encoded as the nearest E4M3 scale"
		}
		n = append(n, fmt.Sprintf("scale bug on layer %d (%d linears, %s): E4M3 scale bytes read as integers; %s",
			w.spec.ScaleBugLayer, w.nBug, how, w.stats.String()))
	}
	return n
}
