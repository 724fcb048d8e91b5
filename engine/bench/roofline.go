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
type Roofline struct {
	Cfg *qwen3.Config
	// GradBF16: the matrices' gradients are bf16 (devtrain's Options.Grad, the bench's
	// QWENGO_TRAIN_GRAD), so an AdamW step reads 2 bytes of gradient a parameter, not 4.
	GradBF16 bool
}

// gradBytes is the size of a matrix's gradient element.
func (r Roofline) gradBytes() float64 {
	if r.GradBF16 {
		return 2
	}
	return 4
}

// gradName names the matrices' gradient type in the bases.
func (r Roofline) gradName() string {
	if r.GradBF16 {
		return "bf16"
	}
	return "f32"
}

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
func (r Roofline) OptimizerBasis() string {
	return fmt.Sprintf("optimizer: %.2f B/param (bf16 master r+w, %s gradient, int8 m and v r+w with f32 absmax per 64) ÷ 4.3 TB/s",
		optimBytesPerParam-4+r.gradBytes(), r.gradName())
}

// Optimizer is the HBM bound on one AdamW step over params parameters, in milliseconds.
func (r Roofline) Optimizer(params int64) float64 {
	return float64(params) * (optimBytesPerParam - 4 + r.gradBytes()) / HBMBytesPerSec * 1e3
}

// optimStepBytes is what one in-place AdamW update of a [rows, cols] parameter must move per
// element with the moments in format, the master as devtrain keeps it (bf16 for matrices, f32
// for one-row norms) and a gradient of grad bytes an element (f32 for norms): the master read
// and written, the gradient read, the moments read and written with their float32 block scales. 4bit reads the gradient twice (the
// first pass finds the new v's row and column maxima; a one-row parameter needs no first pass)
// and its row and column maxima stay in cache. Formats: "int8", "4bit", "fp32".
func optimStepBytes(format string, rows, cols int, grad float64) float64 {
	master := 2.0
	if rows == 1 {
		master, grad = 4, 4
	}
	b := 2*master + grad // master r+w, the gradient
	switch format {
	case "int8":
		b += 2*2 + 2*2*4.0/64 // m and v codes r+w, two absmax per 64 r+w
	case "4bit":
		b += 4*0.5 + 2*4.0/128 // m and v nibbles r+w, m's absmax per 128 r+w
		if rows == 1 {
			b += 2 * 4.0 / 128 // v's absmax per 128 r+w
		} else {
			b += grad + 0.5 // first pass: the gradient and v's codes again
		}
	default:
		b += 2 * 2 * 4 // fp32 m and v r+w
	}
	return b
}

// optimStep returns the bytes one AdamW step over every parameter of the model moves with
// moments in format, and the parameter count.
func (r Roofline) optimStep(format string) (bytes float64, params int64) {
	for _, p := range paramShapes(r.Cfg) {
		rows, cols := 1, p.shape[0]
		if len(p.shape) == 2 {
			rows, cols = p.shape[0], p.shape[1]
		}
		bytes += float64(rows) * float64(cols) * optimStepBytes(format, rows, cols, r.gradBytes())
		params += int64(rows) * int64(cols)
	}
	return bytes, params
}

// OptimizerStep is the HBM bound, in milliseconds, on one standalone AdamW step over every
// parameter with moments in format ("int8" or "4bit"), as the optimizer-step figures time it.
func (r Roofline) OptimizerStep(format string) float64 {
	bytes, _ := r.optimStep(format)
	return bytes / HBMBytesPerSec * 1e3
}

// OptimizerStepBasis documents OptimizerStep for format.
func (r Roofline) OptimizerStepBasis(format string) string {
	bytes, n := r.optimStep(format)
	what := map[string]string{
		"int8": "bf16 master r+w, %s gradient, int8 m and v r+w with two f32 absmax per 64",
		"4bit": "bf16 master r+w, %s gradient read twice (the first pass finds the new v's row and column maxima), 4-bit m and v r+w, f32 absmax of m per 128",
	}[format]
	what = fmt.Sprintf(what, r.gradName())
	return fmt.Sprintf("optimizer step, %s states: %.2f B/param (%s; f32 norms) ÷ 4.3 TB/s", format, bytes/float64(n), what)
}
