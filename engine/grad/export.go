package grad

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/qwengo/qwengo/engine/format"
	"github.com/qwengo/qwengo/engine/nvfp4"
	"github.com/qwengo/qwengo/engine/tensor"
)

// isLinear reports whether parameter p is a projection that NVFP4 checkpoints quantise.
func isLinear(p *Param) bool {
	return strings.HasSuffix(p.Name, "_proj.weight")
}

// configJSON is the Hugging Face config of the model (quantization_config for NVFP4).
func (m *Model) configJSON(dtype string, nvfp4Export bool) ([]byte, error) {
	fmtName := map[string]string{"float32": "f32", "bfloat16": "bf16"}[dtype]
	if nvfp4Export {
		fmtName = "nvfp4"
	}
	b, err := json.MarshalIndent(m.Config.HFJSON(fmtName, m.lm == m.embed), "", "  ")
	return append(b, '\n'), err
}

// SaveSafetensors writes dir/config.json and dir/model.safetensors with every parameter
// (embeddings and norms included) in bf16 or f32.
func (m *Model) SaveSafetensors(dir string, dt tensor.DType) error {
	if dt != tensor.BF16 && dt != tensor.F32 {
		return fmt.Errorf("export: dtype %v (want BF16 or F32)", dt)
	}
	ts, err := m.Tensors(dt)
	if err != nil {
		return err
	}
	return m.writeDir(dir, ts, map[tensor.DType]string{tensor.BF16: "bfloat16", tensor.F32: "float32"}[dt], false)
}

// SaveNVFP4 writes an NVFP4 checkpoint in the ModelOpt layout (vLLM/TensorRT-LLM load it):
// projections as packed weight + weight_scale (E4M3) + weight_scale_2 (FP32); embeddings,
// lm_head and norms in bf16.
func (m *Model) SaveNVFP4(dir string) error { return m.SaveNVFP4With(dir, false) }

// SaveNVFP4With is SaveNVFP4 that, with quantizeEmbedding, also stores the embedding (and an
// untied lm_head) as NVFP4 — for small-vocabulary-dominated models such as the embedded
// default, where the bf16 embedding would be most of the file. qwengo loads either layout;
// ModelOpt itself leaves embeddings unquantised, so other engines may not.
func (m *Model) SaveNVFP4With(dir string, quantizeEmbedding bool) error {
	var ts []*tensor.Host
	for i, p := range m.Params {
		quant := isLinear(p) || (quantizeEmbedding && (i == m.embed || i == m.lm))
		if !quant {
			shape := []int{p.Rows, p.Cols}
			if p.Rows == 1 {
				shape = []int{p.Cols}
			}
			t, err := tensor.FromFloat32s(p.Name, tensor.BF16, shape, p.W)
			if err != nil {
				return err
			}
			ts = append(ts, t)
			continue
		}
		q, err := nvfp4.QuantizeModelOpt(p.W, p.Rows, p.Cols)
		if err != nil {
			return fmt.Errorf("export %s: %w", p.Name, err)
		}
		base := strings.TrimSuffix(p.Name, ".weight")
		g, _ := tensor.FromFloat32s(base+".weight_scale_2", tensor.F32, []int{}, []float32{q.Global})
		ts = append(ts,
			&tensor.Host{Name: p.Name, DType: tensor.U8, Shape: []int{q.Rows, q.Cols / 2}, Data: q.Packed},
			&tensor.Host{Name: base + ".weight_scale", DType: tensor.F8E4M3, Shape: []int{q.Rows, q.Cols / nvfp4.BlockSize}, Data: q.Scales},
			g)
	}
	if err := m.writeDir(dir, ts, "bfloat16", true); err != nil {
		return err
	}
	exclude := []string{"lm_head"}
	if quantizeEmbedding {
		exclude = []string{}
	}
	hq, _ := json.MarshalIndent(map[string]any{
		"producer":     map[string]string{"name": "modelopt", "version": "qwengo"},
		"quantization": map[string]any{"quant_algo": "NVFP4", "kv_cache_quant_algo": nil, "group_size": nvfp4.BlockSize, "exclude_modules": exclude},
	}, "", "  ")
	return format.WriteFileAtomic(filepath.Join(dir, "hf_quant_config.json"), append(hq, '\n'))
}

