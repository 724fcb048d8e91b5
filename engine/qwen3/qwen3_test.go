package qwen3

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/cpu"
	"github.com/qwengo/qwengo/engine/format"
	"github.com/qwengo/qwengo/engine/nvfp4"
	"github.com/qwengo/qwengo/engine/tensor"
)

// tinyConfig is the test model: 2 layers, hidden 64, 4 heads over 2 KV heads of 32, vocab 1000.
func tinyConfig(tied bool) *Config {
	return &Config{HiddenSize: 64, IntermediateSize: 160, NumLayers: 2, NumHeads: 4, NumKVHeads: 2, HeadDim: 32,
		VocabSize: 1000, RMSNormEps: 1e-6, RopeTheta: 1e6, TieEmbeddings: tied, MaxPositions: 512,
		BOSTokenID: 1, EOSTokenIDs: []int{2}}
}

func newTiny(t testing.TB, tied bool, precision string) *Model {
	t.Helper()
	m, err := NewRandom(tinyConfig(tied), cpu.New(), RandomOptions{Seed: 7, Std: 0.05, NormJitter: 0.3, Precision: precision})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func tiedName(tied bool) string {
	if tied {
		return "tied"
	}
	return "untied"
}

func randIDs(seed uint64, n, vocab int) []int {
	r := rand.New(rand.NewPCG(seed, 0))
	ids := make([]int, n)
	for i := range ids {
		ids[i] = r.IntN(vocab)
	}
	return ids
}

// relErr is max|a-b| / max|b|: the largest error relative to the scale of the reference row.
func relErr(a, b []float32) float64 {
	var num, den float64
	for i := range a {
		num = math.Max(num, math.Abs(float64(a[i]-b[i])))
		den = math.Max(den, math.Abs(float64(b[i])))
	}
	return num / den
}

// rowsRelErr is the worst relErr over rows of vocab logits.
func rowsRelErr(a, b []float32, vocab int) float64 {
	worst := 0.0
	for r := 0; r*vocab < len(b); r++ {
		worst = math.Max(worst, relErr(a[r*vocab:(r+1)*vocab], b[r*vocab:(r+1)*vocab]))
	}
	return worst
}

func argmax(v []float32) int {
	best := 0
	for i, x := range v {
		if x > v[best] {
			best = i
		}
	}
	return best
}

func forward(t testing.TB, m *Model, ids []int, cache *KVCache, mode LogitsMode) *Logits {
	t.Helper()
	lg, err := m.Forward(context.Background(), ids, cache, mode)
	if err != nil {
		t.Fatal(err)
	}
	return lg
}

func newCache(t testing.TB, m *Model, n int) *KVCache {
	t.Helper()
	c, err := m.NewKVCache(n)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestChunkedPrefill: appending 7+1+5 tokens to a cache gives exactly the logits of one
// 13-token prefill (the matmul kernels are batch-invariant, see engine/cpu).
func TestChunkedPrefill(t *testing.T) {
	for _, tied := range []bool{true, false} {
		for _, prec := range []string{F32, BF16, NVFP4} {
			t.Run(tiedName(tied)+"/"+prec, func(t *testing.T) {
				m := newTiny(t, tied, prec)
				ids := randIDs(1, 13, 1000)
				full := forward(t, m, ids, nil, LogitsAll)
				cache := newCache(t, m, 32)
				var got []float32
				for _, chunk := range [][]int{ids[:7], ids[7:8], ids[8:]} {
					lg := forward(t, m, chunk, cache, LogitsAll)
					if lg.Pos0 != cache.Len()-len(chunk) {
						t.Fatalf("chunk at %d: Pos0 %d", cache.Len()-len(chunk), lg.Pos0)
					}
					got = append(got, lg.Data...)
				}
				if e := relErr(got, full.Data); e != 0 {
					t.Fatalf("7+1+5 chunked prefill differs from the full prefill: %.3g", e)
				}
			})
		}
	}
}

// TestCachedDecode: greedy decoding through the cache equals recomputing the whole prefix at
// every step.
func TestCachedDecode(t *testing.T) {
	for _, tied := range []bool{true, false} {
		t.Run(tiedName(tied), func(t *testing.T) {
			m := newTiny(t, tied, BF16)
			ids := randIDs(2, 5, 1000)
			cache := newCache(t, m, 16)
			lg := forward(t, m, ids, cache, LogitsLast)
			for step := 0; step < 8; step++ {
				ref := forward(t, m, ids, nil, LogitsLast)
				if e := relErr(lg.Data, ref.Data); e != 0 || lg.Pos0 != len(ids)-1 {
					t.Fatalf("step %d: cached logits differ from the recompute by %.3g (Pos0 %d)", step, e, lg.Pos0)
				}
				next := argmax(lg.Row(0))
				ids = append(ids, next)
				lg = forward(t, m, []int{next}, cache, LogitsLast)
			}
		})
	}
}

// TestGreedyMode: LogitsGreedy returns the argmax of what LogitsLast returns, at the same
// position, for a prompt and for cached single-token steps (the CPU backend picks it with
// ArgMaxRows on the device side of the interface).
func TestGreedyMode(t *testing.T) {
	m := newTiny(t, true, BF16)
	ids := randIDs(7, 6, 1000)
	last, greedy := newCache(t, m, 16), newCache(t, m, 16)
	for step := 0; step < 5; step++ {
		want := forward(t, m, ids, last, LogitsLast)
		got := forward(t, m, ids, greedy, LogitsGreedy)
		if got.Data != nil || got.Greedy != backend.ArgMax(want.Row(0)) || got.Pos0 != want.Pos0 || got.Vocab != want.Vocab {
			t.Fatalf("step %d: greedy %d at %d (vocab %d, data %v), want %d at %d (vocab %d)", step, got.Greedy, got.Pos0, got.Vocab,
				got.Data != nil, backend.ArgMax(want.Row(0)), want.Pos0, want.Vocab)
		}
		ids = []int{got.Greedy}
	}
	if LogitsGreedy.String() != "greedy" {
		t.Errorf("LogitsGreedy.String() = %q", LogitsGreedy.String())
	}
}

// TestTruncate: truncating the cache and appending other tokens equals a fresh run.
func TestTruncate(t *testing.T) {
	m := newTiny(t, false, F32)
	a, b := randIDs(3, 10, 1000), randIDs(4, 5, 1000)
	cache := newCache(t, m, 16)
	forward(t, m, a, cache, LogitsNone)
	if err := cache.Truncate(4); err != nil {
		t.Fatal(err)
	}
	got := forward(t, m, b, cache, LogitsAll)
	seq := append(append([]int(nil), a[:4]...), b...)
	want := forward(t, m, seq, nil, LogitsAll)
	if e := relErr(got.Data, want.Data[4*want.Vocab:]); e != 0 || cache.Len() != 9 {
		t.Fatalf("truncate to 4 then append 5: differs from a fresh run by %.3g (len %d)", e, cache.Len())
	}
	cache.Reset()
	if e := relErr(forward(t, m, seq, cache, LogitsAll).Data, want.Data); e != 0 {
		t.Fatalf("after Reset: %.3g", e)
	}
}

func TestForwardErrors(t *testing.T) {
	m := newTiny(t, true, F32)
	ctx := context.Background()
	cache := newCache(t, m, 8)
	forward(t, m, []int{1, 2, 3}, cache, LogitsNone)
	other := newTiny(t, true, F32)
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	bigger := tinyConfig(true)
	bigger.NumLayers = 3
	mBig, err := NewRandom(bigger, m.B, RandomOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		ctx   context.Context
		ids   []int
		cache *KVCache
		mode  LogitsMode
		want  string
	}{
		{"full", ctx, make([]int, 6), cache, LogitsLast, "KV cache full: 9 tokens (3 cached + 6 new), capacity 8"},
		{"vocab", ctx, []int{5, 1000}, cache, LogitsLast, "token id 1000 at position 1 is outside the vocabulary (0..999)"},
		{"negative id", ctx, []int{-1}, cache, LogitsLast, "token id -1"},
		{"empty", ctx, nil, cache, LogitsLast, "no tokens"},
		{"mode", ctx, []int{1}, cache, LogitsMode(9), "unknown logits mode 9"},
		{"cancelled", cancelled, []int{1}, cache, LogitsLast, context.Canceled.Error()},
		{"foreign cache", ctx, []int{1}, newCache(t, other, 8), LogitsLast, "not made for this model"},
		{"wrong cache", ctx, []int{1}, newCache(t, mBig, 8), LogitsLast, "not made for this model"},
		{"max positions", ctx, make([]int, 513), nil, LogitsLast, "max_position_embeddings 512"},
	}
	for _, c := range cases {
		_, err := m.Forward(c.ctx, c.ids, c.cache, c.mode)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want %q", c.name, err, c.want)
		}
		if cache.Len() != 3 {
			t.Fatalf("%s: a failed forward changed the cache length to %d", c.name, cache.Len())
		}
	}
	if _, err := m.Forward(cancelled, []int{1}, cache, LogitsLast); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v is not context.Canceled", err)
	}
	if _, err := m.NewKVCache(513); err == nil {
		t.Error("a cache past max_position_embeddings was accepted")
	}
}

