package qwen3

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/format"
	"github.com/qwengo/qwengo/engine/nvfp4"
	"github.com/qwengo/qwengo/engine/tensor"
)

// SaveOptions controls Save.
type SaveOptions struct {
	// Format: "bf16" or "f32" (Hugging Face safetensors), or "nvfp4" (ModelOpt layout: linears
	// packed with weight_scale/weight_scale_2, embeddings, lm_head and norms in bf16).
	Format string
	// MaxShardBytes splits the weights into HF shards with an index when > 0.
	MaxShardBytes int64
}

// named is a parameter in checkpoint order.
type named struct {
	prefix string
	w      backend.Weight
	norm   backend.Tensor
}

func (m *Model) params() []named {
	out := []named{{prefix: "model.embed_tokens", w: m.Embed}}
	for i, l := range m.Layers {
		p := fmt.Sprintf("model.layers.%d.", i)
		out = append(out,
			named{prefix: p + "input_layernorm", norm: l.InputNorm},
			named{prefix: p + "self_attn.q_proj", w: l.Q},
			named{prefix: p + "self_attn.k_proj", w: l.K},
			named{prefix: p + "self_attn.v_proj", w: l.V},
			named{prefix: p + "self_attn.q_norm", norm: l.QNorm},
			named{prefix: p + "self_attn.k_norm", norm: l.KNorm},
			named{prefix: p + "self_attn.o_proj", w: l.O},
			named{prefix: p + "post_attention_layernorm", norm: l.PostNorm},
			named{prefix: p + "mlp.gate_proj", w: l.Gate},
			named{prefix: p + "mlp.up_proj", w: l.Up},
			named{prefix: p + "mlp.down_proj", w: l.Down},
		)
	}
	out = append(out, named{prefix: "model.norm", norm: m.Norm})
	if m.LMHead != nil && m.LMHead != m.Embed {
		out = append(out, named{prefix: "lm_head", w: m.LMHead})
	}
	return out
}

// denseHost returns w as a float32 [out, in] matrix.
func (m *Model) denseHost(w backend.Weight) ([]float32, error) {
	hw, err := m.B.DownloadWeight(w)
	if err != nil {
		return nil, err
	}
	if hw.NVFP4 != nil {
		return hw.NVFP4.Dequantize(), nil
	}
	return hw.Dense.Float32s(nil)
}

