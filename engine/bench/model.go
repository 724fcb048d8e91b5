package bench

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
	"github.com/qwengo/qwengo/engine/qwen3"
	"github.com/qwengo/qwengo/engine/tensor"
)

// FullLayers is the layer count of Qwen3-4B.
const FullLayers = 36

// Qwen4B returns the Qwen3-4B(-2507) shapes with the given number of layers (0: all 36).
func Qwen4B(layers int) *qwen3.Config {
	if layers <= 0 {
		layers = FullLayers
	}
	return &qwen3.Config{HiddenSize: 2560, IntermediateSize: 9728, NumLayers: layers, NumHeads: 32, NumKVHeads: 8,
		HeadDim: 128, VocabSize: 151936, RMSNormEps: 1e-6, RopeTheta: 5e6, TieEmbeddings: true,
		MaxPositions: 262144, BOSTokenID: -1, EOSTokenIDs: []int{151645}}
}

// QuickConfig returns the tiny shapes of --quick runs (CI, the CPU): every figure runs in a
// fraction of a second.
func QuickConfig(layers int) *qwen3.Config {
	if layers <= 0 {
		layers = 2
	}
	return &qwen3.Config{HiddenSize: 64, IntermediateSize: 128, NumLayers: layers, NumHeads: 4, NumKVHeads: 2,
		HeadDim: 16, VocabSize: 512, RMSNormEps: 1e-6, RopeTheta: 1e6, TieEmbeddings: true,
		MaxPositions: 4096, BOSTokenID: -1, EOSTokenIDs: []int{2}}
}

// Plan lists the sizes each workload runs at.
type Plan struct {
	PrefillLengths []int // prefill figures: tokens in one forward
	DecodeContexts []int // batch-1 decode figures: cached tokens before the timed steps
	DecodeSteps    int   // one-token forwards per timed repetition
	BatchDecode    int   // sequences of the batched decode figure
	BatchContext   int   // its context
	TrainLengths   []int // training figures: sequence length …
	TrainBatches   []int // … and batch size, every combination
}

// FullPlan is the plan of issues 6 and 7.
func FullPlan() Plan {
	return Plan{PrefillLengths: []int{512, 2048, 8192}, DecodeContexts: []int{512, 8192}, DecodeSteps: 32,
		BatchDecode: 8, BatchContext: 1024, TrainLengths: []int{192, 2048}, TrainBatches: []int{1, 8}}
}

// QuickPlan is the plan of --quick runs (peer.py --quick uses the same sizes).
func QuickPlan() Plan {
	return Plan{PrefillLengths: []int{32, 64, 128}, DecodeContexts: []int{32, 128}, DecodeSteps: 8,
		BatchDecode: 8, BatchContext: 64, TrainLengths: []int{16, 32}, TrainBatches: []int{1, 2}}
}

// paramShape is one parameter of a model: its HF name and shape ([n] for norms).
type paramShape struct {
	name  string
	shape []int
}

// paramShapes lists every parameter of cfg in model order: the embedding, each layer's
// parameters (norms, attention, MLP), the final norm, an untied lm_head.
func paramShapes(cfg *qwen3.Config) []paramShape {
	h, q, kv, in := cfg.HiddenSize, cfg.QDim(), cfg.KVDim(), cfg.IntermediateSize
	out := []paramShape{{"model.embed_tokens.weight", []int{cfg.VocabSize, h}}}
	for i := 0; i < cfg.NumLayers; i++ {
		p := fmt.Sprintf("model.layers.%d.", i)
		for _, ps := range []paramShape{
			{"input_layernorm.weight", []int{h}}, {"self_attn.q_proj.weight", []int{q, h}},
			{"self_attn.k_proj.weight", []int{kv, h}}, {"self_attn.v_proj.weight", []int{kv, h}},
			{"self_attn.q_norm.weight", []int{cfg.HeadDim}}, {"self_attn.k_norm.weight", []int{cfg.HeadDim}},
			{"self_attn.o_proj.weight", []int{h, q}}, {"post_attention_layernorm.weight", []int{h}},
			{"mlp.gate_proj.weight", []int{in, h}}, {"mlp.up_proj.weight", []int{in, h}}, {"mlp.down_proj.weight", []int{h, in}},
		} {
			out = append(out, paramShape{p + ps.name, ps.shape})
		}
	}
	out = append(out, paramShape{"model.norm.weight", []int{h}})
	if !cfg.TieEmbeddings {
		out = append(out, paramShape{"lm_head.weight", []int{cfg.VocabSize, h}})
	}
	return out
}