// TestMemory: a forward's activations are freed, the peak is reported, and freeing the model
// and cache returns the backend to zero.
func TestMemory(t *testing.T) {
	m := newTiny(t, false, BF16)
	b := m.B
	weights := b.Memory().InUse[backend.Weights]
	if weights != m.WeightBytes() {
		t.Errorf("accounted weights %d, WeightBytes %d", weights, m.WeightBytes())
	}
	cache := newCache(t, m, 64)
	b.ResetPeak()
	forward(t, m, randIDs(5, 40, 1000), cache, LogitsAll)
	st := b.Memory()
	if st.InUse[backend.Activations] != 0 || st.PeakBy[backend.Activations] == 0 {
		t.Errorf("activations after forward: %v", st)
	}
	if cache.Bytes() != st.InUse[backend.KVCache] || cache.BytesUsed() != 2*2*40*64*4 {
		t.Errorf("cache bytes %d / used %d, accounted %d", cache.Bytes(), cache.BytesUsed(), st.InUse[backend.KVCache])
	}
	t.Log(st)
	t.Log(m)
	cache.Free()
	m.Free()
	if st := b.Memory(); st.Used() != 0 || st.Live != 0 {
		t.Errorf("after freeing everything: %v", st)
	}
	if _, err := m.Forward(context.Background(), []int{1}, nil, LogitsLast); err == nil {
		t.Error("forward on a freed model")
	}

	// A budget too small for the activations gives a typed error and keeps the model usable.
	m = newTiny(t, false, BF16)
	cb := m.B.(*cpu.Backend)
	cb.SetBudget(m.B.Memory().Used() + 2*64*64*4 + 20000)
	_, err := m.Forward(context.Background(), randIDs(6, 64, 1000), nil, LogitsAll)
	var ob *backend.OverBudget
	if !errors.As(err, &ob) {
		t.Fatalf("over budget: %v", err)
	}
	t.Log(err)
	cb.SetBudget(0)
	forward(t, m, []int{1, 2}, nil, LogitsLast)
}

