package qwen3

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/format"
	"github.com/qwengo/qwengo/engine/nvfp4"
	"github.com/qwengo/qwengo/engine/tensor"
)

// Layer holds one decoder block's weights on the backend. Norm weights are [1, n] tensors.
type Layer struct {
	InputNorm, PostNorm, QNorm, KNorm backend.Tensor
	Q, K, V, O, Gate, Up, Down        backend.Weight
}

// Model is a Qwen3 model resident on a backend.
type Model struct {
	Config *Config
	B      backend.Backend
	Embed  backend.Weight // [vocab, hidden]
	// LMHead is [vocab, hidden]: Embed itself when tied, unless the checkpoint stores its own
	// lm_head (the seed's .dat files do; see Load).
	LMHead backend.Weight
	Norm   backend.Tensor // final norm, [1, hidden]
	Layers []Layer
	// Sources records how each parameter was stored and converted, by prefix
	// ("model.layers.0.mlp.up_proj" → "bf16", "nvfp4 (modelopt)", "f32 → nvfp4", …).
	Sources map[string]string
	// Unfused makes Forward use the basic backend ops even when the backend has fused kernels
	// (backend.Fused), for comparisons; the results are the same either way.
	Unfused bool
	// OpDecode makes one-token Forward calls run their layers op by op even when the backend
	// can run them all in one call (backend.LayerDecoder), for comparisons: that path sums in
	// another order, so its results agree within float tolerance, not bit for bit. Unfused
	// implies it.
	OpDecode bool
	// KVDType is the element type of the KV caches NewKVCache and NewBatchKVCache make: F32,
	// BF16, or 0 for the backend's default (backend.KVCacheFormat: bf16 on CUDA, float32 on
	// the CPU). bf16 halves the cache's memory and the bytes a decode step reads; float32 keeps
	// keys and values exactly as computed (for comparing paths bit for bit).
	KVDType tensor.DType

	// decodeSet is the LayerDecoder's view of the layers and the caches of decodeFor.
	decodeMu  sync.Mutex
	decodeFor *KVCache
	decodeSet []backend.DecodeLayer
}

// Precisions for LoadOptions.Precision.
const (
	KeepStored = ""      // as the checkpoint stores them (F16 widened to f32)
	F32        = "f32"   // dense float32 (NVFP4 dequantised)
	BF16       = "bf16"  // dense bfloat16 (NVFP4 dequantised)
	NVFP4      = "nvfp4" // dense linears quantised with nvfp4.QuantizeModelOpt
)

// LoadOptions controls Load.
type LoadOptions struct {
	// Precision of the linear weights (q/k/v/o, gate/up/down): KeepStored, F32, BF16 or NVFP4.
	// Embeddings and norms stay dense (with F32 or BF16 the embedding takes that precision;
	// with NVFP4 it is kept as stored); lm_head is treated as the embedding is.
	Precision string
	// Progress, when set, is called after each tensor with the bytes read so far and in all.
	Progress func(done, total int64)
	// LMHead selects the logits' matrix: "" (KeepStored: the stored lm_head, or the embedding
	// itself when tied) or NVFP4: a dense lm_head, the tied embedding included, is quantised with
	// nvfp4.QuantizeModelOpt into an NVFP4 copy that the logits use, while the embedding stays as
	// it is for token lookups. Why: every decoded token reads the whole lm_head — Qwen3-4B's is
	// 778 MB in bf16 (~185 µs a token on an H200, 7 % of a batch-1 step), 219 MB in NVFP4. The
	// logits then carry NVFP4's rounding, so greedy tokens can differ from the dense head's. Save
	// writes the head the model computes with as lm_head (in bf16, as Save writes every lm_head;
	// tie_word_embeddings false), as it writes a seed's stored head.
	LMHead string
}

