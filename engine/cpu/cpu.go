// Package cpu is the reference backend: pure Go, float32 activations, goroutine-parallel.
//
// Weights stay in their stored precision (f32, bf16 or NVFP4) and MatMul widens one tile of
// weight rows at a time into a per-worker float32 buffer, so a bf16 model takes half the memory
// of f32 and an NVFP4 model about an eighth, and no full dequantised copy ever exists. Every
// allocation is accounted per category (backend.MemStats) as the GPU backend does.
package cpu

import (
	"fmt"
	"math"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/nvfp4"
	"github.com/qwengo/qwengo/engine/tensor"
)

// Backend is the CPU backend. The zero value is not usable: call New.
type Backend struct {
	workers int
	mu      sync.Mutex
	inUse   [backend.NumCategories]int64
	peak    int64
	allocs  int64
}

// New returns a CPU backend using GOMAXPROCS workers.
func New() *Backend { return &Backend{workers: runtime.GOMAXPROCS(0)} }

var _ backend.Backend = (*Backend)(nil)

// Name implements backend.Backend.
func (b *Backend) Name() string { return fmt.Sprintf("cpu (%d threads)", b.workers) }

// Tensor is a CPU tensor: row-major float32.
type Tensor struct {
	rows, cols int
	Data       []float32
	cat        backend.Category
	view       bool
}

// Rows implements backend.Tensor.
func (t *Tensor) Rows() int { return t.rows }

// Cols implements backend.Tensor.
func (t *Tensor) Cols() int { return t.cols }

// Row returns row r's storage.
func (t *Tensor) Row(r int) []float32 { return t.Data[r*t.cols : (r+1)*t.cols] }

func (b *Backend) account(cat backend.Category, n int64) {
	b.mu.Lock()
	b.inUse[cat] += n
	var s int64
	for _, v := range b.inUse {
		s += v
	}
	if s > b.peak {
		b.peak = s
	}
	if n > 0 {
		b.allocs++
	}
	b.mu.Unlock()
}

// Alloc implements backend.Backend.
func (b *Backend) Alloc(cat backend.Category, rows, cols int) (backend.Tensor, error) {
	if rows < 0 || cols < 0 || (cols > 0 && rows > math.MaxInt32*8/cols) {
		return nil, fmt.Errorf("cpu: cannot allocate [%d, %d]", rows, cols)
	}
	b.account(cat, int64(rows*cols*4))
	return &Tensor{rows: rows, cols: cols, Data: make([]float32, rows*cols), cat: cat}, nil
}

// Free implements backend.Backend.
func (b *Backend) Free(t backend.Tensor) {
	ct := t.(*Tensor)
	if ct.view || ct.Data == nil {
		return
	}
	b.account(ct.cat, -int64(len(ct.Data)*4))
	ct.Data = nil
}

func (b *Backend) t(x backend.Tensor) *Tensor { return x.(*Tensor) }

// Upload implements backend.Backend.
func (b *Backend) Upload(t backend.Tensor, data []float32) error {
	ct := b.t(t)
	if len(data) != len(ct.Data) {
		return fmt.Errorf("cpu: upload of %d values into [%d, %d]", len(data), ct.rows, ct.cols)
	}
	copy(ct.Data, data)
	return nil
}

// Download implements backend.Backend.
func (b *Backend) Download(t backend.Tensor, dst []float32) []float32 {
	return append(dst[:0], b.t(t).Data...)
}

// DownloadRow implements backend.Backend.
func (b *Backend) DownloadRow(t backend.Tensor, r int, dst []float32) []float32 {
	return append(dst[:0], b.t(t).Row(r)...)
}

// Reshape implements backend.Backend.
func (b *Backend) Reshape(t backend.Tensor, rows, cols int) backend.Tensor {
	ct := b.t(t)
	if rows*cols != len(ct.Data) {
		panic(fmt.Sprintf("cpu: reshape [%d, %d] to [%d, %d]", ct.rows, ct.cols, rows, cols))
	}
	return &Tensor{rows: rows, cols: cols, Data: ct.Data, cat: ct.cat, view: true}
}