// TestOnHidden: the hook sees the embedding, every block and the final norm, and the final
// norm of the last block's output is what the logits are computed from.
func TestOnHidden(t *testing.T) {
	m := newTiny(t, true, F32)
	ids := []int{5, 6, 7}
	var layers []int
	hidden := map[int][]float32{}
	lg, err := m.ForwardWith(context.Background(), ids, nil, LogitsAll, ForwardOptions{OnHidden: func(l int, h []float32) {
		layers = append(layers, l)
		hidden[l] = h
	}})
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 4 || layers[0] != -1 || layers[3] != 2 {
		t.Fatalf("hook layers %v", layers)
	}
	emb, _ := m.B.DownloadWeight(m.Embed)
	row, _ := emb.Dense.Float32s(nil)
	if relErr(hidden[-1][:64], row[5*64:6*64]) != 0 {
		t.Fatal("layer -1 is not the embedding")
	}
	norm, _ := m.B.Download(m.Norm, nil)
	x := hidden[1][2*64:]
	var ss float64
	for _, v := range x {
		ss += float64(v) * float64(v)
	}
	inv := 1 / math.Sqrt(ss/64+1e-6)
	for i, v := range x {
		if want := float64(norm[i]) * float64(v) * inv; math.Abs(float64(hidden[2][2*64+i])-want) > 1e-5 {
			t.Fatalf("final norm element %d: %v, want %v", i, hidden[2][2*64+i], want)
		}
	}
	if lg.Rows != 3 {
		t.Fatal(lg.Rows)
	}
}

// TestPrecisions logs how far bf16 and NVFP4 weights move the logits from f32 weights.
func TestPrecisions(t *testing.T) {
	ids := randIDs(8, 24, 1000)
	for _, tied := range []bool{true, false} {
		dense := newTiny(t, tied, F32)
		ref := forward(t, dense, ids, nil, LogitsAll)
		for _, c := range []struct {
			prec   string
			maxErr float64
		}{{BF16, 0.02}, {NVFP4, 0.5}} {
			m := newTiny(t, tied, c.prec)
			got := forward(t, m, ids, nil, LogitsAll)
			e := rowsRelErr(got.Data, ref.Data, ref.Vocab)
			agree := 0
			for r := 0; r < ref.Rows; r++ {
				if argmax(got.Row(r)) == argmax(ref.Row(r)) {
					agree++
				}
			}
			hw, _ := m.B.DownloadWeight(m.Layers[0].Up)
			ws := ""
			if hw.NVFP4 != nil {
				v, err := dense.denseHost(dense.Layers[0].Up)
				if err != nil {
					t.Fatal(err)
				}
				ws = ", layer 0 up_proj weight relative RMSE " + strconv.FormatFloat(nvfp4.RelRMSE(v, hw.NVFP4), 'g', 3, 64)
			}
			var num, den float64
			for i, v := range ref.Data {
				num += float64(got.Data[i]-v) * float64(got.Data[i]-v)
				den += float64(v) * float64(v)
			}
			t.Logf("%s %-5s weights (%s): logits max relative error vs f32 %.3g (RMS %.3g), top-1 agreement %d/%d%s",
				tiedName(tied), c.prec, m.Sources["model.layers.0.mlp.up_proj"], e, math.Sqrt(num/den), agree, ref.Rows, ws)
			if e > c.maxErr {
				t.Errorf("%s %s: relative error %.3g > %g", tiedName(tied), c.prec, e, c.maxErr)
			}
		}
	}
}

