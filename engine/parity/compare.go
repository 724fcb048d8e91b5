package parity

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/qwen3"
	"github.com/qwengo/qwengo/engine/tensor"
)

// Default thresholds of Options.
const (
	DefaultCosineThreshold = 0.999
	DefaultRelThreshold    = 0.05
	DefaultTopK            = 10
)

// NoDivergence is Report.FirstDiverging when no layer passes the thresholds (layer numbers
// start at -1, the embedding).
const NoDivergence = -2

// Options tune Compare. The zero value is usable.
type Options struct {
	// CosineThreshold: a layer diverges when the cosine of the two hidden states is below it
	// (default 0.999).
	CosineThreshold float64
	// RelThreshold: a layer diverges when ‖a−b‖/‖a‖ is above it (default 0.05; negative: off).
	RelThreshold float64
	// AllPositions compares every position, not only the last; a layer then diverges when any
	// position does.
	AllPositions bool
	// TopK is the length of the next-token lists (default 10).
	TopK int
	// Decode, when set, turns token ids into text for the next-token lists.
	Decode func(ids []int) string
	// OpenBackend, when set, replaces backend.Open (e.g. to reuse a process-wide backend).
	OpenBackend func(name string) (backend.Backend, error)
	// Progress, when set, is called while each model loads.
	Progress func(spec string, done, total int64)
}

func (o Options) withDefaults() Options {
	if o.CosineThreshold == 0 {
		o.CosineThreshold = DefaultCosineThreshold
	}
	if o.RelThreshold == 0 {
		o.RelThreshold = DefaultRelThreshold
	}
	if o.TopK <= 0 {
		o.TopK = DefaultTopK
	}
	if o.OpenBackend == nil {
		o.OpenBackend = backend.Open
	}
	return o
}

// Diff compares two vectors: the largest and mean absolute difference, the cosine and the
// relative error ‖a−b‖/‖a‖.
type Diff struct {
	MaxAbs  Float `json:"max_abs"`
	MeanAbs Float `json:"mean_abs"`
	Cosine  Float `json:"cosine"`
	RelErr  Float `json:"rel_err"`
}

// Compute returns the Diff of a and b (equal lengths). Sums are in float64. Equal vectors
// (zero ones too) have cosine exactly 1, one zero vector cosine 0; ‖a‖ = 0 gives a relative error of 0 when b is zero
// too and +Inf otherwise. A NaN anywhere makes every field NaN.
func Compute(a, b []float32) Diff {
	if len(a) != len(b) || len(a) == 0 {
		nan := Float(math.NaN())
		return Diff{nan, nan, nan, nan}
	}
	var maxAbs, sumAbs, dot, na, nb, nd float64
	for i := range a {
		x, y := float64(a[i]), float64(b[i])
		d := x - y
		if math.IsNaN(d) {
			nan := Float(math.NaN())
			return Diff{nan, nan, nan, nan}
		}
		ad := math.Abs(d)
		if ad > maxAbs || math.IsInf(ad, 0) {
			maxAbs = ad
		}
		sumAbs += ad
		dot += x * y
		na += x * x
		nb += y * y
		nd += d * d
	}
	cos := 1.0
	switch {
	case nd == 0: // equal vectors (zero ones included): exactly 1, not 1 ± rounding
	case na == 0 || nb == 0:
		cos = 0
	default:
		cos = max(-1, min(1, dot/(math.Sqrt(na)*math.Sqrt(nb))))
	}
	rel := 0.0
	switch {
	case na > 0:
		rel = math.Sqrt(nd / na)
	case nd > 0:
		rel = math.Inf(1)
	}
	return Diff{MaxAbs: Float(maxAbs), MeanAbs: Float(sumAbs / float64(len(a))), Cosine: Float(cos), RelErr: Float(rel)}
}

// diverges applies the thresholds; NaN diverges.
func (d Diff) diverges(o Options) bool {
	if !(float64(d.Cosine) >= o.CosineThreshold) {
		return true
	}
	return o.RelThreshold >= 0 && !(float64(d.RelErr) <= o.RelThreshold)
}

