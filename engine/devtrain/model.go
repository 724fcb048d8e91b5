package devtrain

import (
	"errors"
	"fmt"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/grad"
	"github.com/qwengo/qwengo/engine/qwen3"
	"github.com/qwengo/qwengo/engine/tensor"
)

// The parameters of one decoder layer, in grad.Model's order.
const (
	pLn1 = iota
	pQ
	pK
	pV
	pQn
	pKn
	pO
	pLn2
	pGate
	pUp
	pDown
	nLayerParams
)

var layerSuffix = [nLayerParams]string{
	"input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
	"self_attn.v_proj.weight", "self_attn.q_norm.weight", "self_attn.k_norm.weight",
	"self_attn.o_proj.weight", "post_attention_layernorm.weight", "mlp.gate_proj.weight",
	"mlp.up_proj.weight", "mlp.down_proj.weight",
}

// param is one resident parameter: its master weight, a tensor view for norms, its moments.
type param struct {
	name       string
	rows, cols int
	noDecay    bool
	w          backend.Weight
	view       backend.Tensor // norms: the f32 weight as a [1, n] tensor
	st         backend.AdamWState
	steps      int // updates applied (AdamW's bias correction counts per parameter)
}

// Model is a Qwen3 model whose master weights, gradients and AdamW moments are resident on a
// training backend. It is used by one goroutine at a time.
type Model struct {
	b      backend.Training
	cfg    *qwen3.Config
	opt    Options
	params []*param
	embed  int
	lm     int // == embed when tied
	norm   int
	layers [][nLayerParams]int
	// grads are the resident parameter gradients: every parameter unfused; fused, only the
	// embedding, lm_head and final norm (layers share layerGrads).
	grads      []backend.Tensor
	layerGrads [nLayerParams]backend.Tensor
	step       int
	closed     bool
}

// New uploads gm's parameters onto b as trainable masters (matrices in opt.Master
// precision, norms f32), allocates their AdamW moments (opt.State) and the resident
// gradients. gm itself is not kept: train it further only through the returned Model.
func New(b backend.Training, gm *grad.Model, opt Options) (*Model, error) {
	if b == nil || gm == nil || gm.Config == nil {
		return nil, errors.New("devtrain: New needs a training backend and a model with a config")
	}
	if gm.QAT {
		return nil, errors.New("devtrain: QAT (projections through NVFP4 quantise-dequantise) is not supported yet; clear grad.Model.QAT")
	}
	cfg := gm.Config
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("devtrain: %w", err)
	}
	opt, err := opt.normalize(cfg.VocabSize)
	if err != nil {
		return nil, err
	}
	if opt.LayerChunkRows < 0 {
		return nil, fmt.Errorf("devtrain: LayerChunkRows %d: want ≥ 0 (0 = all rows at once)", opt.LayerChunkRows)
	}
	if opt.CheckpointBF16 {
		if !opt.Recompute {
			return nil, errors.New("devtrain: CheckpointBF16 keeps the inputs that Recompute keeps: turn Recompute on")
		}
		if _, ok := b.(backend.BF16Store); !ok {
			return nil, fmt.Errorf("devtrain: CheckpointBF16: backend %s cannot store bf16 buffers (backend.BF16Store)", b.Name())
		}
	}
	m := &Model{b: b, cfg: cfg, opt: opt}
	ok := false
	defer func() {
		if !ok {
			m.Close()
		}
	}()
	if err := m.index(gm); err != nil {
		return nil, err
	}
	for i, p := range gm.Params {
		if err := m.upload(i, p); err != nil {
			return nil, err
		}
	}
	m.grads = make([]backend.Tensor, len(m.params))
	for i, p := range m.params {
		if opt.FusedOptimizer && m.inLayer(i) {
			continue
		}
		if m.grads[i], err = backend.AllocGradient(b, p.rows, p.cols, m.gradType(p)); err != nil {
			return nil, fmt.Errorf("devtrain: gradient of %s: %w", p.name, err)
		}
	}
	if opt.FusedOptimizer && len(m.layers) > 0 {
		for k, i := range m.layers[0] {
			p := m.params[i]
			if m.layerGrads[k], err = backend.AllocGradient(b, p.rows, p.cols, m.gradType(p)); err != nil {
				return nil, fmt.Errorf("devtrain: layer gradient buffer %s: %w", layerSuffix[k], err)
			}
		}
	}
	ok = true
	return m, nil
}