func loadDir(t testing.TB, dir, precision string) *Model {
	t.Helper()
	m, err := Open(dir, cpu.New(), LoadOptions{Precision: precision})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestSaveRoundTrip: f32 exports reload bit-identically; bf16 within bf16 precision; NVFP4
// exports keep the packed weights byte for byte.
func TestSaveRoundTrip(t *testing.T) {
	ids := randIDs(9, 16, 1000)
	for _, tied := range []bool{true, false} {
		for _, c := range []struct {
			prec, save string
			shard      int64
			tol        float64
		}{
			{F32, F32, 0, 0},
			{F32, F32, 100 << 10, 0},
			{F32, BF16, 0, 0.03},
			{BF16, BF16, 0, 0.01}, // linears exact, norms rounded to bf16
			{NVFP4, NVFP4, 0, 0.01},
			{F32, NVFP4, 0, 0.5},
		} {
			name := tiedName(tied) + "/" + c.prec + "→" + c.save
			if c.shard > 0 {
				name += "/sharded"
			}
			t.Run(name, func(t *testing.T) {
				m := newTiny(t, tied, c.prec)
				dir := t.TempDir()
				if err := m.Save(dir, SaveOptions{Format: c.save, MaxShardBytes: c.shard}); err != nil {
					t.Fatal(err)
				}
				back := loadDir(t, dir, KeepStored)
				want := forward(t, m, ids, nil, LogitsAll)
				e := rowsRelErr(forward(t, back, ids, nil, LogitsAll).Data, want.Data, want.Vocab)
				t.Logf("reloaded logits relative error %.3g (%s)", e, back.Sources["model.layers.1.self_attn.o_proj"])
				if e > c.tol {
					t.Errorf("relative error %.3g > %g", e, c.tol)
				}
				if back.Config.TieEmbeddings != tied || (back.LMHead == back.Embed) != tied {
					t.Errorf("tie_word_embeddings came back %v", back.Config.TieEmbeddings)
				}
				if c.shard > 0 {
					if _, err := os.Stat(filepath.Join(dir, "model.safetensors.index.json")); err != nil {
						t.Error(err)
					}
				}
				if c.save != NVFP4 {
					return
				}
				if !strings.HasPrefix(back.Sources["model.layers.1.self_attn.o_proj"], "nvfp4 (modelopt)") || back.Config.Quantization == nil {
					t.Errorf("NVFP4 export reloaded as %q, quantization_config %+v", back.Sources["model.layers.1.self_attn.o_proj"], back.Config.Quantization)
				}
				if c.prec == NVFP4 {
					a, _ := m.B.DownloadWeight(m.Layers[1].Down)
					b, _ := back.B.DownloadWeight(back.Layers[1].Down)
					if string(a.NVFP4.Packed) != string(b.NVFP4.Packed) || string(a.NVFP4.Scales) != string(b.NVFP4.Scales) || a.NVFP4.Global != b.NVFP4.Global {
						t.Error("the NVFP4 export changed the quantised down_proj")
					}
				}
				raw, err := os.ReadFile(filepath.Join(dir, "hf_quant_config.json"))
				if err != nil {
					t.Fatal(err)
				}
				var hq struct {
					Quantization struct {
						QuantAlgo string `json:"quant_algo"`
						GroupSize int    `json:"group_size"`
					} `json:"quantization"`
				}
				if err := json.Unmarshal(raw, &hq); err != nil || hq.Quantization.QuantAlgo != "NVFP4" || hq.Quantization.GroupSize != 16 {
					t.Errorf("hf_quant_config.json: %s (%v)", raw, err)
				}
				src, _ := format.Open(dir)
				defer src.Close()
				for _, ti := range src.Tensors() {
					if ti.Name == "model.layers.0.mlp.up_proj.weight_scale" && ti.DType != tensor.F8E4M3 ||
						ti.Name == "model.layers.0.mlp.up_proj.weight" && ti.DType != tensor.U8 ||
						ti.Name == "model.layers.0.mlp.up_proj.weight_scale_2" && (ti.DType != tensor.F32 || len(ti.Shape) != 0) {
						t.Errorf("%s stored as %v%v", ti.Name, ti.DType, ti.Shape)
					}
				}
			})
		}
	}
	if err := newTiny(t, true, F32).Save(t.TempDir(), SaveOptions{Format: "fp8"}); err == nil {
		t.Error("unknown save format accepted")
	}
}

// seedDat writes m as the seed project would: NVFP4 pairs (seed variant, keys X.weight.qdata /
// X.weight.scale), float16 embeddings and norms, and an lm_head (X.qdata / X.scale) although the
// config ties it.
func seedDat(t *testing.T, m *Model) string {
	var entries []format.DatEntry
	var payloads [][]byte
	add := func(key string, code int, shape []int, data []byte) {
		entries = append(entries, format.DatEntry{Key: key, ElemType: code, Shape: shape})
		payloads = append(payloads, data)
	}
	quant := func(prefix string, w backend.Weight, keys [2]string) {
		v, err := m.denseHost(w)
		if err != nil {
			t.Fatal(err)
		}
		q, err := nvfp4.QuantizeSeed(v, w.Out(), w.In())
		if err != nil {
			t.Fatal(err)
		}
		add(prefix+keys[0], 0, []int{q.Rows, q.Cols / 2}, q.Packed)
		add(prefix+keys[1], 101, []int{q.Rows, q.Cols / 16}, q.Scales)
	}
	for _, p := range m.params() {
		switch {
		case p.norm != nil:
			v, _ := m.B.Download(p.norm, nil)
			h, _ := tensor.FromFloat32s("", tensor.F16, []int{p.norm.Cols()}, v)
			add(p.prefix+".weight", 5, h.Shape, h.Data)
		case p.prefix == "model.embed_tokens":
			v, _ := m.denseHost(p.w)
			h, _ := tensor.FromFloat32s("", tensor.F16, []int{p.w.Out(), p.w.In()}, v)
			add(p.prefix+".weight", 5, h.Shape, h.Data)
			quant("lm_head", p.w, [2]string{".qdata", ".scale"})
		default:
			quant(p.prefix, p.w, [2]string{".weight.qdata", ".weight.scale"})
		}
	}
	path := filepath.Join(t.TempDir(), "seed.dat")
	if err := format.WriteDat(path, entries, func(i int) ([]byte, error) { return payloads[i], nil }); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestSeedDat loads a seed-style .dat: NVFP4 decoded inside the matmul equals the dequantised
// f32 weights exactly, the stored lm_head is used although tied, and Save writes it untied.
func TestSeedDat(t *testing.T) {
	base := newTiny(t, true, F32)
	path := seedDat(t, base)
	ids := []int{7, 7, 100, 3}
	var outs []*Logits
	var models []*Model
	for _, prec := range []string{KeepStored, F32} {
		src, err := format.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		var calls int
		var last [2]int64
		m, err := Load(base.Config, src, cpu.New(), LoadOptions{Precision: prec, Progress: func(d, tot int64) { calls++; last = [2]int64{d, tot} }})
		src.Close()
		if err != nil {
			t.Fatal(err)
		}
		if calls != len(src.Tensors()) || last[0] != last[1] || last[1] == 0 {
			t.Errorf("progress: %d calls for %d tensors, last %v", calls, len(src.Tensors()), last)
		}
		if got := m.Sources["lm_head"]; !strings.HasPrefix(got, "nvfp4 (seed") || m.LMHead == m.Embed {
			t.Fatalf("lm_head loaded as %q", got)
		}
		outs = append(outs, forward(t, m, ids, nil, LogitsAll))
		models = append(models, m)
	}
	if e := relErr(outs[0].Data, outs[1].Data); e != 0 {
		t.Fatalf("in-matmul NVFP4 decode vs dequantised f32: %.3g", e)
	}
	t.Logf(".dat (seed NVFP4, lm_head NVFP4) logits vs the f32 model: relative error %.3g",
		rowsRelErr(outs[0].Data, forward(t, base, ids, nil, LogitsAll).Data, outs[0].Vocab))
	dir := t.TempDir()
	if err := models[0].Save(dir, SaveOptions{Format: F32}); err != nil {
		t.Fatal(err)
	}
	back := loadDir(t, dir, KeepStored)
	if back.Config.TieEmbeddings || relErr(forward(t, back, ids, nil, LogitsAll).Data, outs[0].Data) != 0 {
		t.Errorf("saved .dat model: tied %v, logits differ", back.Config.TieEmbeddings)
	}
}

// TestLoadErrors mutates a saved checkpoint and checks each error names the tensor.
func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	m := newTiny(t, false, F32)
	if err := m.Save(dir, SaveOptions{Format: F32}); err != nil {
		t.Fatal(err)
	}
	cfg := m.Config
	src, _ := format.Open(dir)
	var all []*tensor.Host
	if err := format.Stream(src, func(h *tensor.Host) error { all = append(all, h); return nil }, nil); err != nil {
		t.Fatal(err)
	}
	src.Close()
	find := func(ts []*tensor.Host, name string) int {
		for i, h := range ts {
			if h.Name == name {
				return i
			}
		}
		t.Fatalf("no %s", name)
		return -1
	}
	set := func(name string, h *tensor.Host) func([]*tensor.Host) []*tensor.Host {
		return func(ts []*tensor.Host) []*tensor.Host {
			h.Name = name
			ts[find(ts, name)] = h
			return ts
		}
	}
	nanAt := func(name string, dt tensor.DType, elem int) func([]*tensor.Host) []*tensor.Host {
		return func(ts []*tensor.Host) []*tensor.Host {
			i := find(ts, name)
			v, _ := ts[i].Float32s(nil)
			v[elem] = float32(math.NaN())
			ts[i], _ = tensor.FromFloat32s(name, dt, ts[i].Shape, v)
			return ts
		}
	}
	nv, _ := nvfp4.QuantizeModelOpt(make([]float32, 64*160), 64, 160)
	cases := []struct {
		name   string
		mutate func([]*tensor.Host) []*tensor.Host
		want   string
	}{
		{"missing", func(ts []*tensor.Host) []*tensor.Host {
			i := find(ts, "model.layers.1.mlp.up_proj.weight")
			return append(ts[:i], ts[i+1:]...)
		}, "missing tensors: model.layers.1.mlp.up_proj"},
		{"unexpected", func(ts []*tensor.Host) []*tensor.Host {
			return append(ts, &tensor.Host{Name: "model.layers.2.mlp.up_proj.weight", DType: tensor.F32, Shape: []int{1}, Data: make([]byte, 4)})
		}, `unexpected tensor "model.layers.2.mlp.up_proj.weight"`},
		{"unexpected part", func(ts []*tensor.Host) []*tensor.Host {
			return append(ts, &tensor.Host{Name: "model.layers.0.mlp.up_proj.bias", DType: tensor.F32, Shape: []int{160}, Data: make([]byte, 640)})
		}, `unexpected tensor "model.layers.0.mlp.up_proj.bias"`},
		{"shape", set("model.layers.0.self_attn.k_proj.weight", &tensor.Host{DType: tensor.F32, Shape: []int{64, 32}, Data: make([]byte, 64*32*4)}),
			`"model.layers.0.self_attn.k_proj.weight": shape [64 32], want [64 64]`},
		{"transposed", set("model.layers.0.mlp.down_proj.weight", &tensor.Host{DType: tensor.F32, Shape: []int{160, 64}, Data: make([]byte, 64*160*4)}),
			`"model.layers.0.mlp.down_proj.weight": shape [160 64], want [64 160]`},
		{"norm shape", set("model.norm.weight", &tensor.Host{DType: tensor.F32, Shape: []int{8, 8}, Data: make([]byte, 256)}),
			`"model.norm.weight": shape [8 8], want [64]`},
		{"nan norm", nanAt("model.layers.1.self_attn.q_norm.weight", tensor.F32, 2), `"model.layers.1.self_attn.q_norm.weight": element 2 (index [2]) is NaN`},
		{"nan bf16 weight", nanAt("model.layers.0.mlp.gate_proj.weight", tensor.BF16, 65), `"model.layers.0.mlp.gate_proj.weight": element 65 (index [1 1]) is NaN`},
		{"inf f16 embedding", func(ts []*tensor.Host) []*tensor.Host {
			i := find(ts, "model.embed_tokens.weight")
			v, _ := ts[i].Float32s(nil)
			v[130] = float32(math.Inf(-1))
			ts[i], _ = tensor.FromFloat32s(ts[i].Name, tensor.F16, ts[i].Shape, v)
			return ts
		}, `"model.embed_tokens.weight": element 130 (index [2 2]) is -Inf`},
		{"int weight", set("lm_head.weight", &tensor.Host{DType: tensor.I32, Shape: []int{1000, 64}, Data: make([]byte, 1000*64*4)}),
			`"lm_head.weight": dtype I32 is unsupported`},
		{"int norm", set("model.norm.weight", &tensor.Host{DType: tensor.I16, Shape: []int{64}, Data: make([]byte, 128)}),
			`"model.norm.weight": dtype I16 is unsupported`},
		{"incomplete nvfp4", set("model.layers.0.mlp.down_proj.weight", &tensor.Host{DType: tensor.U8, Shape: []int{64, 80}, Data: nv.Packed}),
			"model.layers.0.mlp.down_proj is incomplete: has weight U8"},
		{"nvfp4 scale dtype", func(ts []*tensor.Host) []*tensor.Host {
			ts = set("model.layers.0.mlp.down_proj.weight", &tensor.Host{DType: tensor.U8, Shape: []int{64, 80}, Data: nv.Packed})(ts)
			g, _ := tensor.FromFloat32s("model.layers.0.mlp.down_proj.weight_scale_2", tensor.F32, []int{}, []float32{1})
			return append(ts, g, &tensor.Host{Name: "model.layers.0.mlp.down_proj.weight_scale", DType: tensor.F16, Shape: []int{64, 10}, Data: make([]byte, 1280)})
		}, `"model.layers.0.mlp.down_proj.weight_scale": block scales have dtype F16, want F8_E4M3`},
		{"nvfp4 nan scale", func(ts []*tensor.Host) []*tensor.Host {
			ts = set("model.layers.0.mlp.down_proj.weight", &tensor.Host{DType: tensor.U8, Shape: []int{64, 80}, Data: nv.Packed})(ts)
			g, _ := tensor.FromFloat32s("model.layers.0.mlp.down_proj.weight_scale_2", tensor.F32, []int{}, []float32{1})
			sc := append([]byte(nil), nv.Scales...)
			sc[13] = 0x7f
			return append(ts, g, &tensor.Host{Name: "model.layers.0.mlp.down_proj.weight_scale", DType: tensor.F8E4M3, Shape: []int{64, 10}, Data: sc})
		}, `"model.layers.0.mlp.down_proj.weight": nvfp4: block scale at row 1, block 3`},
		{"quantised norm", func(ts []*tensor.Host) []*tensor.Host {
			i := find(ts, "model.norm.weight")
			return append(append(ts[:i:i], ts[i+1:]...), &tensor.Host{Name: "model.norm.qdata", DType: tensor.U8, Shape: []int{32}, Data: make([]byte, 32)})
		}, `"model.norm.qdata": norm model.norm cannot be quantised`},
		{"twice", func(ts []*tensor.Host) []*tensor.Host {
			return append(ts, &tensor.Host{Name: "model.layers.0.mlp.up_proj.qdata", DType: tensor.U8, Shape: []int{160, 32}, Data: make([]byte, 160*32)})
		}, `"model.layers.0.mlp.up_proj.qdata": parameter model.layers.0.mlp.up_proj given twice`},
	}
	for _, c := range cases {
		var ts []*tensor.Host
		for _, h := range all {
			cp := *h
			cp.Data = append([]byte(nil), h.Data...)
			ts = append(ts, &cp)
		}
		p := filepath.Join(t.TempDir(), "m.safetensors")
		if err := format.WriteSafetensors(p, c.mutate(ts), nil); err != nil {
			t.Fatal(err)
		}
		s, err := format.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		b := cpu.New()
		_, err = Load(cfg, s, b, LoadOptions{})
		s.Close()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want %q", c.name, err, c.want)
		}
		if st := b.Memory(); st.Used() != 0 {
			t.Errorf("%s: a failed load left %d bytes allocated", c.name, st.Used())
		}
	}
	s, _ := format.Open(dir)
	defer s.Close()
	if _, err := Load(cfg, s, cpu.New(), LoadOptions{Precision: "int4"}); err == nil || !strings.Contains(err.Error(), `unknown precision "int4"`) {
		t.Errorf("precision int4: %v", err)
	}
}