// Open loads a checkpoint from path: a directory with config.json and weights
// (model.safetensors, a sharded index, or one .safetensors/.dat file), or a weight file with
// config.json beside it.
func Open(path string, b backend.Backend, opt LoadOptions) (*Model, error) {
	dir := path
	if fi, err := os.Stat(path); err != nil {
		return nil, err
	} else if !fi.IsDir() {
		dir = filepath.Dir(path)
	}
	cfg, err := LoadConfig(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, err
	}
	src, err := format.Open(path)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	m, err := Load(cfg, src, b, opt)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}

// pending collects the parts of one quantised parameter until all have arrived.
type pending struct {
	weight, scale, scale2 *tensor.Host
	seed                  bool
}

// splitName maps a stored tensor name to (parameter prefix, part): part is "weight", "qdata",
// "scale" (the seed's), "weight_scale", "weight_scale_2", "ignore", or "" when unrecognised.
func splitName(name string) (prefix, part string) {
	for _, s := range []struct{ suffix, part string }{
		{".weight.qdata", "qdata"}, {".weight.scale", "scale"}, // the seed's .dat
		{".weight_scale_2", "weight_scale_2"}, {".weight_scale", "weight_scale"}, // ModelOpt
		{".input_scale", "ignore"},                     // W4A4 activation scale: unused by weight-only NVFP4
		{".k_scale", "ignore"}, {".v_scale", "ignore"}, // FP8 KV cache scales: the cache stays dense
		{".weight", "weight"}, {".qdata", "qdata"}, {".scale", "scale"},
	} {
		if strings.HasSuffix(name, s.suffix) {
			return strings.TrimSuffix(name, s.suffix), s.part
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

// Load streams the weights of src onto b in one pass (host memory bounded by the largest
// tensor plus the parts of one quantised parameter).
//
// Recognised names: Hugging Face (model.embed_tokens.weight, model.layers.{i}.self_attn.
// {q,k,v,o}_proj.weight, …q_norm/k_norm, mlp.{gate,up,down}_proj.weight, input_layernorm,
// post_attention_layernorm, model.norm.weight, lm_head.weight); NVFP4 in the ModelOpt layout
// (X.weight U8 [out, in/2] + X.weight_scale F8_E4M3 [out, in/16] + X.weight_scale_2 F32 scalar;
// input_scale, k_scale and v_scale are ignored); the seed's .dat (X.weight.qdata + X.weight.scale
// or X.qdata + X.scale, no tensor scale, float16 norms and embeddings).
//
// A checkpoint may store lm_head although the config ties it: the seed's .dat files store an
// NVFP4 lm_head while their config says tie_word_embeddings, and the seed computed its logits
// with that stored matrix, so Load uses it (Sources["lm_head"] says so) and Save writes it with
// tie_word_embeddings false.
//
// Errors name the tensor: a missing or unexpected tensor, a shape mismatch (expected vs got),
// NaN or Inf in a float tensor (with the element), an unsupported dtype.
func Load(cfg *Config, src format.Source, b backend.Backend, opt LoadOptions) (*Model, error) {
	switch opt.Precision {
	case KeepStored, F32, BF16, NVFP4:
	default:
		return nil, fmt.Errorf("load: unknown precision %q (want \"\", f32, bf16 or nvfp4)", opt.Precision)
	}
	switch opt.LMHead {
	case KeepStored, NVFP4:
	default:
		return nil, fmt.Errorf("load: unknown lm_head format %q (want \"\" or nvfp4)", opt.LMHead)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m := &Model{Config: cfg, B: b, Layers: make([]Layer, cfg.NumLayers), Sources: map[string]string{}}
	ok := false
	var embedHead backend.Weight // the tied embedding's NVFP4 copy (LoadOptions.LMHead)
	storedHead := false          // the checkpoint has its own lm_head: no copy of the embedding
	for _, ti := range src.Tensors() {
		if p, _ := splitName(ti.Name); p == "lm_head" {
			storedHead = true
		}
	}
	defer func() {
		if !ok {
			m.Free() // a failed load leaves nothing allocated
			if embedHead != nil {
				b.FreeWeight(embedHead)
			}
		}
	}()
	want := cfg.expected()
	if cfg.TieEmbeddings {
		want["lm_head"] = [2]int{cfg.VocabSize, cfg.HiddenSize} // allowed, not required: see above
	}
	done := map[string]bool{}
	parts := map[string]*pending{}
	err := format.Stream(src, func(t *tensor.Host) error {
		prefix, part := splitName(t.Name)
		shape, ok := want[prefix]
		if !ok || part == "" {
			return fmt.Errorf("unexpected tensor %q (%v%v): not part of a Qwen3 model with this config", t.Name, t.DType, t.Shape)
		}
		if part == "ignore" {
			return nil
		}
		if done[prefix] {
			return fmt.Errorf("tensor %q: parameter %s given twice", t.Name, prefix)
		}
		if shape[1] == 0 {
			if err := m.loadNorm(prefix, part, shape[0], t); err != nil {
				return err
			}
			done[prefix] = true
			return nil
		}
		p := parts[prefix]
		if p == nil {
			p = &pending{}
			parts[prefix] = p
		}
		slot := map[string]**tensor.Host{"weight": &p.weight, "qdata": &p.weight, "weight_scale": &p.scale, "scale": &p.scale, "weight_scale_2": &p.scale2}[part]
		if *slot != nil {
			return fmt.Errorf("tensor %q: %s of %s given twice", t.Name, part, prefix)
		}
		*slot = t
		if p.weight != nil && !p.weight.DType.IsFloat() && p.weight.DType != tensor.U8 && p.weight.DType != tensor.F4E2M1x2 {
			return fmt.Errorf("tensor %q: dtype %v is unsupported (want F32, F16, BF16, or U8 packed NVFP4 with scales)", p.weight.Name, p.weight.DType)
		}
		p.seed = p.seed || part == "qdata" || part == "scale"
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
		if opt.LMHead == NVFP4 && (prefix == "lm_head" || prefix == "model.embed_tokens" && !storedHead) && w.Kind() != NVFP4 {
			head, err := m.nvfp4Head(p.weight, shape)
			if err != nil {
				return err
			}
			if prefix == "lm_head" {
				b.FreeWeight(w)
				m.LMHead = head
				m.Sources[prefix] = how + " → nvfp4 (LoadOptions.LMHead)"
			} else {
				embedHead = head
			}
		}
		return nil
	}, opt.Progress)
	if err != nil {
		return nil, fmt.Errorf("load: %w", err)
	}
	for _, prefix := range sortedKeys(parts) {
		p := parts[prefix]
		var have []string
		for _, x := range []struct {
			n string
			h *tensor.Host
		}{{"weight", p.weight}, {"weight_scale", p.scale}, {"weight_scale_2", p.scale2}} {
			if x.h != nil {
				have = append(have, x.n+" "+x.h.DType.String())
			}
		}
		return nil, fmt.Errorf("load: parameter %s is incomplete: has %s; a packed NVFP4 weight needs weight_scale and weight_scale_2 (ModelOpt) or qdata and scale (seed .dat)", prefix, strings.Join(have, ", "))
	}
	var missing []string
	for prefix := range cfg.expected() {
		if !done[prefix] {
			missing = append(missing, prefix)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		if n := len(missing); n > 5 {
			missing = append(missing[:5], fmt.Sprintf("… (%d in all)", n))
		}
		return nil, fmt.Errorf("load: missing tensors: %s", strings.Join(missing, ", "))
	}
	switch {
	case m.LMHead == nil && embedHead != nil:
		m.LMHead, embedHead = embedHead, nil
		m.Sources["lm_head"] = "model.embed_tokens → nvfp4 copy (LoadOptions.LMHead)"
	case m.LMHead == nil:
		m.LMHead = m.Embed
	case cfg.TieEmbeddings:
		m.Sources["lm_head"] += " (stored although tie_word_embeddings: used)"
	}
	ok = true
	return m, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// loadNorm uploads a norm vector as a [1, n] f32 tensor.
func (m *Model) loadNorm(prefix, part string, n int, t *tensor.Host) error {
	if part != "weight" {
		return fmt.Errorf("tensor %q: norm %s cannot be quantised", t.Name, prefix)
	}
	if !t.DType.IsFloat() {
		return fmt.Errorf("tensor %q: dtype %v is unsupported for a norm (want F32, F16 or BF16)", t.Name, t.DType)
	}
	if len(t.Shape) != 1 || t.Shape[0] != n {
		return fmt.Errorf("tensor %q: shape %v, want [%d]", t.Name, t.Shape, n)
	}
	if err := checkFinite(t); err != nil {
		return err
	}
	v, err := t.Float32s(nil)
	if err != nil {
		return err
	}
	nt, err := m.B.Alloc(backend.Weights, 1, n)
	if err != nil {
		return fmt.Errorf("tensor %q: %w", t.Name, err)
	}
	if err := m.B.Upload(nt, v); err != nil {
		m.B.Free(nt)
		return err
	}
	m.setNorm(prefix, nt)
	m.Sources[prefix] = strings.ToLower(t.DType.String())
	return nil
}

// checkFinite reports the first NaN or Inf of a float tensor, reading the raw bytes (no
// float32 copy of a large embedding).
func checkFinite(t *tensor.Host) error {
	bad, err := t.FirstNonFinite()
	if err != nil {
		return err
	}
	if bad < 0 {
		return nil
	}
	idx := make([]int, len(t.Shape))
	for k, rem := len(t.Shape)-1, bad; k >= 0; k-- {
		idx[k] = rem % t.Shape[k]
		rem /= t.Shape[k]
	}
	v, _ := (&tensor.Host{DType: t.DType, Shape: []int{1}, Data: t.Data[bad*t.DType.Size() : (bad+1)*t.DType.Size()]}).Float32s(nil)
	return fmt.Errorf("tensor %q: element %d (index %v) is %v", t.Name, bad, idx, v[0])
}

// nvfp4Head quantises the dense [rows, cols] matrix t (the embedding or a stored lm_head) into
// the NVFP4 weight LoadOptions.LMHead asks for.
func (m *Model) nvfp4Head(t *tensor.Host, shape [2]int) (backend.Weight, error) {
	v, err := t.Float32s(nil)
	if err != nil {
		return nil, err
	}
	q, err := nvfp4.QuantizeModelOpt(v, shape[0], shape[1])
	if err != nil {
		return nil, fmt.Errorf("tensor %q as an NVFP4 lm_head: %w", t.Name, err)
	}
	return m.B.UploadWeight(backend.HostWeight{Name: "lm_head", NVFP4: q})
}

// upload turns a complete stored parameter into a backend weight.
func (m *Model) upload(prefix string, shape [2]int, p *pending, precision string) (backend.Weight, string, error) {
	out, in := shape[0], shape[1]
	dense := prefix == "model.embed_tokens" || prefix == "lm_head"
	if t := p.weight; t.DType.IsFloat() {
		if len(t.Shape) != 2 || t.Shape[0] != out || t.Shape[1] != in {
			return nil, "", fmt.Errorf("tensor %q: shape %v, want [%d %d]", t.Name, t.Shape, out, in)
		}
		if err := checkFinite(t); err != nil {
			return nil, "", err
		}
		how := strings.ToLower(t.DType.String())
		if precision == NVFP4 && !dense {
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
		if keep == NVFP4 {
			keep = KeepStored
		}
		w, err := m.B.UploadWeight(backend.HostWeight{Name: prefix, Dense: t, Keep: keep})
		if err != nil {
			return nil, "", err
		}
		if k := w.Kind(); k != how {
			how += " → " + k
		}
		return w, how, nil
	}
	// Packed NVFP4: codes [out, in/2] + E4M3 block scales [out, in/16] (+ an F32 tensor scale).
	if p.weight.DType != tensor.U8 && p.weight.DType != tensor.F4E2M1x2 {
		return nil, "", fmt.Errorf("tensor %q: dtype %v is unsupported (want a float type, or U8 packed NVFP4 with scales)", p.weight.Name, p.weight.DType)
	}
	if len(p.weight.Shape) != 2 || p.weight.Shape[0] != out || p.weight.Shape[1]*2 != in {
		return nil, "", fmt.Errorf("tensor %q: packed shape %v, want [%d %d]", p.weight.Name, p.weight.Shape, out, in/2)
	}
	if p.scale.DType != tensor.F8E4M3 && p.scale.DType != tensor.U8 {
		return nil, "", fmt.Errorf("tensor %q: block scales have dtype %v, want F8_E4M3", p.scale.Name, p.scale.DType)
	}
	if in%nvfp4.BlockSize != 0 || len(p.scale.Shape) != 2 || p.scale.Shape[0] != out || p.scale.Shape[1]*nvfp4.BlockSize != in {
		return nil, "", fmt.Errorf("tensor %q: scale shape %v, want [%d %d]", p.scale.Name, p.scale.Shape, out, in/nvfp4.BlockSize)
	}
	q := &nvfp4.Matrix{Rows: out, Cols: in, Packed: p.weight.Data, Scales: p.scale.Data, Global: 1}
	how := "nvfp4 (seed .dat, no tensor scale)"
	if !p.seed {
		g, err := p.scale2.Float32s(nil)
		if err != nil || len(g) != 1 {
			return nil, "", fmt.Errorf("tensor %q: want one float tensor scale, got %v%v", p.scale2.Name, p.scale2.DType, p.scale2.Shape)
		}
		if math.IsNaN(float64(g[0])) || math.IsInf(float64(g[0]), 0) || g[0] <= 0 {
			return nil, "", fmt.Errorf("tensor %q: tensor scale %v must be finite and positive", p.scale2.Name, g[0])
		}
		q.Global = g[0]
		how = "nvfp4 (modelopt)"
	}
	if err := q.Validate(); err != nil {
		return nil, "", fmt.Errorf("tensor %q: %w", p.weight.Name, err)
	}
	if precision == F32 || precision == BF16 {
		t, err := tensor.FromFloat32s(prefix+".weight", tensor.F32, []int{out, in}, q.Dequantize())
		if err != nil {
			return nil, "", err
		}
		w, err := m.B.UploadWeight(backend.HostWeight{Name: prefix, Dense: t, Keep: precision})
		return w, how + " → " + precision, err
	}
	w, err := m.B.UploadWeight(backend.HostWeight{Name: prefix, NVFP4: q})
	return w, how, err
}

// layerIndex splits "model.layers.{i}.rest" into (i, rest); other names give (-1, name).
func layerIndex(prefix string) (int, string) {
	rest, ok := strings.CutPrefix(prefix, "model.layers.")
	if !ok {
		return -1, prefix
	}
	num, rest, ok := strings.Cut(rest, ".")
	var i int
	if _, err := fmt.Sscan(num, &i); !ok || err != nil {
		return -1, prefix
	}
	return i, rest
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

// WeightBytes is the backend memory the model's parameters take.
func (m *Model) WeightBytes() int64 {
	var n int64
	for _, p := range m.params() {
		switch {
		case p.w != nil:
			n += p.w.Bytes()
		case p.norm != nil:
			n += int64(p.norm.Cols() * p.norm.DType().Size())
		}
	}
	return n
}

// String summarises the model.
func (m *Model) String() string {
	c := m.Config
	return fmt.Sprintf("Qwen3: %d layers, hidden %d, heads %d/%d × %d, intermediate %d, vocab %d, %.4gM parameters; embed %s, layer 0 q_proj %s; %s of weights on %s",
		c.NumLayers, c.HiddenSize, c.NumHeads, c.NumKVHeads, c.HeadDim, c.IntermediateSize, c.VocabSize, float64(c.NumParams())/1e6,
		m.Sources["model.embed_tokens"], m.Sources["model.layers.0.self_attn.q_proj"], backend.Human(m.WeightBytes()), m.B.Name())
}

// Free releases every weight of the model on its backend; the model is unusable afterwards.
func (m *Model) Free() {
	if m == nil {
		return
	}
	m.decodeMu.Lock()
	m.decodeFor, m.decodeSet = nil, nil
	m.decodeMu.Unlock()
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
