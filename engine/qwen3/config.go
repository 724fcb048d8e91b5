// Package qwen3 is the Qwen3 dense model: config, weights, forward pass and KV cache, written
// once against engine/backend (shared/reference/qwen3.md has the wiring), so the same code runs
// on the CPU reference backend and on a GPU backend.
//
// The forward pass (forward.go) reads top to bottom as the block it implements:
//
//	a = RMSNorm(x); q,k,v = a·Wqᵀ, a·Wkᵀ, a·Wvᵀ; q,k = RMSNorm per head, RoPE
//	cache ← k,v; ctx = causal GQA attention over the cache; x += ctx·Woᵀ
//	m = RMSNorm(x); x += (silu(m·Wgᵀ) * (m·Wuᵀ))·Wdᵀ
//	logits = RMSNorm(x)·lm_headᵀ
//
// Every op writes its own tensor of a per-block Activations set, so the training forward (a
// later addition) can keep one set per layer and run the backward ops in reverse order.
//
// Weights load in one streaming pass (format.Stream) from Hugging Face safetensors
// (f32/bf16/f16), NVFP4 safetensors in the ModelOpt layout, and the seed project's `.dat`; they
// are kept as stored or converted per LoadOptions.Precision. Save writes HF safetensors
// (bf16/f32) or ModelOpt NVFP4.
package qwen3

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
)

// Config is what the model needs from a Hugging Face Qwen3 config.json. Sizes are never
// assumed: everything comes from the file.
type Config struct {
	HiddenSize       int     // hidden_size
	IntermediateSize int     // intermediate_size
	NumLayers        int     // num_hidden_layers
	NumHeads         int     // num_attention_heads
	NumKVHeads       int     // num_key_value_heads (defaults to num_attention_heads, as in HF)
	HeadDim          int     // head_dim (defaults to hidden_size / num_attention_heads)
	VocabSize        int     // vocab_size
	RMSNormEps       float64 // rms_norm_eps (defaults to 1e-6, as in HF)
	RopeTheta        float64 // rope_theta or rope_parameters.rope_theta (required)
	TieEmbeddings    bool    // tie_word_embeddings
	MaxPositions     int     // max_position_embeddings (0: unknown, unchecked)
	BOSTokenID       int     // bos_token_id (-1 when absent)
	EOSTokenIDs      []int   // eos_token_id (a number or a list)
	TorchDType       string  // torch_dtype (or transformers 5's dtype)
	// Quantization is quantization_config; nil for a dense checkpoint.
	Quantization *QuantConfig
}

// QuantConfig is the quantization_config of an NVFP4 checkpoint in the ModelOpt layout.
type QuantConfig struct {
	QuantMethod    string   `json:"quant_method"`
	QuantAlgo      string   `json:"quant_algo"`
	GroupSize      int      `json:"group_size,omitempty"`
	ExcludeModules []string `json:"exclude_modules,omitempty"`
}

// rawConfig mirrors config.json, with pointers where absence matters.
type rawConfig struct {
	ModelType        string   `json:"model_type"`
	HiddenSize       int      `json:"hidden_size"`
	IntermediateSize int      `json:"intermediate_size"`
	NumLayers        int      `json:"num_hidden_layers"`
	NumHeads         int      `json:"num_attention_heads"`
	NumKVHeads       *int     `json:"num_key_value_heads"`
	HeadDim          *int     `json:"head_dim"`
	VocabSize        int      `json:"vocab_size"`
	RMSNormEps       *float64 `json:"rms_norm_eps"`
	RopeTheta        *float64 `json:"rope_theta"`
	RopeScaling      any      `json:"rope_scaling"`
	RopeParameters   *struct {
		RopeTheta *float64 `json:"rope_theta"`
		RopeType  string   `json:"rope_type"`
		Factor    any      `json:"factor"`
	} `json:"rope_parameters"`
	TieEmbeddings    bool         `json:"tie_word_embeddings"`
	MaxPositions     int          `json:"max_position_embeddings"`
	BOS              any          `json:"bos_token_id"`
	EOS              any          `json:"eos_token_id"`
	TorchDType       string       `json:"torch_dtype"`
	DType            string       `json:"dtype"`
	AttentionBias    bool         `json:"attention_bias"`
	HiddenAct        string       `json:"hidden_act"`
	UseSlidingWindow bool         `json:"use_sliding_window"`
	LayerTypes       []string     `json:"layer_types"`
	Quantization     *QuantConfig `json:"quantization_config"`
}