func TestConfig(t *testing.T) {
	base := `"hidden_size":64,"intermediate_size":160,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":1000,"rope_theta":1e6`
	bad := []struct{ json, want string }{
		{`{"hidden_size":64,"intermediate_size":1,"num_hidden_layers":1,"num_attention_heads":4,"num_key_value_heads":3,"vocab_size":10,"rope_theta":1e4}`, "num_attention_heads 4 is not a multiple of num_key_value_heads 3"},
		{`{"hidden_size":0,"intermediate_size":1,"num_hidden_layers":1,"num_attention_heads":4,"vocab_size":10,"head_dim":8,"rope_theta":1e4}`, "hidden_size = 0, must be positive"},
		{`{"model_type":"llama",` + base + `}`, `model_type "llama" is not supported`},
		{`{` + base + `,"rope_scaling":{"rope_type":"yarn","factor":4}}`, "rope_scaling map[factor:4 rope_type:yarn] is unsupported"},
		{`{"hidden_size":64,"intermediate_size":160,"num_hidden_layers":2,"num_attention_heads":4,"vocab_size":1000,"rope_parameters":{"rope_type":"llama3","rope_theta":1e4,"factor":8}}`, `rope_type "llama3" is unsupported`},
		{`{` + base + `,"attention_bias":true}`, "attention_bias = true is unsupported"},
		{`{` + base + `,"use_sliding_window":true}`, "use_sliding_window = true is unsupported"},
		{`{` + base + `,"layer_types":["full_attention","sliding_attention"]}`, `layer_types[1] = "sliding_attention" is unsupported`},
		{`{` + base + `,"hidden_act":"gelu"}`, `hidden_act "gelu" is unsupported`},
		{`{"hidden_size":64,"intermediate_size":160,"num_hidden_layers":2,"num_attention_heads":4,"vocab_size":1000}`, "rope_theta is missing"},
		{`{"hidden_size":66,"intermediate_size":160,"num_hidden_layers":2,"num_attention_heads":4,"vocab_size":1000,"rope_theta":1e4}`, "no head_dim and hidden_size 66 is not a multiple of num_attention_heads 4"},
		{`{` + base + `,"head_dim":31}`, "head_dim 31 must be even"},
		{`{` + base + `,"eos_token_id":[2,"x"]}`, "eos_token_id: x is not a token id"},
		{`{` + base + `,"eos_token_id":1000}`, "eos_token_id 1000 is outside the vocabulary of 1000"},
		{`{` + base + `,"quantization_config":{"quant_method":"awq","bits":4}}`, `quant_method "awq", quant_algo "" is unsupported`},
		{`{` + base + `,"rms_norm_eps":-1}`, "rms_norm_eps -1 must be positive"},
		{`{"hidden_size":`, "config: unexpected end of JSON input"},
	}
	for _, c := range bad {
		if _, err := ParseConfig([]byte(c.json)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s:\n err = %v\nwant %q", c.json, err, c.want)
		}
	}
	good := []struct {
		json  string
		check func(*Config) bool
	}{
		{`{"hidden_size":2560,"intermediate_size":9728,"num_hidden_layers":36,"num_attention_heads":32,"num_key_value_heads":8,"head_dim":128,"vocab_size":151936,"rope_theta":5000000,"tie_word_embeddings":true,"bos_token_id":151643,"eos_token_id":[151645,151643],"torch_dtype":"bfloat16","rope_scaling":null,"sliding_window":null,"max_position_embeddings":262144}`,
			func(c *Config) bool {
				n := c.NumParams()
				return c.QDim() == 4096 && c.KVDim() == 1024 && len(c.EOSTokenIDs) == 2 && c.RopeTheta == 5e6 && c.BOSTokenID == 151643 && n > 4.0e9 && n < 4.1e9
			}},
		{`{` + base + `}`, func(c *Config) bool { return c.HeadDim == 16 && c.RMSNormEps == 1e-6 && c.BOSTokenID == -1 }},
		{`{"hidden_size":64,"intermediate_size":160,"num_hidden_layers":2,"num_attention_heads":4,"vocab_size":1000,"rope_parameters":{"rope_type":"default","rope_theta":5e6},"dtype":"float32"}`,
			func(c *Config) bool { return c.NumKVHeads == 4 && c.RopeTheta == 5e6 && c.TorchDType == "float32" }},
		{`{` + base + `,"rope_scaling":{"rope_type":"default","rope_theta":1e6}}`, func(c *Config) bool { return true }},
		{`{` + base + `,"quantization_config":{"quant_method":"modelopt","quant_algo":"NVFP4","group_size":16}}`, func(c *Config) bool { return c.Quantization.QuantAlgo == "NVFP4" }},
	}
	for _, g := range good {
		c, err := ParseConfig([]byte(g.json))
		if err != nil || !g.check(c) {
			t.Errorf("%s: %+v, %v", g.json, c, err)
		}
	}
}