// LayerDiff is one row of the report.
type LayerDiff struct {
	// Layer is -1 for the embedding output, 0..N-1 after each block, N after the final norm.
	Layer int    `json:"layer"`
	Name  string `json:"name"`
	// The last position's comparison.
	MaxAbs  Float `json:"max_abs"`
	MeanAbs Float `json:"mean_abs"`
	Cosine  Float `json:"cosine"`
	RelErr  Float `json:"rel_err"`
	// Diverges: past a threshold (at the last position, or at any with AllPositions).
	Diverges bool `json:"diverges"`
	// With AllPositions: every position's comparison and the worst one (lowest cosine).
	Positions     []Diff `json:"positions,omitempty"`
	WorstPosition int    `json:"worst_position,omitempty"`
	WorstCosine   Float  `json:"worst_cosine,omitempty"`
	WorstMaxAbs   Float  `json:"worst_max_abs,omitempty"`
}

// Token is one entry of a next-token list.
type Token struct {
	ID    int    `json:"id"`
	Prob  Float  `json:"prob"`
	Logit Float  `json:"logit"`
	Text  string `json:"text,omitempty"`
}

// Side is what one path produced.
type Side struct {
	Spec      Spec     `json:"spec"`
	Name      string   `json:"name"`   // the spec as text
	Device    string   `json:"device"` // the backend's description
	Weights   string   `json:"weights"`
	Cache     string   `json:"cache"` // the element type of its KV caches (Spec.Cache resolved)
	LoadMs    float64  `json:"load_ms"`
	ForwardMs float64  `json:"forward_ms"`
	Argmax    int      `json:"argmax"`
	Top       []Token  `json:"top"`
	Notes     []string `json:"notes,omitempty"`
}

// Report is the result of Compare.
type Report struct {
	Model           string  `json:"model"`
	IDs             []int   `json:"ids"`
	Position        int     `json:"position"` // the last position, compared always
	NumLayers       int     `json:"num_layers"`
	Hidden          int     `json:"hidden"`
	Vocab           int     `json:"vocab"`
	AllPositions    bool    `json:"all_positions"`
	CosineThreshold float64 `json:"cosine_threshold"`
	RelThreshold    float64 `json:"rel_threshold"`
	A               Side    `json:"a"`
	B               Side    `json:"b"`
	// Layers runs from the embedding (-1) to the final norm (NumLayers).
	Layers []LayerDiff `json:"layers"`
	// FirstDiverging is the first layer past a threshold, NoDivergence when none.
	FirstDiverging     int    `json:"first_diverging"`
	FirstDivergingName string `json:"first_diverging_name"`
	// Logits compares the last position's logits.
	Logits Diff `json:"logits"`
	// KL is KL(a‖b) of the next-token distributions, in nats.
	KL          Float `json:"kl"`
	ArgmaxAgree bool  `json:"argmax_agree"`
	// TopOverlap counts the ids the two top lists share.
	TopOverlap int `json:"top_overlap"`
}

// Diverges reports whether any layer passed a threshold.
func (r *Report) Diverges() bool { return r.FirstDiverging != NoDivergence }

// LayerName names a layer number: "embedding", "layer i", "final norm".
func LayerName(layer, numLayers int) string {
	switch {
	case layer == NoDivergence:
		return "none"
	case layer < 0:
		return "embedding"
	case layer >= numLayers:
		return "final norm"
	}
	return fmt.Sprintf("layer %d", layer)
}

// capture is one run's hidden states: per layer (index layer+1) the rows of every position.
type capture struct {
	rows   [][][]float32 // [layer+1][position][hidden]
	logits []float32     // last position
}

