// Package qwen3 is the Qwen3 dense model: config, weights, forward pass and KV cache, written
// once against engine/backend (shared/reference/qwen3.md has the wiring).
//
// The forward pass reads top to bottom as the block it implements:
//
//	a = RMSNorm(x); q,k,v = a·Wqᵀ, a·Wkᵀ, a·Wvᵀ; q,k = RMSNorm per head; RoPE(q,k)
//	cache ← k,v; ctx = causal GQA attention over the cache; x += ctx·Woᵀ
//	m = RMSNorm(x); x += (silu(m·Wgᵀ) * (m·Wuᵀ))·Wdᵀ
//	logits = RMSNorm(x)·lm_headᵀ
//
// Weights load from Hugging Face safetensors (f32/bf16/f16), NVFP4 safetensors in the ModelOpt
// layout and the seed project's `.dat`, in one streaming pass.
package qwen3

import (
	"encoding/json"
	"fmt"
	"os"
)

// Config is the subset of a Hugging Face Qwen3 config.json the model needs.
type Config struct {
	HiddenSize         int      `json:"hidden_size"`
	IntermediateSize   int      `json:"intermediate_size"`
	NumLayers          int      `json:"num_hidden_layers"`
	NumHeads           int      `json:"num_attention_heads"`
	NumKVHeads         int      `json:"num_key_value_heads"`
	HeadDim            int      `json:"head_dim"`
	VocabSize          int      `json:"vocab_size"`
	RMSNormEps         float64  `json:"rms_norm_eps"`
	RopeTheta          float64  `json:"rope_theta"`
	TieEmbeddings      bool     `json:"tie_word_embeddings"`
	MaxPositions       int      `json:"max_position_embeddings"`
	BOSTokenID         int      `json:"bos_token_id"`
	EOSTokenID         int      `json:"eos_token_id"`
	TorchDType         string   `json:"torch_dtype,omitempty"`
	ModelType          string   `json:"model_type"`
	Architectures      []string `json:"architectures,omitempty"`
	AttentionBias      bool     `json:"attention_bias"`
	HiddenAct          string   `json:"hidden_act"`
	UseSlidingWindow   bool     `json:"use_sliding_window"`
	RopeScaling        any      `json:"rope_scaling,omitempty"`
	QuantizationConfig any      `json:"quantization_config,omitempty"`
}

// rawConfig also accepts the transformers 5 spellings (rope_parameters, dtype) and eos lists.
type rawConfig struct {
	Config
	Dtype          string `json:"dtype"`
	RopeParameters *struct {
		RopeTheta float64 `json:"rope_theta"`
		RopeType  string  `json:"rope_type"`
	} `json:"rope_parameters"`
}

// ParseConfig parses and validates a config.json body.
func ParseConfig(data []byte) (*Config, error) {
	var raw rawConfig
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("config.json: %v", err)
	}
	c := raw.Config
	if c.TorchDType == "" {
		c.TorchDType = raw.Dtype
	}
	if c.RopeTheta == 0 && raw.RopeParameters != nil {
		c.RopeTheta = raw.RopeParameters.RopeTheta
		if t := raw.RopeParameters.RopeType; t != "" && t != "default" {
			return nil, fmt.Errorf("config.json: rope_parameters.rope_type %q is not supported (only default RoPE)", t)
		}
	}
	if c.HeadDim == 0 && c.NumHeads > 0 {
		c.HeadDim = c.HiddenSize / c.NumHeads
	}
	if c.RMSNormEps == 0 {
		c.RMSNormEps = 1e-6
	}
	if c.RopeTheta == 0 {
		c.RopeTheta = 1e6
	}
	return &c, c.Validate()
}

// UnmarshalJSON accepts eos_token_id as a number or a list (the first is kept).
func (r *rawConfig) UnmarshalJSON(b []byte) error {
	type plain rawConfig
	var p struct {
		plain
		EOS any `json:"eos_token_id"`
	}
	if err := json.Unmarshal(b, &p); err != nil {
		return err
	}
	*r = rawConfig(p.plain)
	switch v := p.EOS.(type) {
	case float64:
		r.EOSTokenID = int(v)
	case []any:
		if len(v) > 0 {
			if f, ok := v[0].(float64); ok {
				r.EOSTokenID = int(f)
			}
		}
	}
	return nil
}

// LoadConfig reads config.json.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	c, err := ParseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Validate checks that the config describes a supported Qwen3 dense model.
func (c *Config) Validate() error {
	pos := []struct {
		name string
		v    int
	}{{"hidden_size", c.HiddenSize}, {"intermediate_size", c.IntermediateSize}, {"num_hidden_layers", c.NumLayers},
		{"num_attention_heads", c.NumHeads}, {"num_key_value_heads", c.NumKVHeads}, {"head_dim", c.HeadDim}, {"vocab_size", c.VocabSize}}
	for _, p := range pos {
		if p.v <= 0 {
			return fmt.Errorf("config: %s = %d, must be positive", p.name, p.v)
		}
	}
	switch {
	case c.ModelType != "" && c.ModelType != "qwen3":
		return fmt.Errorf("config: model_type %q is not supported (want qwen3)", c.ModelType)
	case c.NumHeads%c.NumKVHeads != 0:
		return fmt.Errorf("config: num_attention_heads %d is not a multiple of num_key_value_heads %d", c.NumHeads, c.NumKVHeads)
	case c.HeadDim%2 != 0:
		return fmt.Errorf("config: head_dim %d must be even for RoPE", c.HeadDim)
	case c.AttentionBias:
		return fmt.Errorf("config: attention_bias = true is not supported by Qwen3 dense")
	case c.UseSlidingWindow:
		return fmt.Errorf("config: use_sliding_window = true is not supported")
	case c.RopeScaling != nil:
		return fmt.Errorf("config: rope_scaling %v is not supported (only default RoPE)", c.RopeScaling)
	case c.HiddenAct != "" && c.HiddenAct != "silu":
		return fmt.Errorf("config: hidden_act %q is not supported (want silu)", c.HiddenAct)
	case c.RMSNormEps <= 0 || c.RopeTheta <= 0:
		return fmt.Errorf("config: rms_norm_eps %v and rope_theta %v must be positive", c.RMSNormEps, c.RopeTheta)
	}
	return nil
}

// QDim is the query projection width (heads × head_dim; differs from hidden_size in Qwen3-4B).
func (c *Config) QDim() int { return c.NumHeads * c.HeadDim }

// KVDim is the key/value projection width.
func (c *Config) KVDim() int { return c.NumKVHeads * c.HeadDim }

// KVBytesPerToken is the KV cache size of one token in float32 on the CPU.
func (c *Config) KVBytesPerToken() int64 { return int64(2 * c.NumLayers * c.KVDim() * 4) }

// NumParams counts parameters (lm_head once when tied).
func (c *Config) NumParams() int64 {
	h, i, q, kv := int64(c.HiddenSize), int64(c.IntermediateSize), int64(c.QDim()), int64(c.KVDim())
	layer := h*q + 2*h*kv + q*h + 3*h*i + 2*h + 2*int64(c.HeadDim)
	n := int64(c.NumLayers)*layer + int64(c.VocabSize)*h + h
	if !c.TieEmbeddings {
		n += int64(c.VocabSize) * h
	}
	return n
}
