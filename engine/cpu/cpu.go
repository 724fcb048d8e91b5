// Package cpu is the reference backend: pure Go, float32 tensors, goroutine-parallel.
//
// Weights stay in their stored precision (f32, bf16 or NVFP4). MatMul widens one tile of weight
// rows at a time into a per-worker float32 buffer (bf16 by a shift, NVFP4 through
// nvfp4.Matrix.DecodeRows) and multiplies every token row against it, so a bf16 model takes half
// the memory of f32 and an NVFP4 one about an eighth, and no dequantised copy of a weight ever
// exists. Work is split over output-row tiles (matmul) or rows/heads (the other ops) across
// runtime.GOMAXPROCS workers.
//
// Every allocation is accounted per category (backend.MemStats) as a GPU backend's would be, and
// SetBudget turns allocations past a limit into *backend.OverBudget errors.
//
// Numerics: float32 values and products, float32 accumulation in matmul and attention (as a GPU
// accumulates), RMSNorm statistics in float64, exp in float64.
//
// The backend also implements backend.Training (training.go): the backward of each op (the
// reference the GPU's are tested against, deterministic whatever the worker count), row
// views, cross-entropy with engine/train's arithmetic and AdamW with engine/optim's, bit for
// bit. A view (RowView, WeightTensor) is a Tensor sharing storage, accepted by every op;
// freeing it does nothing.
package cpu

import (
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/tensor"
)

// Backend is the CPU backend. Create it with New.
type Backend struct {
	workers int

	mu     sync.Mutex
	inUse  [backend.NumCategories]int64
	peak   int64
	peakBy [backend.NumCategories]int64
	budget int64
	allocs int64
	live   int64
	kvBF16 bool // KV caches allocated from now on round what is written to bf16 (kvcache.go)

	scratch sync.Pool // *[]float32 tile buffers
}

// New returns a CPU backend using runtime.GOMAXPROCS(0) workers and no budget.
func New() *Backend { return &Backend{workers: runtime.GOMAXPROCS(0)} }

var _ backend.Backend = (*Backend)(nil)

// SetWorkers sets the number of goroutines an op uses (at least 1).
func (b *Backend) SetWorkers(n int) { b.workers = max(n, 1) }

// SetBudget limits the bytes in use (all categories together); 0 removes the limit. An
// allocation that would pass it fails with *backend.OverBudget and allocates nothing.
func (b *Backend) SetBudget(bytes int64) {
	b.mu.Lock()
	b.budget = max(bytes, 0)
	b.mu.Unlock()
}

// Name implements backend.Backend.
func (b *Backend) Name() string { return fmt.Sprintf("cpu (%d threads)", b.workers) }

// account adds n bytes (negative: releases) to cat, checking the budget on growth.
func (b *Backend) account(cat backend.Category, n int64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	var used int64
	for _, v := range b.inUse {
		used += v
	}
	if n > 0 && b.budget > 0 && used+n > b.budget {
		return &backend.OverBudget{Category: cat, Request: n, InUse: used, Budget: b.budget}
	}
	b.inUse[cat] += n
	used += n
	switch {
	case n > 0:
		b.allocs++
		b.live++
	case n < 0:
		b.live--
	}
	if used > b.peak {
		b.peak, b.peakBy = used, b.inUse
	}
	return nil
}

// Memory implements backend.Backend.
func (b *Backend) Memory() backend.MemStats {
	b.mu.Lock()
	defer b.mu.Unlock()
	return backend.MemStats{Device: b.Name(), InUse: b.inUse, Peak: b.peak, PeakBy: b.peakBy,
		Budget: b.budget, Allocs: b.allocs, Live: b.live}
}

// ResetPeak implements backend.Backend.
func (b *Backend) ResetPeak() {
	b.mu.Lock()
	var s int64
	for _, v := range b.inUse {
		s += v
	}
	b.peak, b.peakBy = s, b.inUse
	b.mu.Unlock()
}

// Tensor is a CPU tensor: row-major float32 [Rows, Cols].
type Tensor struct {
	rows, cols int
	// Data holds the elements, row-major; nil after Free.
	Data  []float32
	cat   backend.Category
	owner *Backend
	view  bool // shares another tensor's (or a weight's) storage: Free does nothing
	// bf16Values marks a KV cache holding bf16 values in float32 storage (kvcache.go): what
	// is written into it is rounded to bf16.
	bf16Values bool
	// bf16Grad marks a bf16 parameter gradient (backend.GradientFormat, gradient.go): its values
	// are bf16 (bf16Values is set too), it is accounted at 2 bytes an element, and only the ops
	// that GradientFormat lists take it (tenG); ten refuses it.
	bf16Grad bool
}

// Rows implements backend.Tensor.
func (t *Tensor) Rows() int { return t.rows }

// Cols implements backend.Tensor.
func (t *Tensor) Cols() int { return t.cols }

// Shape implements backend.Tensor.
func (t *Tensor) Shape() []int { return []int{t.rows, t.cols} }

// DType implements backend.Tensor: F32, or BF16 for a bf16 parameter gradient (a bf16 KV
// cache holds bf16 values in float32 storage and reports F32).
func (t *Tensor) DType() tensor.DType {
	if t.bf16Grad {
		return tensor.BF16
	}
	return tensor.F32
}

