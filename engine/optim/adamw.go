// Package optim is the full-parameter optimizer: AdamW with decoupled weight decay, bias
// correction and global-norm clipping, master weights kept in bf16 or fp32 (never re-quantised
// to NVFP4: the seed's re-quantised master weights swallowed small updates), and the moments m
// and v stored as fp32, blockwise int8, or 4-bit with a zero-free code for v (the seed packed
// moments in NVFP4 without a tensor scale, so they underflowed to zero).
//
// A step first checks every gradient: any NaN or Inf skips the whole step (counted) and leaves
// weights and state bit-identical. Then it walks each parameter in chunks of rows — decode m, v
// and the master weights of the chunk into float32 scratch, update, re-encode — so the
// float32 working set is one chunk, and the same per-chunk function maps onto a GPU kernel.
// Stochastic rounding to bf16 draws its bits from (seed, step, parameter, element), so a
// resumed run continues bit-identically.
package optim

import (
	"bytes"
	"encoding/gob"
	"fmt"
	"math"

	"github.com/qwengo/qwengo/engine/tensor"
)

// MasterFormat is the precision of the master weights.
type MasterFormat int

// Master formats.
const (
	MasterFP32 MasterFormat = iota
	MasterBF16
)

// ParseMasterFormat parses "fp32" or "bf16".
func ParseMasterFormat(s string) (MasterFormat, error) {
	switch s {
	case "fp32", "f32":
		return MasterFP32, nil
	case "bf16":
		return MasterBF16, nil
	}
	return 0, fmt.Errorf("master weight format %q: want bf16 or fp32", s)
}

// Config holds the hyper-parameters.
type Config struct {
	LR, Beta1, Beta2, Eps, WeightDecay float64
	State                              StateFormat
	Master                             MasterFormat
	StochasticRounding                 bool
	Seed                               uint64
	ClipNorm                           float64 // 0 = no clipping
	ChunkElems                         int     // elements per update chunk (default 1<<16)
}

// DefaultConfig is AdamW(β=0.9, 0.999, ε=1e-8, wd=0.01), int8 states, bf16 master, clip 1.
func DefaultConfig() Config {
	return Config{LR: 1e-5, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.01, State: Int8, Master: MasterBF16, ClipNorm: 1, StochasticRounding: true}
}

// ParamSpec describes one parameter to optimise.
type ParamSpec struct {
	Name       string
	Rows, Cols int
	Init       []float32 // initial values, Rows*Cols
	NoDecay    bool      // no weight decay (norms)
}

type param struct {
	ParamSpec
	W32  []float32
	W16  []uint16
	M32  []float32
	V32  []float32
	M8   []int8
	V8   []uint8
	MSc  []float32 // per-block scale of m (int8, 4-bit)
	VSc  []float32 // per-block scale of √v (int8) or of v (4-bit vectors)
	M4   []byte
	V4   []byte
	RowM []float32 // 4-bit v rank-1 normaliser
	ColM []float32
}

// AdamW is the optimizer.
type AdamW struct {
	cfg     Config
	params  []*param
	step    int
	skipped int
	scratch [3][]float32
}

// StepStats reports one step.
type StepStats struct {
	Step     int
	GradNorm float64
	Clipped  bool
	Skipped  bool
	LR       float64
}