// RowSlice implements backend.Backend.
func (b *Backend) RowSlice(t backend.Tensor, r0, r1 int) backend.Tensor {
	ct := b.t(t)
	return &Tensor{rows: r1 - r0, cols: ct.cols, Data: ct.Data[r0*ct.cols : r1*ct.cols], cat: ct.cat, view: true}
}

// Memory implements backend.Backend.
func (b *Backend) Memory() backend.MemStats {
	b.mu.Lock()
	defer b.mu.Unlock()
	return backend.MemStats{Device: "cpu", InUse: b.inUse, Peak: b.peak, Allocs: b.allocs}
}

// ResetPeak implements backend.Backend.
func (b *Backend) ResetPeak() {
	b.mu.Lock()
	var s int64
	for _, v := range b.inUse {
		s += v
	}
	b.peak = s
	b.mu.Unlock()
}

// Weight is a CPU weight in its stored precision.
type Weight struct {
	Name     string
	out, in  int
	f32      []float32
	bf16     []uint16
	q        *nvfp4.Matrix
	kind     string
	accBytes int64
}

// Out implements backend.Weight.
func (w *Weight) Out() int { return w.out }

// In implements backend.Weight.
func (w *Weight) In() int { return w.in }

// Kind implements backend.Weight.
func (w *Weight) Kind() string { return w.kind }

// Bytes implements backend.Weight.
func (w *Weight) Bytes() int64 { return w.accBytes }

// decodeRows widens rows r0..r1-1 into dst (or returns the f32 storage directly).
func (w *Weight) decodeRows(dst []float32, r0, r1 int) []float32 {
	switch {
	case w.f32 != nil:
		return w.f32[r0*w.in : r1*w.in]
	case w.bf16 != nil:
		src := w.bf16[r0*w.in : r1*w.in]
		dst = dst[:len(src)]
		for i, h := range src {
			dst[i] = math.Float32frombits(uint32(h) << 16)
		}
		return dst
	default:
		w.q.DecodeRows(dst, r0, r1)
		return dst[:(r1-r0)*w.in]
	}
}

// UploadWeight implements backend.Backend.
func (b *Backend) UploadWeight(hw backend.HostWeight) (backend.Weight, error) {
	w := &Weight{Name: hw.Name}
	switch {
	case hw.NVFP4 != nil:
		if err := hw.NVFP4.Validate(); err != nil {
			return nil, fmt.Errorf("weight %q: %w", hw.Name, err)
		}
		w.out, w.in, w.q, w.kind = hw.NVFP4.Rows, hw.NVFP4.Cols, hw.NVFP4, "nvfp4"
		w.accBytes = hw.NVFP4.Bytes()
	case hw.Dense != nil:
		d := hw.Dense
		if len(d.Shape) != 2 {
			return nil, fmt.Errorf("weight %q: want a matrix, got shape %v", hw.Name, d.Shape)
		}
		w.out, w.in = d.Shape[0], d.Shape[1]
		keep := hw.Keep
		if keep == "" {
			keep = "f32"
			if d.DType == tensor.BF16 {
				keep = "bf16"
			}
		}
		switch keep {
		case "bf16":
			w.bf16 = make([]uint16, w.out*w.in)
			if d.DType == tensor.BF16 {
				for i := range w.bf16 {
					w.bf16[i] = uint16(d.Data[2*i]) | uint16(d.Data[2*i+1])<<8
				}
			} else {
				v, err := d.Float32s(nil)
				if err != nil {
					return nil, fmt.Errorf("weight %q: %w", hw.Name, err)
				}
				for i, x := range v {
					w.bf16[i] = tensor.F32ToBF16(x)
				}
			}
			w.kind, w.accBytes = "bf16", int64(len(w.bf16)*2)
		case "f32":
			v, err := d.Float32s(nil)
			if err != nil {
				return nil, fmt.Errorf("weight %q: %w", hw.Name, err)
			}
			w.f32, w.kind, w.accBytes = v, "f32", int64(len(v)*4)
		default:
			return nil, fmt.Errorf("weight %q: unknown precision %q", hw.Name, keep)
		}
	default:
		return nil, fmt.Errorf("weight %q: no data", hw.Name)
	}
	b.account(backend.Weights, w.accBytes)
	return w, nil
}

