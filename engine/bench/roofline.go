package bench

import (
	"fmt"

	"github.com/qwengo/qwengo/engine/qwen3"
)

// H200 figures of shared/reference/anchors.md.
const (
	HBMBytesPerSec   = 4.3e12 // measured device-copy rate
	MatMulFLOPPerSec = 790e12 // measured cuBLAS bf16 matmul rate
)

// Bytes per parameter of the formats the rooflines assume.
const (
	nvfp4BytesPerParam = 0.5625 // 4-bit code + one E4M3 scale per 16
	bf16Bytes          = 2
	// optimBytesPerParam is what an in-place AdamW step with bf16 masters and int8 moments
	// must move: master read+write 4, f32 gradient read 4, m and v read+write 4, their f32
	// absmax per block of 64 read+write 0.25.
	optimBytesPerParam = 12.25
)

// Roofline computes the hardware bounds of the benchmark's figures for a model config (the
// layers measured, so a run with fewer layers keeps comparable fractions).
type Roofline struct{ Cfg *qwen3.Config }

// linearParams is the number of parameters in the layers' projections.
func (r Roofline) linearParams() float64 {
	c := r.Cfg
	h, q, kv, in := float64(c.HiddenSize), float64(c.QDim()), float64(c.KVDim()), float64(c.IntermediateSize)
	return float64(c.NumLayers) * (2*h*q + 2*h*kv + 3*h*in)
}

// headParams is the lm_head's size (vocabulary × hidden; the tied embedding).
func (r Roofline) headParams() float64 { return float64(r.Cfg.VocabSize) * float64(r.Cfg.HiddenSize) }

// DecodeBasis documents Decode.
const DecodeBasis = "decode: 4.3 TB/s ÷ bytes read per step (NVFP4 linears at 0.5625 B/param, bf16 lm_head, bf16 K and V of every cached position of each sequence)"

// Decode is the HBM bound on decode tokens/s (all sequences together) for batch sequences at
// context ctx.
func (r Roofline) Decode(batch, ctx int) float64 {
	c := r.Cfg
	kv := float64(2*c.NumLayers*c.KVDim()*ctx) * bf16Bytes
	bytes := r.linearParams()*nvfp4BytesPerParam + r.headParams()*bf16Bytes + float64(batch)*kv
	return float64(batch) * HBMBytesPerSec / bytes
}

// PrefillBasis documents Prefill.
const PrefillBasis = "prefill: 790 TFLOP/s ÷ FLOPs per token (2 per linear parameter, causal attention 2·q_dim·(S+1) per layer, the lm_head once per prompt)"

// Prefill is the compute bound on prefill tokens/s for a prompt of s tokens.
func (r Roofline) Prefill(s int) float64 {
	c := r.Cfg
	flops := 2*r.linearParams() + 2*float64(c.NumLayers*c.QDim())*float64(s+1) + 2*r.headParams()/float64(s)
	return MatMulFLOPPerSec / flops
}

// TrainBasis documents Train.
const TrainBasis = "train: 790 TFLOP/s ÷ model FLOPs per token (6 per linear and lm_head parameter, attention 6·q_dim·(S+1) per layer; recompute not counted: MFU)"

// Train is the compute bound on training tokens/s at sequence length s.
func (r Roofline) Train(s int) float64 {
	c := r.Cfg
	flops := 6*(r.linearParams()+r.headParams()) + 6*float64(c.NumLayers*c.QDim())*float64(s+1)
	return MatMulFLOPPerSec / flops
}

// OptimizerBasis documents Optimizer.
var OptimizerBasis = fmt.Sprintf("optimizer: %.2f B/param (bf16 master r+w, f32 gradient, int8 m and v r+w with f32 absmax per 64) ÷ 4.3 TB/s", optimBytesPerParam)

// Optimizer is the HBM bound on one AdamW step over params parameters, in milliseconds.
func (r Roofline) Optimizer(params int64) float64 {
	return float64(params) * optimBytesPerParam / HBMBytesPerSec * 1e3
}