// NewAdamW builds the optimizer and its state.
func NewAdamW(cfg Config, specs []ParamSpec) (*AdamW, error) {
	if cfg.Beta1 < 0 || cfg.Beta1 >= 1 || cfg.Beta2 < 0 || cfg.Beta2 >= 1 || cfg.Eps <= 0 || cfg.WeightDecay < 0 || cfg.ClipNorm < 0 {
		return nil, fmt.Errorf("optim: invalid AdamW config %+v", cfg)
	}
	if cfg.ChunkElems <= 0 {
		cfg.ChunkElems = 1 << 16
	}
	cfg.ChunkElems = (cfg.ChunkElems + bit4Block - 1) / bit4Block * bit4Block
	o := &AdamW{cfg: cfg}
	for _, s := range specs {
		n := s.Rows * s.Cols
		if s.Rows <= 0 || s.Cols <= 0 || len(s.Init) != n {
			return nil, fmt.Errorf("optim: parameter %q: shape [%d, %d] with %d initial values", s.Name, s.Rows, s.Cols, len(s.Init))
		}
		p := &param{ParamSpec: s}
		p.Init = nil
		if cfg.Master == MasterBF16 {
			p.W16 = make([]uint16, n)
			for i, x := range s.Init {
				p.W16[i] = tensor.F32ToBF16(x)
			}
		} else {
			p.W32 = append([]float32(nil), s.Init...)
		}
		switch cfg.State {
		case FP32:
			p.M32, p.V32 = make([]float32, n), make([]float32, n)
		case Int8:
			nb := (n + Int8Block - 1) / Int8Block
			p.M8, p.V8, p.MSc, p.VSc = make([]int8, n), make([]uint8, n), make([]float32, nb), make([]float32, nb)
		case Bit4:
			nb := (n + bit4Block - 1) / bit4Block
			p.M4, p.V4, p.MSc = make([]byte, (n+1)/2), make([]byte, (n+1)/2), make([]float32, nb)
			if s.Rows > 1 {
				p.RowM, p.ColM = make([]float32, s.Rows), make([]float32, s.Cols)
			} else {
				p.VSc = make([]float32, nb)
			}
		default:
			return nil, fmt.Errorf("optim: unknown state format %d", cfg.State)
		}
		o.params = append(o.params, p)
	}
	return o, nil
}

// Config returns the configuration.
func (o *AdamW) Config() Config { return o.cfg }

// Steps is the number of applied steps; Skipped the number skipped for non-finite gradients.
func (o *AdamW) Steps() int   { return o.step }
func (o *AdamW) Skipped() int { return o.skipped }

// NumParams is the number of parameter tensors.
func (o *AdamW) NumParams() int { return len(o.params) }

// Name returns parameter i's name.
func (o *AdamW) Name(i int) string { return o.params[i].Name }

// Weights decodes parameter i's master weights into dst (reused when large enough).
func (o *AdamW) Weights(i int, dst []float32) []float32 {
	p := o.params[i]
	n := p.Rows * p.Cols
	if cap(dst) < n {
		dst = make([]float32, n)
	}
	dst = dst[:n]
	if p.W32 != nil {
		copy(dst, p.W32)
	} else {
		for j, h := range p.W16 {
			dst[j] = tensor.BF16ToF32(h)
		}
	}
	return dst
}

// StateBytes returns the bytes of m and v (with their scales) per parameter element and the
// total state bytes, and the master weights' bytes.
func (o *AdamW) StateBytes() (perParam float64, state, master int64) {
	var n int64
	for _, p := range o.params {
		n += int64(p.Rows * p.Cols)
		state += int64(4*(len(p.M32)+len(p.V32)) + len(p.M8) + len(p.V8) + 4*(len(p.MSc)+len(p.VSc)) + len(p.M4) + len(p.V4) + 4*(len(p.RowM)+len(p.ColM)))
		master += int64(4*len(p.W32) + 2*len(p.W16))
	}
	if n == 0 {
		return 0, 0, 0
	}
	return float64(state) / float64(n), state, master
}

// GradNorm is the global L2 norm of grads, and whether every value is finite.
func GradNorm(grads [][]float32) (float64, bool) {
	var ss float64
	for _, g := range grads {
		for _, x := range g {
			ss += float64(x) * float64(x)
		}
	}
	return math.Sqrt(ss), !math.IsNaN(ss) && !math.IsInf(ss, 0)
}