func ints(t *testing.T, h *tensor.Host) []int {
	t.Helper()
	if h.DType != tensor.I64 || h.Validate() != nil {
		t.Fatalf("%s: %v%v is not I64", h.Name, h.DType, h.Shape)
	}
	out := make([]int, h.Numel())
	for i := range out {
		var v int64
		for j := 0; j < 8; j++ {
			v |= int64(h.Data[8*i+j]) << (8 * j)
		}
		out[i] = int(v)
	}
	return out
}

// TestHFParity compares with Hugging Face transformers (float32, CPU, eager attention) on the
// tiny checkpoints made by testdata/gen_refs.py: logits for all positions of 1, 7, 64 and 300
// tokens within a relative error of 1e-4, where the error of a position is
// max_i |ours_i - hf_i| / max_i |hf_i| over its vocabulary row (so small logits are judged
// against the row's scale, not their own), and 64 greedy tokens identical.
func TestHFParity(t *testing.T) {
	for _, name := range []string{"tiny-tied", "tiny-untied"} {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join("testdata", name)
			if _, err := os.Stat(filepath.Join(dir, "reference.safetensors")); err != nil {
				t.Skipf("no Hugging Face reference data in %s (made by testdata/gen_refs.py on the GPU machine): %v", dir, err)
			}
			m := loadDir(t, dir, KeepStored)
			ref, err := format.Open(filepath.Join(dir, "reference.safetensors"))
			if err != nil {
				t.Fatal(err)
			}
			defer ref.Close()
			read := func(name string) *tensor.Host {
				h, err := ref.Read(name)
				if err != nil {
					t.Fatal(err)
				}
				return h
			}
			for _, n := range []int{1, 7, 64, 300} {
				ids := ints(t, read("ids_"+strconv.Itoa(n)))
				want, err := read("logits_" + strconv.Itoa(n)).Float32s(nil)
				if err != nil {
					t.Fatal(err)
				}
				got := forward(t, m, ids, nil, LogitsAll)
				if len(got.Data) != len(want) {
					t.Fatalf("%d tokens: %d logits, reference %d", n, len(got.Data), len(want))
				}
				e := rowsRelErr(got.Data, want, got.Vocab)
				t.Logf("%d tokens: max relative error %.2g", n, e)
				if e > 1e-4 {
					t.Errorf("%d tokens: relative error %.3g > 1e-4", n, e)
				}
			}
			prompt, want := ints(t, read("greedy_prompt")), ints(t, read("greedy_ids"))
			cache := newCache(t, m, len(prompt)+len(want))
			lg := forward(t, m, prompt, cache, LogitsLast)
			for i, w := range want {
				next := argmax(lg.Row(0))
				if next != w {
					t.Fatalf("greedy token %d: got %d, transformers %d", i, next, w)
				}
				lg = forward(t, m, []int{next}, cache, LogitsLast)
			}
		})
	}
}