// gradType is the element type of p's gradient: Options.Grad for matrices, F32 for norms.
func (m *Model) gradType(p *param) tensor.DType {
	if p.rows > 1 && m.opt.Grad == "bf16" {
		return tensor.BF16
	}
	return tensor.F32
}

// index finds every parameter of gm by name and checks its shape against the config.
func (m *Model) index(gm *grad.Model) error {
	c := m.cfg
	byName := map[string]int{}
	for i, p := range gm.Params {
		byName[p.Name] = i
	}
	find := func(name string, rows, cols int) (int, error) {
		i, ok := byName[name]
		if !ok {
			return 0, fmt.Errorf("devtrain: the model has no parameter %q", name)
		}
		if p := gm.Params[i]; p.Rows != rows || p.Cols != cols || len(p.W) != rows*cols {
			return 0, fmt.Errorf("devtrain: parameter %q is [%d, %d] with %d values, the config wants [%d, %d]", name, p.Rows, p.Cols, len(p.W), rows, cols)
		}
		return i, nil
	}
	H, QD, KV, I, hd := c.HiddenSize, c.QDim(), c.KVDim(), c.IntermediateSize, c.HeadDim
	shapes := [nLayerParams][2]int{{1, H}, {QD, H}, {KV, H}, {KV, H}, {1, hd}, {1, hd}, {H, QD}, {1, H}, {I, H}, {I, H}, {H, I}}
	var err error
	if m.embed, err = find("model.embed_tokens.weight", c.VocabSize, H); err != nil {
		return err
	}
	for l := 0; l < c.NumLayers; l++ {
		var idx [nLayerParams]int
		for k, suf := range layerSuffix {
			if idx[k], err = find(fmt.Sprintf("model.layers.%d.%s", l, suf), shapes[k][0], shapes[k][1]); err != nil {
				return err
			}
		}
		m.layers = append(m.layers, idx)
	}
	if m.norm, err = find("model.norm.weight", 1, H); err != nil {
		return err
	}
	m.lm = m.embed
	if !c.TieEmbeddings {
		if m.lm, err = find("lm_head.weight", c.VocabSize, H); err != nil {
			return err
		}
	}
	want := 2 + c.NumLayers*nLayerParams
	if !c.TieEmbeddings {
		want++
	}
	if len(gm.Params) != want {
		return fmt.Errorf("devtrain: the model has %d parameters, the config wants %d", len(gm.Params), want)
	}
	return nil
}

// inLayer reports whether parameter i belongs to a decoder layer.
func (m *Model) inLayer(i int) bool { return i != m.embed && i != m.lm && i != m.norm }

// upload stores parameter i and allocates its moments.
func (m *Model) upload(i int, gp *grad.Param) error {
	p := &param{name: gp.Name, rows: gp.Rows, cols: gp.Cols, noDecay: gp.NoDecay}
	m.params = append(m.params, p)
	keep := "f32"
	if gp.Rows > 1 && m.opt.Master == "bf16" {
		keep = "bf16"
	}
	h, err := tensor.FromFloat32s(gp.Name, tensor.F32, []int{gp.Rows, gp.Cols}, gp.W)
	if err != nil {
		return fmt.Errorf("devtrain: %s: %w", gp.Name, err)
	}
	if p.w, err = m.b.UploadWeight(backend.HostWeight{Name: gp.Name, Dense: h, Keep: keep}); err != nil {
		return fmt.Errorf("devtrain: upload %s: %w", gp.Name, err)
	}
	if gp.Rows == 1 {
		if p.view, err = m.b.WeightTensor(p.w); err != nil {
			return fmt.Errorf("devtrain: %s as a tensor: %w", gp.Name, err)
		}
	}
	if p.st, err = m.b.NewAdamWState(m.opt.State, gp.Rows, gp.Cols); err != nil {
		return fmt.Errorf("devtrain: AdamW state of %s: %w", gp.Name, err)
	}
	return nil
}