// Compare runs ids through the model at modelPath along paths a and b and compares them.
// ctx is checked between layers. Each distinct set of weights is loaded once, and released
// before the next is loaded.
func Compare(ctx context.Context, modelPath string, a, b Spec, ids []int, opt Options) (*Report, error) {
	opt = opt.withDefaults()
	a, b = a.normalized(), b.normalized()
	for _, s := range []Spec{a, b} {
		if err := s.Validate(); err != nil {
			return nil, err
		}
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("parity: no token ids")
	}
	fi, err := os.Stat(modelPath)
	if err != nil {
		return nil, fmt.Errorf("parity: %w", err)
	}
	dir := modelPath
	if !fi.IsDir() {
		dir = filepath.Dir(modelPath)
	}
	cfg, err := qwen3.LoadConfig(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, fmt.Errorf("parity: %w", err)
	}
	for i, id := range ids {
		if id < 0 || id >= cfg.VocabSize {
			return nil, fmt.Errorf("parity: token id %d at position %d is outside the vocabulary (0..%d)", id, i, cfg.VocabSize-1)
		}
	}
	if cfg.MaxPositions > 0 && len(ids) > cfg.MaxPositions {
		return nil, fmt.Errorf("parity: %d tokens exceed max_position_embeddings %d", len(ids), cfg.MaxPositions)
	}
	for _, s := range []Spec{a, b} {
		if s.ScaleBug && s.ScaleBugLayer >= cfg.NumLayers {
			return nil, fmt.Errorf("parity: spec %s: scale-bug layer %d does not exist (the model has layers 0..%d)", s, s.ScaleBugLayer, cfg.NumLayers-1)
		}
	}

	r := &Report{Model: modelPath, IDs: append([]int(nil), ids...), Position: len(ids) - 1, NumLayers: cfg.NumLayers,
		Hidden: cfg.HiddenSize, Vocab: cfg.VocabSize, AllPositions: opt.AllPositions,
		CosineThreshold: opt.CosineThreshold, RelThreshold: opt.RelThreshold,
		A: Side{Spec: a, Name: a.String()}, B: Side{Spec: b, Name: b.String()}}

	// Run the sides grouped by weights, one model resident at a time.
	sides := []*Side{&r.A, &r.B}
	caps := make([]*capture, 2)
	groups := [][]int{{0, 1}}
	if a.loadKey() != b.loadKey() {
		groups = [][]int{{0}, {1}}
	}
	backends := map[string]backend.Backend{}
	for _, g := range groups {
		spec := sides[g[0]].Spec
		be := backends[spec.Backend]
		if be == nil {
			if be, err = opt.OpenBackend(spec.Backend); err != nil {
				return nil, fmt.Errorf("parity: spec %s: %w", spec, err)
			}
			backends[spec.Backend] = be
		}
		var progress func(done, total int64)
		if opt.Progress != nil {
			name := spec.String()
			progress = func(done, total int64) { opt.Progress(name, done, total) }
		}
		t0 := time.Now()
		m, notes, err := LoadModel(modelPath, spec, be, progress)
		if err != nil {
			return nil, fmt.Errorf("parity: spec %s: %w", spec, err)
		}
		loadMs := ms(time.Since(t0))
		for _, i := range g {
			s := sides[i]
			s.Device, s.Weights, s.LoadMs, s.Notes = be.Name(), weightSummary(m), loadMs, notes
			s.Cache = cacheName(s.Spec, be)
			t1 := time.Now()
			c, err := run(ctx, m, s.Spec, ids, opt.AllPositions)
			if err != nil {
				m.Free()
				return nil, fmt.Errorf("parity: spec %s: %w", s.Spec, err)
			}
			s.ForwardMs = ms(time.Since(t1))
			caps[i] = c
		}
		m.Free()
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
	r.compare(caps[0], caps[1], opt)
	return r, nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1e3 }

// weightSummary counts the model's parameters by how they were stored and converted.
func weightSummary(m *qwen3.Model) string {
	kinds := map[string]int{}
	for _, how := range m.Sources {
		kinds[how]++
	}
	keys := make([]string, 0, len(kinds))
	for k := range kinds {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	s := ""
	for i, k := range keys {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf("%s×%d", k, kinds[k])
	}
	return s
}

// run executes one path and captures its hidden states.
func run(ctx context.Context, m *qwen3.Model, s Spec, ids []int, all bool) (*capture, error) {
	c := m.Config
	m.KVDType = cacheType(s.Cache)
	T := len(ids)
	cp := &capture{rows: make([][][]float32, c.NumLayers+2)}
	for i := range cp.rows {
		cp.rows[i] = make([][]float32, T)
	}
	// hook stores the rows of one forward over ids[pos0:pos0+n]; with LogitsLast the final norm
	// sees only the chunk's last row.
	hook := func(pos0, n int, mode qwen3.LogitsMode) func(layer int, h []float32) {
		return func(layer int, h []float32) {
			H := c.HiddenSize
			start := pos0
			if layer == c.NumLayers && mode == qwen3.LogitsLast {
				start = pos0 + n - 1
			}
			for k := 0; k < len(h)/H && start+k < T; k++ {
				cp.rows[layer+1][start+k] = append([]float32(nil), h[k*H:(k+1)*H]...)
			}
		}
	}
	mode := qwen3.LogitsLast
	if all {
		mode = qwen3.LogitsAll
	}
	var lg *qwen3.Logits
	var err error
	if !s.KVCache {
		lg, err = m.ForwardWith(ctx, ids, nil, mode, qwen3.ForwardOptions{OnHidden: hook(0, T, mode)})
	} else {
		cache, cerr := m.NewKVCache(T)
		if cerr != nil {
			return nil, cerr
		}
		defer cache.Free()
		if T > 1 {
			pre := qwen3.LogitsNone
			if all {
				pre = qwen3.LogitsAll // the final-norm rows of the prefill positions
			}
			if _, err = m.ForwardWith(ctx, ids[:T-1], cache, pre, qwen3.ForwardOptions{OnHidden: hook(0, T-1, pre)}); err != nil {
				return nil, fmt.Errorf("prefill of %d tokens: %w", T-1, err)
			}
		}
		lg, err = m.ForwardWith(ctx, ids[T-1:], cache, qwen3.LogitsLast, qwen3.ForwardOptions{OnHidden: hook(T-1, 1, qwen3.LogitsLast)})
	}
	if err != nil {
		return nil, err
	}
	cp.logits = append([]float32(nil), lg.Row(lg.Rows-1)...)
	for l, rows := range cp.rows {
		if rows[T-1] == nil {
			return nil, fmt.Errorf("no hidden state captured for %s", LayerName(l-1, c.NumLayers))
		}
	}
	return cp, nil
}

// compare fills the layer table and the next-token comparison.
func (r *Report) compare(a, b *capture, opt Options) {
	r.FirstDiverging = NoDivergence
	T := len(r.IDs)
	for l := -1; l <= r.NumLayers; l++ {
		ra, rb := a.rows[l+1], b.rows[l+1]
		d := Compute(ra[T-1], rb[T-1])
		ld := LayerDiff{Layer: l, Name: LayerName(l, r.NumLayers), MaxAbs: d.MaxAbs, MeanAbs: d.MeanAbs, Cosine: d.Cosine, RelErr: d.RelErr,
			Diverges: d.diverges(opt)}
		if opt.AllPositions {
			ld.WorstPosition = -1
			for p := 0; p < T; p++ {
				var pd Diff
				if ra[p] == nil || rb[p] == nil {
					nan := Float(math.NaN())
					pd = Diff{nan, nan, nan, nan}
				} else {
					pd = Compute(ra[p], rb[p])
				}
				ld.Positions = append(ld.Positions, pd)
				if ld.WorstPosition < 0 || worseCos(pd.Cosine, ld.WorstCosine) {
					ld.WorstPosition, ld.WorstCosine = p, pd.Cosine
				}
				if p == 0 || worseAbs(pd.MaxAbs, ld.WorstMaxAbs) {
					ld.WorstMaxAbs = pd.MaxAbs
				}
				if pd.diverges(opt) {
					ld.Diverges = true
				}
			}
		}
		if ld.Diverges && r.FirstDiverging == NoDivergence {
			r.FirstDiverging = l
		}
		r.Layers = append(r.Layers, ld)
	}
	r.FirstDivergingName = LayerName(r.FirstDiverging, r.NumLayers)
	r.Logits = Compute(a.logits, b.logits)
	pa, pb := logSoftmax(a.logits), logSoftmax(b.logits)
	r.A.Top, r.A.Argmax = top(a.logits, pa, opt)
	r.B.Top, r.B.Argmax = top(b.logits, pb, opt)
	r.ArgmaxAgree = r.A.Argmax == r.B.Argmax
	in := map[int]bool{}
	for _, t := range r.A.Top {
		in[t.ID] = true
	}
	for _, t := range r.B.Top {
		if in[t.ID] {
			r.TopOverlap++
		}
	}
	kl := 0.0
	for i := range pa {
		if p := math.Exp(pa[i]); p > 0 {
			kl += p * (pa[i] - pb[i])
		} else if math.IsNaN(pa[i]) {
			kl = math.NaN()
		}
	}
	if math.IsNaN(pb[0]) {
		kl = math.NaN()
	}
	r.KL = Float(kl)
}

// worseCos reports whether cosine x is worse than y (NaN is the worst).
func worseCos(x, y Float) bool {
	if math.IsNaN(float64(y)) {
		return false
	}
	return math.IsNaN(float64(x)) || x < y
}

// worseAbs reports whether difference x is worse than y (NaN is the worst).
func worseAbs(x, y Float) bool {
	if math.IsNaN(float64(y)) {
		return false
	}
	return math.IsNaN(float64(x)) || x > y
}

// logSoftmax returns log-probabilities in float64 (all NaN when a logit is NaN or +Inf).
func logSoftmax(logits []float32) []float64 {
	out := make([]float64, len(logits))
	mx := math.Inf(-1)
	for _, x := range logits {
		v := float64(x)
		if math.IsNaN(v) || math.IsInf(v, 1) {
			for i := range out {
				out[i] = math.NaN()
			}
			return out
		}
		mx = math.Max(mx, v)
	}
	var sum float64
	for _, x := range logits {
		sum += math.Exp(float64(x) - mx)
	}
	lse := mx + math.Log(sum)
	for i, x := range logits {
		out[i] = float64(x) - lse
	}
	return out
}

// top returns the k most likely tokens (ties: lower id first; NaN logits sort last) and the
// argmax.
func top(logits []float32, logp []float64, opt Options) ([]Token, int) {
	idx := make([]int, len(logits))
	for i := range idx {
		idx[i] = i
	}
	less := func(i, j int) bool {
		x, y := logits[idx[i]], logits[idx[j]]
		xn, yn := x != x, y != y
		switch {
		case xn != yn:
			return yn
		case xn || x == y:
			return idx[i] < idx[j]
		}
		return x > y
	}
	sort.SliceStable(idx, less)
	k := min(opt.TopK, len(idx))
	out := make([]Token, k)
	for i := range out {
		id := idx[i]
		out[i] = Token{ID: id, Prob: Float(math.Exp(logp[id])), Logit: Float(logits[id])}
		if opt.Decode != nil {
			out[i].Text = opt.Decode([]int{id})
		}
	}
	return out, idx[0]
}

// cacheType is the element type a spec's Cache names (0: the backend's default).
func cacheType(name string) tensor.DType {
	switch name {
	case PrecisionF32:
		return tensor.F32
	case PrecisionBF16:
		return tensor.BF16
	}
	return tensor.Invalid
}

// cacheName is the KV cache type a side of spec s runs with on backend b.
func cacheName(s Spec, b backend.Backend) string {
	if s.Cache != "" {
		return s.Cache
	}
	return strings.ToLower(backend.KVDType(b).String())
}