// WeightHost implements backend.Backend.
func (b *Backend) WeightHost(bw backend.Weight) backend.HostWeight {
	w := bw.(*Weight)
	hw := backend.HostWeight{Name: w.Name, Keep: w.kind}
	switch {
	case w.q != nil:
		hw.NVFP4 = w.q
	case w.bf16 != nil:
		data := make([]byte, 2*len(w.bf16))
		for i, h := range w.bf16 {
			data[2*i], data[2*i+1] = byte(h), byte(h>>8)
		}
		hw.Dense = &tensor.Host{Name: w.Name, DType: tensor.BF16, Shape: []int{w.out, w.in}, Data: data}
	default:
		hw.Dense, _ = tensor.FromFloat32s(w.Name, tensor.F32, []int{w.out, w.in}, w.f32)
	}
	return hw
}

// FreeWeight implements backend.Backend.
func (b *Backend) FreeWeight(bw backend.Weight) {
	w := bw.(*Weight)
	if w.accBytes == 0 {
		return
	}
	b.account(backend.Weights, -w.accBytes)
	w.accBytes, w.f32, w.bf16, w.q = 0, nil, nil, nil
}

// parallel runs fn(i) for i in [0, n) on the worker pool, handing out indices dynamically.
func (b *Backend) parallel(n int, fn func(worker, i int)) {
	workers := min(b.workers, n)
	if workers <= 1 {
		for i := 0; i < n; i++ {
			fn(0, i)
		}
		return
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	wg.Add(workers)
	for w := 0; w < workers; w++ {
		go func(w int) {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				fn(w, i)
			}
		}(w)
	}
	wg.Wait()
}

// Embedding implements backend.Backend.
func (b *Backend) Embedding(out backend.Tensor, table backend.Weight, ids []int) error {
	o, w := b.t(out), table.(*Weight)
	if o.rows != len(ids) || o.cols != w.in {
		return fmt.Errorf("cpu: embedding out [%d, %d] for %d ids of width %d", o.rows, o.cols, len(ids), w.in)
	}
	for t, id := range ids {
		if id < 0 || id >= w.out {
			return fmt.Errorf("token id %d at position %d is outside the vocabulary (0..%d)", id, t, w.out-1)
		}
		copy(o.Row(t), w.decodeRows(o.Row(t), id, id+1))
	}
	return nil
}

// tileRows is how many weight rows a worker widens at a time.
const tileRows = 16

// MatMul implements backend.Backend.
func (b *Backend) MatMul(out, x backend.Tensor, bw backend.Weight) error {
	o, a, w := b.t(out), b.t(x), bw.(*Weight)
	if a.cols != w.in || o.rows != a.rows || o.cols != w.out {
		return fmt.Errorf("cpu: matmul %s: x [%d, %d] · W[%d, %d]ᵀ into [%d, %d]", w.Name, a.rows, a.cols, w.out, w.in, o.rows, o.cols)
	}
	tiles := (w.out + tileRows - 1) / tileRows
	bufs := make([][]float32, b.workers)
	T, K, N := a.rows, a.cols, w.out
	b.parallel(tiles, func(worker, tile int) {
		if bufs[worker] == nil && w.f32 == nil {
			bufs[worker] = make([]float32, tileRows*K)
		}
		r0 := tile * tileRows
		r1 := min(r0+tileRows, N)
		wt := w.decodeRows(bufs[worker], r0, r1)
		for t := 0; t < T; t++ {
			xr := a.Data[t*K : (t+1)*K]
			orow := o.Data[t*N+r0 : t*N+r1]
			r := 0
			for ; r+4 <= r1-r0; r += 4 {
				orow[r], orow[r+1], orow[r+2], orow[r+3] = dot4(xr, wt[r*K:(r+1)*K], wt[(r+1)*K:(r+2)*K], wt[(r+2)*K:(r+3)*K], wt[(r+3)*K:(r+4)*K])
			}
			for ; r < r1-r0; r++ {
				orow[r] = dot(xr, wt[r*K:(r+1)*K])
			}
		}
	})
	return nil
}