// Config returns the model's configuration.
func (m *Model) Config() *qwen3.Config { return m.cfg }

// Options returns the options in effect (defaults filled in).
func (m *Model) Options() Options { return m.opt }

// Steps is the number of applied optimizer steps.
func (m *Model) Steps() int { return m.step }

// Backend returns the backend the model lives on.
func (m *Model) Backend() backend.Training { return m.b }

// NumParams is the number of trainable scalars.
func (m *Model) NumParams() int64 {
	var n int64
	for _, p := range m.params {
		n += int64(p.rows) * int64(p.cols)
	}
	return n
}

// Memory reports the backend's memory (weights, moments, gradients, activations).
func (m *Model) Memory() backend.MemStats { return m.b.Memory() }

// OptimizerBytesPerParam is the AdamW moments' storage (with their block scales) per
// trainable scalar.
func (m *Model) OptimizerBytesPerParam() float64 {
	var s int64
	for _, p := range m.params {
		if p.st != nil {
			s += p.st.Bytes()
		}
	}
	if n := m.NumParams(); n > 0 {
		return float64(s) / float64(n)
	}
	return 0
}

// Export downloads the master weights into a new host grad.Model (same config and
// parameter order), ready for SaveNVFP4, SaveDat, Source or further host training.
func (m *Model) Export() (*grad.Model, error) {
	if m.closed {
		return nil, errors.New("devtrain: Export after Close")
	}
	gm, err := grad.New(m.cfg)
	if err != nil {
		return nil, err
	}
	err = backend.RunOn(m.b, func() error {
		for i, p := range m.params {
			hw, err := m.b.DownloadWeight(p.w)
			if err != nil {
				return fmt.Errorf("devtrain: download %s: %w", p.name, err)
			}
			if hw.Dense == nil {
				return fmt.Errorf("devtrain: download %s: not a dense weight", p.name)
			}
			dst := gm.Params[i].W
			v, err := hw.Dense.Float32s(dst)
			if err != nil {
				return fmt.Errorf("devtrain: download %s: %w", p.name, err)
			}
			if len(v) != len(dst) {
				return fmt.Errorf("devtrain: download %s: %d values, want %d", p.name, len(v), len(dst))
			}
			if &v[0] != &dst[0] {
				copy(dst, v)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return gm, nil
}

// Close frees everything the model holds on the backend (weights, moments, gradients).
// Closing twice does nothing. It always returns nil (io.Closer).
func (m *Model) Close() error {
	if m.closed {
		return nil
	}
	m.closed = true
	backend.RunOn(m.b, func() error {
		for _, g := range m.grads {
			if g != nil {
				m.b.Free(g)
			}
		}
		for _, g := range m.layerGrads {
			if g != nil {
				m.b.Free(g)
			}
		}
		for _, p := range m.params {
			if p.st != nil {
				m.b.FreeAdamWState(p.st)
			}
			if p.w != nil {
				m.b.FreeWeight(p.w)
			}
		}
		return nil
	})
	m.grads, m.layerGrads, m.params = nil, [nLayerParams]backend.Tensor{}, nil
	return nil
}

// PlanItem is one part of a step's memory at its peak.
type PlanItem struct {
	What     string           // what the bytes hold
	Category backend.Category // the category they are accounted under
	Bytes    int64
}

// PeakPlan lists what a Step on B sequences of T positions (T after trimming trailing
// padding) holds at its peak, the chunked loss after the forward: the resident masters,
// moments and parameter gradients (their accounted bytes), then the step's float32 tensors,
// from the shapes and the options alone. Backward, recomputation and fused updates allocate
// nothing more; the tensors they free go back to the backend. Left out is what a backend adds
// by itself (its ops' scratch, a cache of freed blocks: Workspace), so on the CPU reference
// the sum is the step's measured peak, and on a GPU the difference from it is the backend's
// workspace.
func (m *Model) PeakPlan(B, T int) []PlanItem {
	if m.closed || B <= 0 || T <= 0 {
		return nil
	}
	var out []PlanItem
	add := func(what string, cat backend.Category, bytes int64) {
		if bytes > 0 {
			out = append(out, PlanItem{what, cat, bytes})
		}
	}
	var masters, moments, grads, embedGrad int64
	size := func(g backend.Tensor) int64 {
		e := int64(4)
		if g.DType() == tensor.BF16 {
			e = 2
		}
		return e * int64(g.Rows()) * int64(g.Cols())
	}
	for _, p := range m.params {
		masters += p.w.Bytes()
		if p.st != nil {
			moments += p.st.Bytes()
		}
	}
	for i, g := range m.grads {
		if g == nil {
			continue
		}
		n := size(g)
		if i == m.embed {
			embedGrad = n
		} else {
			grads += n
		}
	}
	for _, g := range m.layerGrads {
		if g != nil {
			grads += size(g)
		}
	}
	add(fmt.Sprintf("master weights (%s)", m.opt.Master), backend.Weights, masters)
	add(fmt.Sprintf("AdamW moments (%s)", m.opt.State), backend.OptimizerState, moments)
	add(fmt.Sprintf("embedding gradient (%s)", m.opt.Grad), backend.Gradients, embedGrad)
	what := "every other parameter gradient"
	if m.opt.FusedOptimizer {
		what = "one layer's parameter gradients, final norm"
		if m.lm != m.embed {
			what = "one layer's parameter gradients, lm_head, final norm"
		}
	}
	what += fmt.Sprintf(" (%s matrices, f32 norms)", m.opt.Grad)
	add(what, backend.Gradients, grads)

	c := m.cfg
	H, QD, KV, I, V, L := int64(c.HiddenSize), int64(c.QDim()), int64(c.KVDim()), int64(c.IntermediateSize), int64(c.VocabSize), int64(len(m.layers))
	pr := &prepared{B: B, T: T, N: B * T}
	N := int64(pr.N)
	mode := keepAll
	if m.opt.Recompute {
		mode = keepInputs
	}
	R := int64(m.layerRows(pr, mode))
	actCols := 3 * (H + QD + KV + I) // a, x1, mm; q, qn, o; k, v, kn; gate, up, h
	if m.attnStats(T) != nil {
		actCols += int64(c.NumHeads) // the attention statistics
	}
	if mode == keepAll {
		add(fmt.Sprintf("every layer's input and activations (%d × ([%d, %d] + [%d, %d]))", L, N, H, N, actCols), backend.Activations, 4*L*N*(H+actCols))
	} else if m.opt.CheckpointBF16 {
		add(fmt.Sprintf("layer inputs kept for recomputation, bf16 (%d × [%d, %d])", L, N, H), backend.Activations, 2*L*N*H)
		add(fmt.Sprintf("one layer's activation buffers and widened input ([%d rows, %d])", R, actCols+H), backend.Activations, 4*R*(actCols+H))
	} else {
		add(fmt.Sprintf("layer inputs kept for recomputation (%d × [%d, %d])", L, N, H), backend.Activations, 4*L*N*H)
		add(fmt.Sprintf("one layer's activation buffers ([%d rows, %d])", R, actCols), backend.Activations, 4*R*actCols)
	}
	add("last layer output and final norm (2 × [N, H])", backend.Activations, 2*4*N*H)
	add(fmt.Sprintf("logits chunk ([%d, %d])", min(int64(m.opt.ChunkRows), N), V), backend.Activations, 4*min(int64(m.opt.ChunkRows), N)*V)
	add("residual-stream gradient ([N, H])", backend.Gradients, 4*N*H)
	add(fmt.Sprintf("one layer's activation gradient buffers ([%d rows, %d])", R, H+3*I+2*QD+2*KV), backend.Gradients, 4*R*(H+3*I+2*QD+2*KV))
	return out
}
