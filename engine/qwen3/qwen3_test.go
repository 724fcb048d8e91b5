package qwen3

import (
	"context"
	"math"
	"math/rand/v2"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/qwengo/qwengo/engine/cpu"
	"github.com/qwengo/qwengo/engine/format"
	"github.com/qwengo/qwengo/engine/nvfp4"
	"github.com/qwengo/qwengo/engine/tensor"
)

func loadDir(t testing.TB, dir, precision string) *Model {
	t.Helper()
	cfg, err := LoadConfig(filepath.Join(dir, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	src, err := format.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	m, err := Load(cfg, src, cpu.New(), LoadOptions{Precision: precision})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func ints(t *testing.T, h *tensor.Host) []int {
	if h.DType != tensor.I64 {
		t.Fatalf("%s: dtype %v", h.Name, h.DType)
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

// relErr is max|a-b| / max|b| over a row: the error relative to the row's scale.
func relErr(a, b []float32) float64 {
	var num, den float64
	for i := range a {
		num = math.Max(num, math.Abs(float64(a[i]-b[i])))
		den = math.Max(den, math.Abs(float64(b[i])))
	}
	return num / den
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

// TestHFParity compares logits and greedy decoding with Hugging Face transformers (fp32, CPU,
// eager attention) on the tiny checkpoints made by testdata/gen_refs.py.
func TestHFParity(t *testing.T) {
	for _, name := range []string{"tiny-tied", "tiny-untied"} {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join("testdata", name)
			m := loadDir(t, dir, "")
			ref, err := format.Open(filepath.Join(dir, "reference.safetensors"))
			if err != nil {
				t.Fatal(err)
			}
			defer ref.Close()
			for _, n := range []int{1, 7, 64, 300} {
				idsT, _ := ref.Read("ids_" + strconv.Itoa(n))
				logT, _ := ref.Read("logits_" + strconv.Itoa(n))
				ids := ints(t, idsT)
				want, _ := logT.Float32s(nil)
				got, err := m.Forward(context.Background(), ids, nil, LogitsAll, nil)
				if err != nil {
					t.Fatal(err)
				}
				worst := 0.0
				for r := 0; r < n; r++ {
					worst = math.Max(worst, relErr(got.Row(r), want[r*got.Vocab:(r+1)*got.Vocab]))
				}
				if worst > 1e-4 {
					t.Fatalf("%d tokens: relative error %.3g > 1e-4", n, worst)
				}
				t.Logf("%d tokens: max relative error %.2g", n, worst)
			}
			pT, _ := ref.Read("greedy_prompt")
			gT, _ := ref.Read("greedy_ids")
			prompt, want := ints(t, pT), ints(t, gT)
			cache, _ := m.NewKVCache(len(prompt) + len(want))
			lg, err := m.Forward(context.Background(), prompt, cache, LogitsLast, nil)
			if err != nil {
				t.Fatal(err)
			}
			for i, w := range want {
				next := argmax(lg.Row(0))
				if next != w {
					t.Fatalf("greedy token %d: got %d, transformers %d", i, next, w)
				}
				if lg, err = m.Forward(context.Background(), []int{next}, cache, LogitsLast, nil); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

func TestChunkedPrefillAndCache(t *testing.T) {
	m := loadDir(t, filepath.Join("testdata", "tiny-untied"), "")
	r := rand.New(rand.NewPCG(1, 2))
	ids := make([]int, 13)
	for i := range ids {
		ids[i] = r.IntN(512)
	}
	ctx := context.Background()
	full, err := m.Forward(ctx, ids, nil, LogitsAll, nil)
	if err != nil {
		t.Fatal(err)
	}
	cache, _ := m.NewKVCache(32)
	var rows []float32
	for _, chunk := range [][]int{ids[:7], ids[7:8], ids[8:]} {
		lg, err := m.Forward(ctx, chunk, cache, LogitsAll, nil)
		if err != nil {
			t.Fatal(err)
		}
		rows = append(rows, lg.Data...)
	}
	if e := relErr(rows, full.Data); e > 1e-5 {
		t.Fatalf("chunked prefill (7+1+5) differs from full prefill: %.3g", e)
	}
	// Truncate and re-append equals a fresh run.
	if err := cache.Truncate(5); err != nil {
		t.Fatal(err)
	}
	lg, _ := m.Forward(ctx, ids[5:9], cache, LogitsLast, nil)
	if e := relErr(lg.Row(0), full.Row(8)); e > 1e-5 {
		t.Fatalf("after truncate: %.3g", e)
	}
	if _, err := m.Forward(ctx, make([]int, 30), cache, LogitsLast, nil); err == nil || !strings.Contains(err.Error(), "KV cache full") {
		t.Fatalf("overflow: %v", err)
	}
	if _, err := m.Forward(ctx, []int{512}, nil, LogitsLast, nil); err == nil || !strings.Contains(err.Error(), "outside the vocabulary") {
		t.Fatalf("bad id: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := m.Forward(cctx, ids, nil, LogitsLast, nil); err != context.Canceled {
		t.Fatalf("cancelled: %v", err)
	}
}

func forwardAll(t *testing.T, m *Model, ids []int) []float32 {
	t.Helper()
	lg, err := m.Forward(context.Background(), ids, nil, LogitsAll, nil)
	if err != nil {
		t.Fatal(err)
	}
	return lg.Data
}

func TestPrecisionsAndSaveRoundTrip(t *testing.T) {
	dir := filepath.Join("testdata", "tiny-tied")
	ids := []int{3, 1, 4, 1, 5, 9, 2, 6}
	ref := forwardAll(t, loadDir(t, dir, ""), ids)
	for _, c := range []struct{ precision, save string }{{"f32", "f32"}, {"bf16", "bf16"}, {"nvfp4", "nvfp4"}} {
		m := loadDir(t, dir, c.precision)
		got := forwardAll(t, m, ids)
		t.Logf("%-5s weights: logits relative error vs the f32 checkpoint %.3g (%s)", c.precision, relErr(got, ref), m.Sources["model.layers.0.mlp.up_proj"])
		if c.precision == "f32" && relErr(got, ref) != 0 {
			t.Errorf("f32 load changed logits")
		}
		out := t.TempDir()
		if err := m.Save(out, SaveOptions{Format: c.save, MaxShardBytes: 200 << 10}); err != nil {
			t.Fatal(err)
		}
		back := loadDir(t, out, "")
		// f32 round-trips exactly; bf16 and nvfp4 exports also store norms in bf16.
		tol := map[string]float64{"f32": 0, "bf16": 0.02, "nvfp4": 0.02}[c.save]
		if e := relErr(forwardAll(t, back, ids), got); e > tol {
			t.Errorf("save %s then load: relative error %.3g > %g", c.save, e, tol)
		}
		if c.save == "nvfp4" {
			a, b := m.B.WeightHost(m.Layers[1].Down).NVFP4, back.B.WeightHost(back.Layers[1].Down).NVFP4
			if a == nil || b == nil || string(a.Packed) != string(b.Packed) || string(a.Scales) != string(b.Scales) || a.Global != b.Global {
				t.Errorf("nvfp4 export changed the quantised down_proj")
			}
		}
		if c.save == "nvfp4" && !strings.HasPrefix(back.Sources["model.layers.1.self_attn.o_proj"], "nvfp4 (modelopt)") {
			t.Errorf("nvfp4 export reloaded as %q", back.Sources["model.layers.1.self_attn.o_proj"])
		}
	}
}

// seedDat writes the tiny model as the seed project would: NVFP4 pairs (seed variant, key
// spelling X.weight.qdata / X.weight.scale), float16 embeddings and norms, lm_head stored.
func seedDat(t *testing.T, m *Model) string {
	var entries []format.DatEntry
	var payloads [][]byte
	add := func(key string, code int, shape []int, data []byte) {
		entries = append(entries, format.DatEntry{Key: key, ElemType: code, Shape: shape})
		payloads = append(payloads, data)
	}
	for _, p := range m.params() {
		if p.norm != nil {
			h, _ := tensor.FromFloat32s("", tensor.F16, []int{p.norm.Cols()}, m.B.Download(p.norm, nil))
			add(p.prefix+".weight", 5, h.Shape, h.Data)
			continue
		}
		v, _ := m.denseHost(p.w)
		if p.prefix == "model.embed_tokens" {
			h, _ := tensor.FromFloat32s("", tensor.F16, []int{p.w.Out(), p.w.In()}, v)
			add(p.prefix+".weight", 5, h.Shape, h.Data)
			v, _ = m.denseHost(p.w)
			q, _ := nvfp4.QuantizeSeed(v, p.w.Out(), p.w.In())
			add("lm_head.qdata", 0, []int{q.Rows, q.Cols / 2}, q.Packed)
			add("lm_head.scale", 101, []int{q.Rows, q.Cols / 16}, q.Scales)
			continue
		}
		q, _ := nvfp4.QuantizeSeed(v, p.w.Out(), p.w.In())
		add(p.prefix+".weight.qdata", 0, []int{q.Rows, q.Cols / 2}, q.Packed)
		add(p.prefix+".weight.scale", 101, []int{q.Rows, q.Cols / 16}, q.Scales)
	}
	path := filepath.Join(t.TempDir(), "seed.dat")
	if err := format.WriteDat(path, entries, func(i int) ([]byte, error) { return payloads[i], nil }); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestSeedDat(t *testing.T) {
	dir := filepath.Join("testdata", "tiny-tied")
	base := loadDir(t, dir, "")
	path := seedDat(t, base)
	cfg, _ := LoadConfig(filepath.Join(dir, "config.json"))
	ids := []int{7, 7, 100, 3}
	var outs [][]float32
	for _, prec := range []string{"", "f32"} {
		src, err := format.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		m, err := Load(cfg, src, cpu.New(), LoadOptions{Precision: prec})
		src.Close()
		if err != nil {
			t.Fatal(err)
		}
		if got := m.Sources["lm_head"]; !strings.HasPrefix(got, "nvfp4 (seed") {
			t.Fatalf("lm_head loaded as %q", got)
		}
		outs = append(outs, forwardAll(t, m, ids))
	}
	if e := relErr(outs[0], outs[1]); e > 1e-5 {
		t.Fatalf("in-matmul NVFP4 decode vs dequantised f32: %.3g", e)
	}
	t.Logf(".dat (seed NVFP4) logits vs f32 checkpoint: relative error %.3g", relErr(outs[0], forwardAll(t, base, ids)))
}

func TestLoadErrors(t *testing.T) {
	dir := filepath.Join("testdata", "tiny-untied")
	cfg, _ := LoadConfig(filepath.Join(dir, "config.json"))
	src, _ := format.Open(dir)
	var all []*tensor.Host
	format.Stream(src, func(h *tensor.Host) error { all = append(all, h); return nil }, nil)
	src.Close()
	write := func(mutate func([]*tensor.Host) []*tensor.Host) error {
		var ts []*tensor.Host
		for _, h := range all {
			c := *h
			c.Data = append([]byte(nil), h.Data...)
			ts = append(ts, &c)
		}
		p := filepath.Join(t.TempDir(), "m.safetensors")
		if err := format.WriteSafetensors(p, mutate(ts), nil); err != nil {
			t.Fatal(err)
		}
		s, _ := format.Open(p)
		defer s.Close()
		_, err := Load(cfg, s, cpu.New(), LoadOptions{})
		return err
	}
	find := func(ts []*tensor.Host, name string) int {
		for i, h := range ts {
			if h.Name == name {
				return i
			}
		}
		t.Fatalf("no %s", name)
		return -1
	}
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
			return append(ts, &tensor.Host{Name: "model.layers.9.mlp.up_proj.weight", DType: tensor.F32, Shape: []int{1}, Data: make([]byte, 4)})
		}, `"model.layers.9.mlp.up_proj.weight"`},
		{"shape", func(ts []*tensor.Host) []*tensor.Host {
			i := find(ts, "model.layers.0.self_attn.k_proj.weight")
			ts[i].Shape = []int{ts[i].Shape[1], ts[i].Shape[0]}
			return ts
		}, `"model.layers.0.self_attn.k_proj.weight": shape [64 64], want [64 64]`},
		{"nan", func(ts []*tensor.Host) []*tensor.Host {
			i := find(ts, "model.layers.1.self_attn.q_norm.weight")
			copy(ts[i].Data[8:], []byte{0, 0, 0xc0, 0x7f})
			return ts
		}, `"model.layers.1.self_attn.q_norm.weight": element 2`},
		{"norm shape", func(ts []*tensor.Host) []*tensor.Host {
			i := find(ts, "model.norm.weight")
			ts[i].Shape = []int{8, 8}
			return ts
		}, `"model.norm.weight": shape [8 8], want [64]`},
		{"incomplete nvfp4", func(ts []*tensor.Host) []*tensor.Host {
			i := find(ts, "model.layers.0.mlp.down_proj.weight")
			ts[i] = &tensor.Host{Name: ts[i].Name, DType: tensor.U8, Shape: []int{64, 80}, Data: make([]byte, 64*80)}
			return ts
		}, "model.layers.0.mlp.down_proj is incomplete"},
	}
	for _, c := range cases {
		err := write(c.mutate)
		if c.name == "shape" {
			// k_proj is square in this config: use a wrong width instead
			err = write(func(ts []*tensor.Host) []*tensor.Host {
				i := find(ts, "model.layers.0.self_attn.k_proj.weight")
				ts[i] = &tensor.Host{Name: ts[i].Name, DType: tensor.F32, Shape: []int{64, 32}, Data: make([]byte, 64*32*4)}
				return ts
			})
			c.want = `"model.layers.0.self_attn.k_proj.weight": shape [64 32], want [64 64]`
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want %q", c.name, err, c.want)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	cases := []struct{ json, want string }{
		{`{"hidden_size":64,"intermediate_size":1,"num_hidden_layers":1,"num_attention_heads":4,"num_key_value_heads":3,"vocab_size":10}`, "not a multiple"},
		{`{"hidden_size":0}`, "hidden_size = 0"},
		{`{"model_type":"llama","hidden_size":64,"intermediate_size":1,"num_hidden_layers":1,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":10}`, "model_type \"llama\""},
		{`{"hidden_size":64,"intermediate_size":1,"num_hidden_layers":1,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":10,"rope_scaling":{"type":"yarn"}}`, "rope_scaling"},
		{`{"hidden_size":64,"intermediate_size":1,"num_hidden_layers":1,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":10,"attention_bias":true}`, "attention_bias"},
		{`{"hidden_size":`, "config.json"},
	}
	for _, c := range cases {
		if _, err := ParseConfig([]byte(c.json)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want %q", c.json, err, c.want)
		}
	}
	c, err := ParseConfig([]byte(`{"hidden_size":2560,"intermediate_size":9728,"num_hidden_layers":36,"num_attention_heads":32,"num_key_value_heads":8,"head_dim":128,"vocab_size":151936,"rope_theta":5000000,"tie_word_embeddings":true,"eos_token_id":[151645,151643]}`))
	if err != nil || c.QDim() != 4096 || c.EOSTokenID != 151645 || c.RopeTheta != 5e6 {
		t.Fatalf("%+v %v", c, err)
	}
	if n := c.NumParams(); n < 4.0e9 || n > 4.1e9 {
		t.Fatalf("Qwen3-4B params = %d", n)
	}
}