// Step applies one update with learning rate lr (the schedule's value). grads[i] matches
// parameter i. A non-finite gradient skips the step and changes nothing.
func (o *AdamW) Step(grads [][]float32, lr float64) (StepStats, error) {
	if len(grads) != len(o.params) {
		return StepStats{}, fmt.Errorf("optim: %d gradients for %d parameters", len(grads), len(o.params))
	}
	for i, g := range grads {
		if len(g) != o.params[i].Rows*o.params[i].Cols {
			return StepStats{}, fmt.Errorf("optim: gradient of %q has %d values, want %d", o.params[i].Name, len(g), o.params[i].Rows*o.params[i].Cols)
		}
	}
	norm, finite := GradNorm(grads)
	st := StepStats{Step: o.step, GradNorm: norm, LR: lr}
	if !finite {
		o.skipped++
		st.Skipped = true
		return st, nil
	}
	clip := 1.0
	if o.cfg.ClipNorm > 0 && norm > o.cfg.ClipNorm {
		clip = o.cfg.ClipNorm / norm
		st.Clipped = true
	}
	o.step++
	st.Step = o.step
	for i, p := range o.params {
		o.update(i, p, grads[i], float32(clip), lr)
	}
	return st, nil
}

// Coeffs are one step's AdamW constants in float32, computed once per parameter and step.
type Coeffs struct {
	b1, b2, omb1, omb2, lrc, rbc2, eps, decay float32
}

// NewCoeffs computes the constants of step (counted from 1) as Step does: the bias corrections
// bc1 = 1 − β1^step and bc2 = 1 − β2^step in float64, folded into lr/bc1 and 1/√bc2, each
// rounded once to float32; 1 − β1 and 1 − β2 in float32; the decay factor lr·weightDecay, 0
// with noDecay. Folding the corrections into two constants (format 2, session 10) leaves one
// square root and one division per element — the GPU kernels' instruction budget.
func NewCoeffs(beta1, beta2, eps, lr, weightDecay float64, step int, noDecay bool) Coeffs {
	bc1 := 1 - math.Pow(beta1, float64(step))
	bc2 := 1 - math.Pow(beta2, float64(step))
	k := Coeffs{
		b1: float32(beta1), b2: float32(beta2),
		lrc: float32(lr / bc1), rbc2: float32(1 / math.Sqrt(bc2)),
		eps: float32(eps), decay: float32(lr * weightDecay),
	}
	k.omb1, k.omb2 = 1-k.b1, 1-k.b2
	if noDecay {
		k.decay = 0
	}
	return k
}

// CoeffScalars are Coeffs' float32 values, for a backend whose kernels compute Update's
// arithmetic themselves (engine/cuda): with these it needs no float64 of its own.
type CoeffScalars struct {
	B1, B2     float32 // β1, β2
	OMB1, OMB2 float32 // 1 − β1, 1 − β2 in float32
	LRC        float32 // lr / (1 − β1^step)
	RBC2       float32 // 1 / √(1 − β2^step)
	Eps, Decay float32 // ε; lr·weightDecay or 0
}

// Scalars returns the constants Update uses.
func (k Coeffs) Scalars() CoeffScalars {
	return CoeffScalars{B1: k.b1, B2: k.b2, OMB1: k.omb1, OMB2: k.omb2, LRC: k.lrc, RBC2: k.rbc2, Eps: k.eps, Decay: k.decay}
}