// tokenIDs reads a token id given as a number, a list of numbers or null.
func tokenIDs(field string, v any) ([]int, error) {
	var out []int
	add := func(x any) error {
		f, ok := x.(float64)
		if !ok || f < 0 || f != float64(int(f)) {
			return fmt.Errorf("config: %s: %v is not a token id", field, x)
		}
		out = append(out, int(f))
		return nil
	}
	switch x := v.(type) {
	case nil:
	case []any:
		for _, e := range x {
			if err := add(e); err != nil {
				return nil, err
			}
		}
	default:
		if err := add(x); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// defaultRope reports whether a rope_scaling value only restates default RoPE (as some
// transformers versions write it: {"rope_type": "default", "rope_theta": …}).
func defaultRope(v any) bool {
	m, ok := v.(map[string]any)
	if !ok {
		return false
	}
	for k, x := range m {
		switch k {
		case "rope_type", "type":
			if x != "default" {
				return false
			}
		case "rope_theta":
		default:
			return false
		}
	}
	return true
}

// ParseConfig parses and validates a config.json body.
func ParseConfig(data []byte) (*Config, error) {
	var r rawConfig
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("config: %v", err)
	}
	if r.ModelType != "" && r.ModelType != "qwen3" {
		return nil, fmt.Errorf("config: model_type %q is not supported (want qwen3)", r.ModelType)
	}
	c := &Config{
		HiddenSize: r.HiddenSize, IntermediateSize: r.IntermediateSize, NumLayers: r.NumLayers,
		NumHeads: r.NumHeads, VocabSize: r.VocabSize, TieEmbeddings: r.TieEmbeddings,
		MaxPositions: r.MaxPositions, TorchDType: r.TorchDType, RMSNormEps: 1e-6, BOSTokenID: -1,
		Quantization: r.Quantization,
	}
	if c.TorchDType == "" {
		c.TorchDType = r.DType
	}
	c.NumKVHeads = c.NumHeads
	if r.NumKVHeads != nil {
		c.NumKVHeads = *r.NumKVHeads
	}
	if r.HeadDim != nil {
		c.HeadDim = *r.HeadDim
	} else if c.NumHeads > 0 {
		if c.HiddenSize%c.NumHeads != 0 {
			return nil, fmt.Errorf("config: no head_dim and hidden_size %d is not a multiple of num_attention_heads %d", c.HiddenSize, c.NumHeads)
		}
		c.HeadDim = c.HiddenSize / c.NumHeads
	}
	if r.RMSNormEps != nil {
		c.RMSNormEps = *r.RMSNormEps
	}
	switch {
	case r.RopeTheta != nil:
		c.RopeTheta = *r.RopeTheta
	case r.RopeParameters != nil && r.RopeParameters.RopeTheta != nil:
		c.RopeTheta = *r.RopeParameters.RopeTheta
	default:
		return nil, fmt.Errorf("config: rope_theta is missing (neither rope_theta nor rope_parameters.rope_theta is set)")
	}
	if r.RopeScaling != nil && !defaultRope(r.RopeScaling) {
		return nil, fmt.Errorf("config: rope_scaling %v is unsupported (only default RoPE)", r.RopeScaling)
	}
	if p := r.RopeParameters; p != nil && ((p.RopeType != "" && p.RopeType != "default") || p.Factor != nil) {
		return nil, fmt.Errorf("config: rope_parameters rope_type %q is unsupported (only default RoPE)", p.RopeType)
	}
	if r.AttentionBias {
		return nil, fmt.Errorf("config: attention_bias = true is unsupported (Qwen3 dense has no attention bias)")
	}
	if r.UseSlidingWindow {
		return nil, fmt.Errorf("config: use_sliding_window = true is unsupported")
	}
	for i, t := range r.LayerTypes {
		if t != "full_attention" {
			return nil, fmt.Errorf("config: layer_types[%d] = %q is unsupported (only full_attention)", i, t)
		}
	}
	if r.HiddenAct != "" && r.HiddenAct != "silu" {
		return nil, fmt.Errorf("config: hidden_act %q is unsupported (want silu)", r.HiddenAct)
	}
	var err error
	if c.EOSTokenIDs, err = tokenIDs("eos_token_id", r.EOS); err != nil {
		return nil, err
	}
	bos, err := tokenIDs("bos_token_id", r.BOS)
	if err != nil {
		return nil, err
	}
	if len(bos) > 0 {
		c.BOSTokenID = bos[0]
	}
	return c, c.Validate()
}

// LoadConfig reads and validates config.json.
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
	for _, p := range []struct {
		name string
		v    int
	}{{"hidden_size", c.HiddenSize}, {"intermediate_size", c.IntermediateSize}, {"num_hidden_layers", c.NumLayers},
		{"num_attention_heads", c.NumHeads}, {"num_key_value_heads", c.NumKVHeads}, {"head_dim", c.HeadDim}, {"vocab_size", c.VocabSize}} {
		if p.v <= 0 {
			return fmt.Errorf("config: %s = %d, must be positive", p.name, p.v)
		}
	}
	switch {
	case c.NumHeads%c.NumKVHeads != 0:
		return fmt.Errorf("config: num_attention_heads %d is not a multiple of num_key_value_heads %d", c.NumHeads, c.NumKVHeads)
	case c.HeadDim%2 != 0:
		return fmt.Errorf("config: head_dim %d must be even for RoPE", c.HeadDim)
	case !(c.RMSNormEps > 0):
		return fmt.Errorf("config: rms_norm_eps %v must be positive", c.RMSNormEps)
	case !(c.RopeTheta > 1):
		return fmt.Errorf("config: rope_theta %v must be greater than 1", c.RopeTheta)
	case c.MaxPositions < 0:
		return fmt.Errorf("config: max_position_embeddings %d is negative", c.MaxPositions)
	case c.BOSTokenID >= c.VocabSize:
		return fmt.Errorf("config: bos_token_id %d is outside the vocabulary of %d", c.BOSTokenID, c.VocabSize)
	}
	for _, id := range c.EOSTokenIDs {
		if id >= c.VocabSize {
			return fmt.Errorf("config: eos_token_id %d is outside the vocabulary of %d", id, c.VocabSize)
		}
	}
	if q := c.Quantization; q != nil {
		if !strings.EqualFold(q.QuantMethod, "modelopt") || !strings.EqualFold(q.QuantAlgo, "NVFP4") {
			return fmt.Errorf("config: quantization_config quant_method %q, quant_algo %q is unsupported (want modelopt NVFP4)", q.QuantMethod, q.QuantAlgo)
		}
		if q.GroupSize != 0 && q.GroupSize != 16 {
			return fmt.Errorf("config: quantization_config group_size %d is unsupported (NVFP4 uses 16)", q.GroupSize)
		}
	}
	return nil
}

// QDim is the query projection width, heads × head_dim (4096 ≠ hidden 2560 in Qwen3-4B).
func (c *Config) QDim() int { return c.NumHeads * c.HeadDim }

// KVDim is the key (and value) projection width, kv heads × head_dim.
func (c *Config) KVDim() int { return c.NumKVHeads * c.HeadDim }

// NumParams counts parameters, lm_head once when tied (Qwen3-4B: 4.02e9).
func (c *Config) NumParams() int64 {
	h, i, q, kv := int64(c.HiddenSize), int64(c.IntermediateSize), int64(c.QDim()), int64(c.KVDim())
	layer := h*q + 2*h*kv + q*h + 3*h*i + 2*h + 2*int64(c.HeadDim)
	n := int64(c.NumLayers)*layer + int64(c.VocabSize)*h + h
	if !c.TieEmbeddings {
		n += int64(c.VocabSize) * h
	}
	return n
}