func dot(a, b []float32) float32 {
	b = b[:len(a)]
	var s0, s1, s2, s3 float32
	i := 0
	for ; i+4 <= len(a); i += 4 {
		s0 += a[i] * b[i]
		s1 += a[i+1] * b[i+1]
		s2 += a[i+2] * b[i+2]
		s3 += a[i+3] * b[i+3]
	}
	for ; i < len(a); i++ {
		s0 += a[i] * b[i]
	}
	return (s0 + s1) + (s2 + s3)
}

// dot4 computes four dot products of x with four weight rows in one pass over x.
func dot4(x, w0, w1, w2, w3 []float32) (float32, float32, float32, float32) {
	n := len(x)
	w0, w1, w2, w3 = w0[:n], w1[:n], w2[:n], w3[:n]
	var s0, s1, s2, s3, t0, t1, t2, t3 float32
	i := 0
	for ; i+2 <= n; i += 2 {
		a, c := x[i], x[i+1]
		s0 += a * w0[i]
		s1 += a * w1[i]
		s2 += a * w2[i]
		s3 += a * w3[i]
		t0 += c * w0[i+1]
		t1 += c * w1[i+1]
		t2 += c * w2[i+1]
		t3 += c * w3[i+1]
	}
	for ; i < n; i++ {
		a := x[i]
		s0 += a * w0[i]
		s1 += a * w1[i]
		s2 += a * w2[i]
		s3 += a * w3[i]
	}
	return s0 + t0, s1 + t1, s2 + t2, s3 + t3
}

// RMSNorm implements backend.Backend.
func (b *Backend) RMSNorm(out, x, w backend.Tensor, eps float32) error {
	o, a, g := b.t(out), b.t(x), b.t(w)
	if len(g.Data) != a.cols || o.rows != a.rows || o.cols != a.cols {
		return fmt.Errorf("cpu: rmsnorm x [%d, %d] with weight of %d into [%d, %d]", a.rows, a.cols, len(g.Data), o.rows, o.cols)
	}
	for r := 0; r < a.rows; r++ {
		xr, or := a.Row(r), o.Row(r)
		var ss float64
		for _, v := range xr {
			ss += float64(v) * float64(v)
		}
		inv := float32(1 / math.Sqrt(ss/float64(len(xr))+float64(eps)))
		for i, v := range xr {
			or[i] = g.Data[i] * (v * inv)
		}
	}
	return nil
}

// RoPE implements backend.Backend.
func (b *Backend) RoPE(x backend.Tensor, headDim, pos0 int, theta float64) error {
	a := b.t(x)
	if headDim%2 != 0 || a.cols%headDim != 0 {
		return fmt.Errorf("cpu: rope on width %d with head_dim %d", a.cols, headDim)
	}
	half := headDim / 2
	cos := make([]float32, half)
	sin := make([]float32, half)
	for t := 0; t < a.rows; t++ {
		p := float32(pos0 + t)
		for i := 0; i < half; i++ {
			// As HF: inv_freq in float32, angle = position * inv_freq in float32.
			inv := float32(1 / math.Pow(theta, float64(2*i)/float64(headDim)))
			s, c := math.Sincos(float64(p * inv))
			cos[i], sin[i] = float32(c), float32(s)
		}
		row := a.Row(t)
		for h := 0; h < a.cols; h += headDim {
			v := row[h : h+headDim]
			for i := 0; i < half; i++ {
				x1, x2 := v[i], v[i+half]
				v[i] = x1*cos[i] - x2*sin[i]
				v[i+half] = x2*cos[i] + x1*sin[i]
			}
		}
	}
	return nil
}