func (m *Model) writeDir(dir string, ts []*tensor.Host, dtype string, nv bool) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := format.WriteSafetensors(filepath.Join(dir, "model.safetensors"), ts, map[string]string{"format": "pt", "producer": "qwengo"}); err != nil {
		return err
	}
	cfg, err := m.configJSON(dtype, nv)
	if err != nil {
		return err
	}
	return format.WriteFileAtomic(filepath.Join(dir, "config.json"), cfg)
}

// SaveDat writes the seed project's `.dat`. With a template (the .dat the model came from) the
// entries, their order, keys and element types are kept exactly and only payloads change —
// every trained tensor, embeddings and norms included (the seed's exporter dropped those).
// Without one it writes the seed's layout: NVFP4 pairs (seed variant) for projections and
// lm_head, float16 embeddings and norms.
func (m *Model) SaveDat(path string, template *format.Dat) error {
	var entries []format.DatEntry
	if template != nil {
		entries = append(entries, template.Entries...)
	} else {
		for _, p := range m.Params {
			if isLinear(p) {
				entries = append(entries,
					format.DatEntry{Key: p.Name + ".qdata", ElemType: 0, Shape: []int{p.Rows, p.Cols / 2}},
					format.DatEntry{Key: p.Name + ".scale", ElemType: 101, Shape: []int{p.Rows, p.Cols / nvfp4.BlockSize}})
				continue
			}
			shape := []int{p.Rows, p.Cols}
			if p.Rows == 1 {
				shape = []int{p.Cols}
			}
			entries = append(entries, format.DatEntry{Key: p.Name, ElemType: 5, Shape: shape})
		}
		if m.lm == m.embed { // the seed stores a quantised lm_head even when tied
			p := m.Params[m.embed]
			entries = append(entries,
				format.DatEntry{Key: "lm_head.qdata", ElemType: 0, Shape: []int{p.Rows, p.Cols / 2}},
				format.DatEntry{Key: "lm_head.scale", ElemType: 101, Shape: []int{p.Rows, p.Cols / nvfp4.BlockSize}})
		}
	}
	quant := map[string]*nvfp4.Matrix{}
	param := func(base string) (*Param, error) {
		name := base + ".weight"
		if base == "lm_head" && m.lm == m.embed {
			name = "model.embed_tokens.weight"
		}
		i, ok := m.byName[name]
		if !ok {
			return nil, fmt.Errorf("export %s: the model has no parameter %s", path, name)
		}
		return m.Params[i], nil
	}
	payload := func(i int) ([]byte, error) {
		e := entries[i]
		key := e.Key
		for _, suf := range []string{".weight.qdata", ".qdata", ".weight.scale", ".scale"} {
			if !strings.HasSuffix(key, suf) {
				continue
			}
			base := strings.TrimSuffix(key, suf)
			q := quant[base]
			if q == nil {
				p, err := param(base)
				if err != nil {
					return nil, err
				}
				if q, err = nvfp4.QuantizeSeed(p.W, p.Rows, p.Cols); err != nil {
					return nil, fmt.Errorf("export %s: %w", key, err)
				}
				quant[base] = q
			}
			if strings.HasSuffix(suf, "qdata") {
				return q.Packed, nil
			}
			return q.Scales, nil
		}
		p, err := param(strings.TrimSuffix(key, ".weight"))
		if err != nil {
			return nil, err
		}
		dt, ok := datDType(e.ElemType)
		if !ok {
			return nil, fmt.Errorf("export %s: entry %q has elemType %d, not a float type", path, key, e.ElemType)
		}
		t, err := tensor.FromFloat32s(key, dt, e.Shape, p.W)
		if err != nil {
			return nil, fmt.Errorf("export %s: %w", path, err)
		}
		return t.Data, nil
	}
	return format.WriteDat(path, entries, payload)
}

func datDType(code int) (tensor.DType, bool) {
	switch code {
	case 5:
		return tensor.F16, true
	case 6:
		return tensor.F32, true
	case 15:
		return tensor.BF16, true
	}
	return 0, false
}