// TestModelOptExtras: a ModelOpt export with W4A4 input_scale and FP8 KV k_scale/v_scale
// tensors loads, ignoring them, with the same logits.
func TestModelOptExtras(t *testing.T) {
	m := newTiny(t, true, NVFP4)
	dir := t.TempDir()
	if err := m.Save(dir, SaveOptions{Format: NVFP4}); err != nil {
		t.Fatal(err)
	}
	src, _ := format.Open(dir)
	var ts []*tensor.Host
	format.Stream(src, func(h *tensor.Host) error { ts = append(ts, h); return nil }, nil)
	src.Close()
	one, _ := tensor.FromFloat32s("", tensor.F32, []int{}, []float32{0.5})
	for _, name := range []string{"model.layers.0.self_attn.q_proj.input_scale", "model.layers.1.mlp.down_proj.input_scale",
		"model.layers.0.self_attn.k_proj.k_scale", "model.layers.0.self_attn.v_proj.v_scale"} {
		c := *one
		c.Name = name
		ts = append(ts, &c)
	}
	if err := format.WriteSafetensors(filepath.Join(dir, "model.safetensors"), ts, nil); err != nil {
		t.Fatal(err)
	}
	back := loadDir(t, dir, KeepStored)
	ids := []int{4, 8, 15, 16, 23, 42}
	want := forward(t, m, ids, nil, LogitsAll)
	if e := rowsRelErr(forward(t, back, ids, nil, LogitsAll).Data, want.Data, want.Vocab); e > 0.01 {
		t.Fatalf("reloaded with extra scales: relative error %.3g", e)
	}
}