// Attention implements backend.Backend.
func (b *Backend) Attention(out, q, k, v backend.Tensor, pos0, nHeads, nKV, headDim int) error {
	o, qt, kt, vt := b.t(out), b.t(q), b.t(k), b.t(v)
	T := qt.rows
	if qt.cols != nHeads*headDim || kt.cols != nKV*headDim || vt.cols != nKV*headDim || kt.rows < pos0+T || o.rows != T || o.cols != qt.cols || nHeads%nKV != 0 {
		return fmt.Errorf("cpu: attention q [%d, %d] k [%d, %d] pos0 %d heads %d/%d hd %d", qt.rows, qt.cols, kt.rows, kt.cols, pos0, nHeads, nKV, headDim)
	}
	group := nHeads / nKV
	scale := float32(1 / math.Sqrt(float64(headDim)))
	scores := make([][]float32, b.workers)
	b.parallel(T*nHeads, func(worker, job int) {
		t, h := job/nHeads, job%nHeads
		kvh := h / group
		n := pos0 + t + 1 // bottom-right causal mask
		if cap(scores[worker]) < n {
			scores[worker] = make([]float32, kt.rows)
		}
		s := scores[worker][:n]
		qv := qt.Data[t*qt.cols+h*headDim : t*qt.cols+(h+1)*headDim]
		maxv := float32(math.Inf(-1))
		for j := 0; j < n; j++ {
			kv := kt.Data[j*kt.cols+kvh*headDim : j*kt.cols+(kvh+1)*headDim]
			s[j] = dot(qv, kv) * scale
			maxv = max(maxv, s[j])
		}
		var sum float32
		for j := range s {
			s[j] = float32(math.Exp(float64(s[j] - maxv)))
			sum += s[j]
		}
		ov := o.Data[t*o.cols+h*headDim : t*o.cols+(h+1)*headDim]
		for i := range ov {
			ov[i] = 0
		}
		inv := 1 / sum
		for j, p := range s {
			p *= inv
			vv := vt.Data[j*vt.cols+kvh*headDim : j*vt.cols+(kvh+1)*headDim]
			for i := range ov {
				ov[i] += p * vv[i]
			}
		}
	})
	return nil
}

// SwiGLU implements backend.Backend.
func (b *Backend) SwiGLU(out, gate, up backend.Tensor) error {
	o, g, u := b.t(out), b.t(gate), b.t(up)
	if len(o.Data) != len(g.Data) || len(g.Data) != len(u.Data) {
		return fmt.Errorf("cpu: swiglu sizes %d, %d, %d", len(o.Data), len(g.Data), len(u.Data))
	}
	for i, x := range g.Data {
		o.Data[i] = x / (1 + float32(math.Exp(float64(-x)))) * u.Data[i]
	}
	return nil
}

// Add implements backend.Backend.
func (b *Backend) Add(dst, src backend.Tensor) error {
	d, s := b.t(dst), b.t(src)
	if len(d.Data) != len(s.Data) {
		return fmt.Errorf("cpu: add [%d, %d] += [%d, %d]", d.rows, d.cols, s.rows, s.cols)
	}
	for i, v := range s.Data {
		d.Data[i] += v
	}
	return nil
}

// Copy implements backend.Backend.
func (b *Backend) Copy(dst, src backend.Tensor) error {
	d, s := b.t(dst), b.t(src)
	if len(d.Data) != len(s.Data) {
		return fmt.Errorf("cpu: copy [%d, %d] into [%d, %d]", s.rows, s.cols, d.rows, d.cols)
	}
	copy(d.Data, s.Data)
	return nil
}