// Update applies one AdamW step in place to a chunk of weights w with its decoded moments m and
// v, from the gradient g·gradScale (gradScale is the clipping factor, or a backend's loss
// scale). It is the arithmetic of every update, exported so that a backend working in place on
// its own layout (engine/cpu) computes exactly what AdamW computes. Per element, every
// operation rounded to float32 on its own (the conversions keep Go from fusing a multiply and
// an add into an FMA, which it may do on arm64):
//
//	g = g·gradScale;  m = β1·m + (1−β1)·g;  v = β2·v + ((1−β2)·g)·g
//	w = w − decay·w − lrc·(m / (√v·rbc2 + eps))
//
// with lrc = lr/bc1 and rbc2 = 1/√bc2 (NewCoeffs): the bias-corrected m̂/(√v̂ + ε) of AdamW.
func (k Coeffs) Update(w, m, v, g []float32, gradScale float32) {
	m, v, g = m[:len(w)], v[:len(w)], g[:len(w)]
	for j := range w {
		gj := g[j] * gradScale
		m[j] = float32(k.b1*m[j]) + float32(k.omb1*gj)
		v[j] = float32(k.b2*v[j]) + float32(float32(k.omb2*gj)*gj)
		den := float32(Sqrt32(v[j])*k.rbc2) + k.eps
		w[j] = float32(w[j]-float32(k.decay*w[j])) - float32(k.lrc*(m[j]/den))
	}
}

// Sqrt32 is the correctly rounded float32 square root (float64's root rounded once more is
// the float32 one: double rounding is harmless for √ at these precisions).
func Sqrt32(x float32) float32 { return float32(math.Sqrt(float64(x))) }

// update applies AdamW to one parameter chunk by chunk.
func (o *AdamW) update(pi int, p *param, g []float32, clip float32, lr float64) {
	c := o.cfg
	cf := NewCoeffs(c.Beta1, c.Beta2, c.Eps, lr, c.WeightDecay, o.step, p.NoDecay)
	n := p.Rows * p.Cols
	chunk := c.ChunkElems
	for k := range o.scratch {
		if cap(o.scratch[k]) < chunk {
			o.scratch[k] = make([]float32, chunk)
		}
	}
	// 4-bit rank-1 v: the new row/column maxima must be known before encoding, so a first pass
	// computes v' = β2 v + (1-β2) g² without storing it.
	var newRow, newCol []float32
	if p.RowM != nil {
		newRow, newCol = make([]float32, p.Rows), make([]float32, p.Cols)
		for j0 := 0; j0 < n; j0 += chunk {
			j1 := min(j0+chunk, n)
			v := o.decodeV(p, j0, j1, o.scratch[2][:j1-j0])
			for j := j0; j < j1; j++ {
				vn := cf.NextV(v[j-j0], g[j], clip)
				r, col := j/p.Cols, j%p.Cols
				newRow[r] = max(newRow[r], vn)
				newCol[col] = max(newCol[col], vn)
			}
		}
	}
	for j0 := 0; j0 < n; j0 += chunk {
		j1 := min(j0+chunk, n)
		w := o.scratch[0][:j1-j0]
		m := o.scratch[1][:j1-j0]
		v := o.scratch[2][:j1-j0]
		o.decodeW(p, j0, j1, w)
		o.decodeM(p, j0, j1, m)
		o.decodeV(p, j0, j1, v)
		cf.Update(w, m, v, g[j0:j1], clip)
		o.encodeW(pi, p, j0, j1, w)
		o.encodeM(pi, p, j0, j1, m)
		o.encodeV(p, j0, j1, v, newRow, newCol)
	}
	if p.RowM != nil {
		p.RowM, p.ColM = newRow, newCol
	}
}

func (o *AdamW) decodeW(p *param, j0, j1 int, dst []float32) {
	if p.W32 != nil {
		copy(dst, p.W32[j0:j1])
		return
	}
	for j, h := range p.W16[j0:j1] {
		dst[j] = tensor.BF16ToF32(h)
	}
}

func (o *AdamW) encodeW(pi int, p *param, j0, j1 int, w []float32) {
	if p.W32 != nil {
		copy(p.W32[j0:j1], w)
		return
	}
	if !o.cfg.StochasticRounding {
		for j, x := range w {
			p.W16[j0+j] = tensor.F32ToBF16(x)
		}
		return
	}
	key := SRKey(o.cfg.Seed, uint64(o.step), uint64(pi))
	for j, x := range w {
		p.W16[j0+j] = StochasticBF16Key(x, key, uint64(j0+j))
	}
}