// Save writes the model as a Hugging Face checkpoint directory, each file atomically:
// config.json and model.safetensors (or shards with an index). Format "bf16" or "f32" writes
// every parameter dense in that type (NVFP4 weights dequantised). Format "nvfp4" writes the
// ModelOpt layout vLLM and TensorRT-LLM load: each linear as weight (U8 packed) + weight_scale
// (F8_E4M3) + weight_scale_2 (F32), NVFP4 weights exactly as held and dense ones quantised with
// nvfp4.QuantizeModelOpt; embeddings, lm_head and norms in bf16; config.json gains a
// quantization_config (quant_method modelopt, quant_algo NVFP4, group_size 16) and
// hf_quant_config.json is written beside it. A model whose lm_head is separate although its
// config ties it (a seed .dat) is written untied. The tensors are gathered on the host before
// writing (memory: one copy of the checkpoint).
func (m *Model) Save(dir string, opt SaveOptions) error {
	if m.Layers == nil {
		return fmt.Errorf("save: the model was freed")
	}
	var dt tensor.DType
	switch opt.Format {
	case "bf16", "nvfp4":
		dt = tensor.BF16
	case "f32":
		dt = tensor.F32
	default:
		return fmt.Errorf("save: unknown format %q (want bf16, f32 or nvfp4)", opt.Format)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var ts []*tensor.Host
	for _, p := range m.params() {
		if p.norm != nil {
			v, err := m.B.Download(p.norm, nil)
			if err != nil {
				return fmt.Errorf("save %s: %w", p.prefix, err)
			}
			t, err := tensor.FromFloat32s(p.prefix+".weight", dt, []int{p.norm.Cols()}, v)
			if err != nil {
				return err
			}
			ts = append(ts, t)
			continue
		}
		quant := opt.Format == "nvfp4" && p.prefix != "model.embed_tokens" && p.prefix != "lm_head"
		if quant {
			hw, err := m.B.DownloadWeight(p.w)
			if err != nil {
				return fmt.Errorf("save %s: %w", p.prefix, err)
			}
			q := hw.NVFP4
			if q == nil {
				v, err := m.denseHost(p.w)
				if err != nil {
					return err
				}
				if q, err = nvfp4.QuantizeModelOpt(v, p.w.Out(), p.w.In()); err != nil {
					return fmt.Errorf("save %s: %w", p.prefix, err)
				}
			}
			g, _ := tensor.FromFloat32s(p.prefix+".weight_scale_2", tensor.F32, []int{}, []float32{q.Global})
			ts = append(ts,
				&tensor.Host{Name: p.prefix + ".weight", DType: tensor.U8, Shape: []int{q.Rows, q.Cols / 2}, Data: q.Packed},
				&tensor.Host{Name: p.prefix + ".weight_scale", DType: tensor.F8E4M3, Shape: []int{q.Rows, q.Cols / nvfp4.BlockSize}, Data: q.Scales},
				g)
			continue
		}
		v, err := m.denseHost(p.w)
		if err != nil {
			return err
		}
		t, err := tensor.FromFloat32s(p.prefix+".weight", dt, []int{p.w.Out(), p.w.In()}, v)
		if err != nil {
			return err
		}
		ts = append(ts, t)
	}
	cfg := m.configJSON(opt.Format)
	raw, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	meta := map[string]string{"format": "pt", "producer": "qwengo"}
	if opt.MaxShardBytes > 0 {
		err = format.WriteSharded(dir, ts, opt.MaxShardBytes, meta)
	} else {
		err = format.WriteSafetensors(filepath.Join(dir, "model.safetensors"), ts, meta)
	}
	if err != nil {
		return err
	}
	if opt.Format == "nvfp4" {
		hq := map[string]any{
			"producer":     map[string]string{"name": "modelopt", "version": "qwengo"},
			"quantization": map[string]any{"quant_algo": "NVFP4", "kv_cache_quant_algo": nil, "group_size": nvfp4.BlockSize, "exclude_modules": []string{"lm_head"}},
		}
		b, _ := json.MarshalIndent(hq, "", "  ")
		if err := format.WriteFileAtomic(filepath.Join(dir, "hf_quant_config.json"), append(b, '\n')); err != nil {
			return err
		}
	}
	return format.WriteFileAtomic(filepath.Join(dir, "config.json"), append(raw, '\n'))
}

func (m *Model) configJSON(fmtName string) map[string]any {
	return m.Config.HFJSON(fmtName, m.LMHead == m.Embed)
}

// HFJSON returns the config.json fields of a checkpoint of this config saved in format fmtName
// ("f32", "bf16" or "nvfp4", which adds the ModelOpt quantization_config); tied says whether
// lm_head is the embedding. Every writer of checkpoints (Save, the trainer's exports) uses it.
func (c *Config) HFJSON(fmtName string, tied bool) map[string]any {
	dtype := "bfloat16"
	if fmtName == "f32" {
		dtype = "float32"
	}
	var eos any
	switch len(c.EOSTokenIDs) {
	case 0:
	case 1:
		eos = c.EOSTokenIDs[0]
	default:
		eos = c.EOSTokenIDs
	}
	out := map[string]any{
		"architectures":           []string{"Qwen3ForCausalLM"},
		"model_type":              "qwen3",
		"hidden_size":             c.HiddenSize,
		"intermediate_size":       c.IntermediateSize,
		"num_hidden_layers":       c.NumLayers,
		"num_attention_heads":     c.NumHeads,
		"num_key_value_heads":     c.NumKVHeads,
		"head_dim":                c.HeadDim,
		"vocab_size":              c.VocabSize,
		"rms_norm_eps":            c.RMSNormEps,
		"rope_theta":              c.RopeTheta,
		"rope_scaling":            nil,
		"tie_word_embeddings":     tied,
		"max_position_embeddings": c.MaxPositions,
		"bos_token_id":            nullable(c.BOSTokenID),
		"eos_token_id":            eos,
		"hidden_act":              "silu",
		"attention_bias":          false,
		"attention_dropout":       0.0,
		"use_sliding_window":      false,
		"sliding_window":          nil,
		"torch_dtype":             dtype,
		"use_cache":               true,
	}
	if c.MaxPositions == 0 {
		out["max_position_embeddings"] = nil // unknown
	}
	if fmtName == "nvfp4" {
		out["quantization_config"] = QuantConfig{QuantMethod: "modelopt", QuantAlgo: "NVFP4", GroupSize: nvfp4.BlockSize, ExcludeModules: []string{"lm_head"}}
	}
	return out
}

// nullable writes a negative id as null.
func nullable(id int) any {
	if id < 0 {
		return nil
	}
	return id
}