// elemBytes is the accounted size of one element.
func (t *Tensor) elemBytes() int64 {
	if t.bf16Grad {
		return 2
	}
	return 4
}

// Row returns row r's storage.
func (t *Tensor) Row(r int) []float32 { return t.Data[r*t.cols : (r+1)*t.cols] }

// maxElems bounds one allocation (2^34 floats = 64 GiB) so rows*cols cannot overflow.
const maxElems = 1 << 34

// Alloc implements backend.Backend.
func (b *Backend) Alloc(cat backend.Category, rows, cols int) (backend.Tensor, error) {
	if cat < 0 || cat >= backend.NumCategories {
		return nil, fmt.Errorf("cpu: alloc: unknown category %d", int(cat))
	}
	if rows <= 0 || cols <= 0 || rows > maxElems/cols {
		return nil, errAlloc(cat, rows, cols)
	}
	if err := b.account(cat, int64(rows)*int64(cols)*4); err != nil {
		return nil, err
	}
	t := &Tensor{rows: rows, cols: cols, Data: make([]float32, rows*cols), cat: cat, owner: b}
	if cat == backend.KVCache {
		t.bf16Values = b.KVCacheDType() == tensor.BF16
	}
	return t, nil
}

func errAlloc(cat backend.Category, rows, cols int) error {
	return fmt.Errorf("cpu: alloc %s: cannot allocate [%d, %d]", cat, rows, cols)
}

// AllocKVCache implements backend.KVCacheFormat: a float32 cache holding dt's values.
func (b *Backend) AllocKVCache(rows, cols int, dt tensor.DType) (backend.Tensor, error) {
	if err := backend.CheckKVDType("cpu", dt); err != nil {
		return nil, err
	}
	x, err := b.Alloc(backend.KVCache, rows, cols)
	if err != nil {
		return nil, err
	}
	x.(*Tensor).bf16Values = dt == tensor.BF16
	return x, nil
}

// Free implements backend.Backend.
func (b *Backend) Free(t backend.Tensor) {
	ct, ok := t.(*Tensor)
	if !ok || ct == nil || ct.Data == nil || ct.owner != b || ct.view {
		return
	}
	b.account(ct.cat, -int64(len(ct.Data))*ct.elemBytes())
	ct.Data = nil
}

// ten checks that x is a live float32 tensor of this backend (not a bf16 gradient).
func (b *Backend) ten(x backend.Tensor, op, arg string) (*Tensor, error) {
	t, err := b.tenG(x, op, arg)
	if err == nil && t.bf16Grad {
		return nil, fmt.Errorf("cpu: %s: %s [%d, %d] is a bf16 gradient; this op takes float32 tensors", op, arg, t.rows, t.cols)
	}
	return t, err
}

// tenG is ten for the operands that may be bf16 parameter gradients (backend.GradientFormat).
func (b *Backend) tenG(x backend.Tensor, op, arg string) (*Tensor, error) {
	t, ok := x.(*Tensor)
	switch {
	case !ok || t == nil:
		return nil, fmt.Errorf("cpu: %s: %s is %T, not a CPU tensor", op, arg, x)
	case t.owner != b:
		return nil, fmt.Errorf("cpu: %s: %s belongs to another backend", op, arg)
	case t.Data == nil:
		return nil, fmt.Errorf("cpu: %s: %s [%d, %d] was freed", op, arg, t.rows, t.cols)
	}
	return t, nil
}

// Upload implements backend.Backend.
func (b *Backend) Upload(t backend.Tensor, data []float32) error {
	ct, err := b.tenG(t, "upload", "destination")
	if err != nil {
		return err
	}
	if len(data) != len(ct.Data) {
		return fmt.Errorf("cpu: upload of %d values into [%d, %d]", len(data), ct.rows, ct.cols)
	}
	copy(ct.Data, data)
	ct.roundStored(ct.Data)
	return nil
}

// Download implements backend.Backend.
func (b *Backend) Download(t backend.Tensor, dst []float32) ([]float32, error) {
	ct, err := b.tenG(t, "download", "source")
	if err != nil {
		return nil, err
	}
	return append(dst[:0], ct.Data...), nil
}

// parallel runs fn(worker, i) for i in [0, n) on up to b.workers goroutines, handing out
// indices dynamically.
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

// parallelRange splits [0, n) into chunks of at least grain and runs fn on them in parallel.
func (b *Backend) parallelRange(n, grain int, fn func(lo, hi int)) {
	chunks := min(b.workers*4, (n+grain-1)/grain)
	if chunks <= 1 {
		fn(0, n)
		return
	}
	size := (n + chunks - 1) / chunks
	b.parallel(chunks, func(_, c int) {
		lo := c * size
		fn(lo, min(lo+size, n))
	})
}

// buffer returns a scratch slice of at least n floats; give it back with release.
func (b *Backend) buffer(n int) *[]float32 {
	if p, ok := b.scratch.Get().(*[]float32); ok && cap(*p) >= n {
		*p = (*p)[:n]
		return p
	}
	s := make([]float32, n)
	return &s
}

func (b *Backend) release(p *[]float32) { b.scratch.Put(p) }