// StochasticBF16 rounds x to bf16 stochastically, as the bf16 master weights are stored: the
// draw is SRDraw(SRKey(seed, step, param), idx) for element idx of parameter param at step
// step, so a backend updating weights in place (engine/cpu) rounds exactly as AdamW does.
// StochasticBF16Key takes the key computed once.
func StochasticBF16(x float32, seed, step, param, idx uint64) uint16 {
	return stochasticBF16(x, SRDraw(SRKey(seed, step, param), idx))
}

// StochasticBF16Key is StochasticBF16 with the key of (seed, step, param) from SRKey.
func StochasticBF16Key(x float32, key uint32, idx uint64) uint16 {
	return stochasticBF16(x, SRDraw(key, idx))
}

// SRKey is the 32-bit key of the masters' stochastic rounding for (seed, step, param):
// splitmix64 of the three, its high half. Computed once per parameter and step.
func SRKey(seed, step, param uint64) uint32 {
	z := seed ^ step*0x9e3779b97f4a7c15 ^ param*0xbf58476d1ce4e5b9
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return uint32((z ^ (z >> 31)) >> 32)
}

// SRDraw is the 16-bit draw of element idx under key: elements 2j and 2j+1 take the low and
// high halves of a 32-bit integer hash (Wellons' lowbias32) of j·φ + key. Format 2 (session
// 10): the 64-bit splitmix per element it replaces cost ~22 GPU instructions an element, this
// ~6. Element indices are taken modulo 2^33 (a parameter has fewer elements).
func SRDraw(key uint32, idx uint64) uint32 {
	h := uint32(idx>>1)*0x9e3779b1 + key
	h ^= h >> 16
	h *= 0x7feb352d
	h ^= h >> 15
	h *= 0x846ca68b
	h ^= h >> 16
	if idx&1 == 0 {
		return h & 0xffff
	}
	return h >> 16
}

// stochasticBF16 rounds x to bf16 up with probability equal to the dropped fraction.
func stochasticBF16(x float32, r uint32) uint16 {
	b := math.Float32bits(x)
	if b&0x7fffffff >= 0x7f800000 {
		return tensor.F32ToBF16(x)
	}
	return uint16((b + r) >> 16)
}

// uniform returns the deterministic [0,1) draws of the 4-bit m codes (Bit4Draw).
func (o *AdamW) uniform(pi int) func(i int) float32 {
	key := Bit4Key(o.cfg.Seed, uint64(o.step), uint64(pi))
	return func(i int) float32 { return Bit4DrawKey(key, uint64(i)) }
}

func (o *AdamW) decodeM(p *param, j0, j1 int, dst []float32) {
	switch o.cfg.State {
	case FP32:
		copy(dst, p.M32[j0:j1])
	case Int8:
		for b := j0; b < j1; b += Int8Block {
			e := min(b+Int8Block, j1)
			DecodeInt8M(dst[b-j0:e-j0], p.M8[b:e], p.MSc[b/Int8Block])
		}
	case Bit4:
		for b := j0; b < j1; b += bit4Block {
			e := min(b+bit4Block, j1)
			decodeM4(dst[b-j0:e-j0], p.M4, p.MSc[b/bit4Block], b)
		}
	}
}

func (o *AdamW) encodeM(pi int, p *param, j0, j1 int, m []float32) {
	switch o.cfg.State {
	case FP32:
		copy(p.M32[j0:j1], m)
	case Int8:
		for b := j0; b < j1; b += Int8Block {
			e := min(b+Int8Block, j1)
			p.MSc[b/Int8Block] = EncodeInt8M(p.M8[b:e], m[b-j0:e-j0])
		}
	case Bit4:
		for b := j0; b < j1; b += bit4Block {
			e := min(b+bit4Block, j1)
			s := absMax(m[b-j0 : e-j0])
			p.MSc[b/bit4Block] = s
			encodeM4(p.M4, m[b-j0:e-j0], s, b, o.uniform(pi))
		}
	}
}

