package qwen3

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"runtime"
	"sort"
	"sync"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/format"
	"github.com/qwengo/qwengo/engine/tensor"
)

// RandomOptions controls NewRandom.
type RandomOptions struct {
	// Seed makes the weights reproducible; each tensor depends only on Seed and its name.
	Seed uint64
	// Std is the standard deviation of the (uniform) linear and embedding weights; 0 means
	// 0.02, Hugging Face's initializer_range.
	Std float32
	// NormJitter makes norm weights 1 + NormJitter·u with u uniform in [-1, 1); 0 keeps them at
	// 1 (HF's initialisation). Tests use it so a norm applied to the wrong tensor shows.
	NormJitter float32
	// Precision as in LoadOptions. The generated tensors are F32 for KeepStored and F32, else
	// BF16 (as a real bf16 checkpoint, quantised on load for NVFP4).
	Precision string
}

// NewRandom builds a model with random weights for cfg, through the same streaming path as
// Load: tensors are generated as the loader reads them (a few ahead, on other cores), so host
// memory stays bounded by a few of the largest tensors. For tests, benchmarks and memory experiments.
func NewRandom(cfg *Config, b backend.Backend, opt RandomOptions) (*Model, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if opt.Std == 0 {
		opt.Std = 0.02
	}
	dt := tensor.BF16
	if opt.Precision == KeepStored || opt.Precision == F32 {
		dt = tensor.F32
	}
	m, err := Load(cfg, newRandomSource(cfg, opt, dt), b, LoadOptions{Precision: opt.Precision})
	if err != nil {
		return nil, fmt.Errorf("random model: %w", err)
	}
	return m, nil
}

// newRandomSource lists cfg's tensors as dt, sorted by name, generated when read.
func newRandomSource(cfg *Config, opt RandomOptions, dt tensor.DType) *randomSource {
	src := &randomSource{opt: opt}
	exp := cfg.expected()
	for _, prefix := range sortedKeys(exp) {
		shape := exp[prefix]
		s := []int{shape[0], shape[1]}
		if shape[1] == 0 {
			s = s[:1]
		}
		src.infos = append(src.infos, format.TensorInfo{Name: prefix + ".weight", DType: dt, Shape: s, File: "random",
			Size: int64(tensor.Numel(s) * dt.Size())})
	}
	sort.Slice(src.infos, func(i, j int) bool { return src.infos[i].Name < src.infos[j].Name })
	return src
}

// randomSource is a format.Source generating each tensor on Read. Generating is serial within a
// tensor (one PCG stream from the seed and the name, so the values do not depend on how it is
// read) and was most of a 4B model's build (~1 s a Qwen3-4B layer). format.Stream reads the
// tensors in Tensors() order, so Read also starts the next readAhead tensors on other goroutines:
// their generation overlaps the caller's quantizing and uploading and each other's. Host memory
// then holds up to readAhead generated tensors besides the one being read.
type randomSource struct {
	opt   RandomOptions
	infos []format.TensorInfo

	mu      sync.Mutex
	pending map[int]chan *tensor.Host // started ahead, not yet read
	next    int                       // the first index not started ahead
}

// readAhead is how many tensors randomSource generates ahead of the one read: one a core,
// at most eight.
func readAhead() int { return min(runtime.GOMAXPROCS(0), 8) }

// Tensors implements format.Source.
func (r *randomSource) Tensors() []format.TensorInfo { return r.infos }

// Close implements format.Source. Tensors still being generated ahead are dropped when done.
func (r *randomSource) Close() error { return nil }

// Read implements format.Source: the tensor is generated from the seed and its name (or was,
// ahead of this call), and the next ones start.
func (r *randomSource) Read(name string) (*tensor.Host, error) {
	i := sort.Search(len(r.infos), func(i int) bool { return r.infos[i].Name >= name })
	if i == len(r.infos) || r.infos[i].Name != name {
		return nil, fmt.Errorf("random: no tensor %q", name)
	}
	r.mu.Lock()
	ch := r.pending[i]
	delete(r.pending, i)
	if r.pending == nil {
		r.pending = map[int]chan *tensor.Host{}
	}
	r.next = max(r.next, i+1)
	for ; r.next < len(r.infos) && r.next <= i+readAhead(); r.next++ {
		c := make(chan *tensor.Host, 1)
		r.pending[r.next] = c
		go func(info format.TensorInfo) { c <- r.generate(info) }(r.infos[r.next])
	}
	r.mu.Unlock()
	if ch != nil {
		return <-ch, nil
	}
	return r.generate(r.infos[i]), nil
}

// generate fills one tensor: uniform in ±Std·√3, norms 1 + NormJitter·u.
func (r *randomSource) generate(info format.TensorInfo) *tensor.Host {
	h := fnv.New64a()
	h.Write([]byte(info.Name))
	rng := rand.New(rand.NewPCG(r.opt.Seed, h.Sum64()))
	n := tensor.Numel(info.Shape)
	norm := len(info.Shape) == 1
	a := r.opt.Std * float32(math.Sqrt(3)) // uniform [-a, a) has standard deviation Std
	out := &tensor.Host{Name: info.Name, DType: info.DType, Shape: info.Shape, Data: make([]byte, n*info.DType.Size())}
	for j := 0; j < n; j++ {
		u := 2*rng.Float32() - 1
		v := u * a
		if norm {
			v = 1 + r.opt.NormJitter*u
		}
		if info.DType == tensor.BF16 {
			binary.LittleEndian.PutUint16(out.Data[2*j:], tensor.F32ToBF16(v))
		} else {
			binary.LittleEndian.PutUint32(out.Data[4*j:], math.Float32bits(v))
		}
	}
	return out
}