// TestLMHeadNVFP4 loads a checkpoint with LoadOptions.LMHead = NVFP4: the logits' matrix
// becomes an NVFP4 copy (of the tied embedding, or in place of a stored dense lm_head) while the
// embedding stays dense; the logits stay close to the dense head's; freeing the model frees the
// copy; Save writes it as lm_head and the reload computes the same logits; an unknown format is
// refused by name.
func TestLMHeadNVFP4(t *testing.T) {
	ids := randIDs(12, 20, 1000)
	for _, tied := range []bool{true, false} {
		t.Run(tiedName(tied), func(t *testing.T) {
			dir := t.TempDir()
			if err := newTiny(t, tied, F32).Save(dir, SaveOptions{Format: F32}); err != nil {
				t.Fatal(err)
			}
			dense := loadDir(t, dir, NVFP4)
			b := cpu.New()
			m, err := Open(dir, b, LoadOptions{Precision: NVFP4, LMHead: NVFP4})
			if err != nil {
				t.Fatal(err)
			}
			if m.LMHead.Kind() != NVFP4 || m.Embed.Kind() == NVFP4 || m.LMHead == m.Embed {
				t.Fatalf("lm_head %s, embedding %s, shared %v: want an NVFP4 head beside a dense embedding", m.LMHead.Kind(), m.Embed.Kind(), m.LMHead == m.Embed)
			}
			if src := m.Sources["lm_head"]; !strings.Contains(src, "nvfp4") {
				t.Errorf("Sources[lm_head] = %q, want the NVFP4 head named", src)
			}
			ref := forward(t, dense, ids, nil, LogitsAll)
			got := forward(t, m, ids, nil, LogitsAll)
			agree := 0
			for r := 0; r < ref.Rows; r++ {
				if argmax(got.Row(r)) == argmax(ref.Row(r)) {
					agree++
				}
			}
			e := rowsRelErr(got.Data, ref.Data, ref.Vocab)
			t.Logf("NVFP4 lm_head vs dense: logits max relative error %.3g, top-1 agreement %d/%d", e, agree, ref.Rows)
			if e > 0.5 || e == 0 {
				t.Errorf("logits relative error %.3g: want (0, 0.5]", e)
			}
			saved := t.TempDir()
			if err := m.Save(saved, SaveOptions{Format: NVFP4}); err != nil {
				t.Fatal(err)
			}
			// Save writes every lm_head dense (bf16, as the ModelOpt layout excludes it): the
			// reload computes with the NVFP4 head's values rounded to bf16, as its own head.
			again := loadDir(t, saved, NVFP4)
			if again.LMHead == again.Embed || again.Config.TieEmbeddings {
				t.Errorf("reloaded model ties lm_head to the embedding: the saved head is lost")
			}
			if e := rowsRelErr(forward(t, again, ids, nil, LogitsAll).Data, got.Data, ref.Vocab); e > 0.02 {
				t.Errorf("reloaded model's logits differ from the saved one's by %.3g", e)
			}
			m.Free()
			if st := b.Memory(); st.Used() != 0 {
				t.Errorf("freeing the model left %d bytes allocated", st.Used())
			}
		})
	}
	s, err := format.Open(t.TempDir())
	if err == nil {
		defer s.Close()
	}
	if _, err := Load(tinyConfig(true), s, cpu.New(), LoadOptions{LMHead: "int4"}); err == nil || !strings.Contains(err.Error(), `unknown lm_head format "int4"`) {
		t.Errorf("lm_head int4: %v", err)
	}
}