func (o *AdamW) decodeV(p *param, j0, j1 int, dst []float32) []float32 {
	switch o.cfg.State {
	case FP32:
		copy(dst, p.V32[j0:j1])
	case Int8:
		for b := j0; b < j1; b += Int8Block {
			e := min(b+Int8Block, j1)
			DecodeInt8V(dst[b-j0:e-j0], p.V8[b:e], p.VSc[b/Int8Block])
		}
	case Bit4:
		for j := j0; j < j1; j++ {
			var norm float32
			if p.RowM != nil {
				norm = min(p.RowM[j/p.Cols], p.ColM[j%p.Cols])
			} else {
				norm = p.VSc[j/bit4Block]
			}
			if norm == 0 {
				dst[j-j0] = 0
			} else {
				dst[j-j0] = decodeV4(nibble(p.V4, j), norm)
			}
		}
	}
	return dst
}

func (o *AdamW) encodeV(p *param, j0, j1 int, v, newRow, newCol []float32) {
	switch o.cfg.State {
	case FP32:
		copy(p.V32[j0:j1], v)
	case Int8:
		for b := j0; b < j1; b += Int8Block {
			e := min(b+Int8Block, j1)
			p.VSc[b/Int8Block] = EncodeInt8V(p.V8[b:e], v[b-j0:e-j0])
		}
	case Bit4:
		if newRow != nil {
			for j := j0; j < j1; j++ {
				setNibble(p.V4, j, encodeV4(v[j-j0], min(newRow[j/p.Cols], newCol[j%p.Cols])))
			}
			return
		}
		for b := j0; b < j1; b += bit4Block {
			e := min(b+bit4Block, j1)
			s := absMax(v[b-j0 : e-j0])
			p.VSc[b/bit4Block] = s
			for j := b; j < e; j++ {
				setNibble(p.V4, j, encodeV4(v[j-j0], s))
			}
		}
	}
}

type snapshot struct {
	Cfg     Config
	Params  []*param
	Step    int
	Skipped int
}

// MarshalBinary saves the complete optimizer state (config, step, masters, moments).
func (o *AdamW) MarshalBinary() ([]byte, error) {
	var b bytes.Buffer
	if err := gob.NewEncoder(&b).Encode(snapshot{o.cfg, o.params, o.step, o.skipped}); err != nil {
		return nil, fmt.Errorf("optim: save state: %w", err)
	}
	return b.Bytes(), nil
}

// UnmarshalBinary restores a state saved by MarshalBinary.
func (o *AdamW) UnmarshalBinary(data []byte) error {
	var s snapshot
	if err := gob.NewDecoder(bytes.NewReader(data)).Decode(&s); err != nil {
		return fmt.Errorf("optim: restore state: %w", err)
	}
	o.cfg, o.params, o.step, o.skipped = s.Cfg, s.Params, s.Step, s.Skipped
	return nil
}

// Schedule maps a step (0-based) to a learning rate.
type Schedule interface{ LR(step int) float64 }

type constant float64

func (c constant) LR(int) float64 { return float64(c) }

// Constant is a fixed learning rate.
func Constant(lr float64) Schedule { return constant(lr) }

type warmupCosine struct {
	lr, min       float64
	warmup, total int
}

func (w warmupCosine) LR(step int) float64 {
	if step < w.warmup {
		return w.lr * float64(step+1) / float64(w.warmup)
	}
	if w.total <= w.warmup {
		return w.lr
	}
	p := min(1, float64(step-w.warmup)/float64(w.total-w.warmup))
	return w.min + (w.lr-w.min)*0.5*(1+math.Cos(math.Pi*p))
}

// WarmupCosine warms up linearly over warmup steps, then decays to minLR by total steps.
func WarmupCosine(lr float64, warmup, total int, minLR float64) Schedule {
	return warmupCosine{lr: lr, min: minLR, warmup: warmup, total: total}
}