// paramNames maps every parameter of cfg to its shape.
func paramNames(cfg *qwen3.Config) map[string][]int {
	out := map[string][]int{}
	for _, p := range paramShapes(cfg) {
		out[p.name] = p.shape
	}
	return out
}

// NewModel builds a random model for cfg on b: linears in opt.Precision (qwen3.NVFP4 for the
// benchmark), the embedding (and tied lm_head, unless opt.LMHead asks for an NVFP4 copy) bf16,
// norms 1. Weights are uniform
// with standard deviation 0.02 (HF's initializer_range), generated in parallel per tensor
// from seed and the tensor's name, then loaded through qwen3.Load exactly as a bf16
// checkpoint would be.
func NewModel(cfg *qwen3.Config, b backend.Backend, opt qwen3.LoadOptions, seed uint64) (*qwen3.Model, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	src := &randomSource{seed: seed}
	for name, shape := range paramNames(cfg) {
		src.infos = append(src.infos, format.TensorInfo{Name: name, DType: tensor.BF16, Shape: shape, File: "random",
			Size: int64(tensor.Numel(shape) * 2)})
	}
	sort.Slice(src.infos, func(i, j int) bool { return src.infos[i].Name < src.infos[j].Name })
	m, err := qwen3.Load(cfg, src, b, opt)
	if err != nil {
		return nil, fmt.Errorf("bench: random model: %w", err)
	}
	return m, nil
}

// randomSource is a format.Source generating bf16 tensors on Read, chunks on every core.
type randomSource struct {
	seed  uint64
	infos []format.TensorInfo
}

func (r *randomSource) Tensors() []format.TensorInfo { return r.infos }
func (r *randomSource) Close() error                 { return nil }

// chunk is the number of elements one generator stream fills.
const chunk = 1 << 18

// Read generates the named tensor: norms 1, matrices uniform in ±0.02·√3.
func (r *randomSource) Read(name string) (*tensor.Host, error) {
	i := sort.Search(len(r.infos), func(i int) bool { return r.infos[i].Name >= name })
	if i == len(r.infos) || r.infos[i].Name != name {
		return nil, fmt.Errorf("bench: random source: no tensor %q", name)
	}
	info := r.infos[i]
	n := tensor.Numel(info.Shape)
	out := &tensor.Host{Name: name, DType: tensor.BF16, Shape: append([]int(nil), info.Shape...), Data: make([]byte, 2*n)}
	if len(info.Shape) == 1 {
		one := tensor.F32ToBF16(1)
		for j := 0; j < n; j++ {
			binary.LittleEndian.PutUint16(out.Data[2*j:], one)
		}
		return out, nil
	}
	h := fnv.New64a()
	h.Write([]byte(name))
	stream := h.Sum64()
	a := float32(0.02 * math.Sqrt(3))
	chunks := (n + chunk - 1) / chunk
	var next int
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := 0; w < min(runtime.GOMAXPROCS(0), chunks); w++ {
		wg.Go(func() {
			for {
				mu.Lock()
				c := next
				next++
				mu.Unlock()
				if c >= chunks {
					return
				}
				rng := rand.New(rand.NewPCG(r.seed^uint64(c)*0x9e3779b97f4a7c15, stream))
				for j := c * chunk; j < min(n, (c+1)*chunk); j++ {
					v := (2*rng.Float32() - 1) * a
					binary.LittleEndian.PutUint16(out.Data[2*j:], tensor.F32ToBF16(v))
				}
			}
		})
	}
	wg.Wait()
	return out, nil
}
