// Package backend defines the operations a Qwen3 forward (and, later, backward) pass is made
// of, so the model is written once and runs on the pure-Go CPU reference (engine/cpu) or on a
// GPU backend.
//
// # Tensors and memory
//
// Tensors are opaque, two-dimensional [rows, cols] handles owned by one backend; their element
// type is the backend's compute type (float32 on the CPU; a GPU backend may choose bf16 for
// activations). Every allocation names a Category, so a backend reports the bytes in use per
// category and the peak (MemStats), and a budget can turn an allocation into an *OverBudget
// error instead of a crash. Host data moves only through Upload/Download.
//
// Weights are uploaded once as Weight values: dense (f32 or bf16) or NVFP4 (packed E2M1 codes,
// E4M3 block scales, an FP32 tensor scale). MatMul decodes a weight tile by tile inside the
// product: the model is never dequantised as a whole.
//
// # Ops, forward and (later) backward
//
// The ops are those of a Qwen3 decoder block, in block order: Embedding, RMSNorm (whole rows or
// per head), MatMul, RoPE, Attention (GQA over a KV cache, bottom-right causal mask), SwiGLU,
// Add, CopyRows. Each op writes a separate output tensor (out may alias an input only where the
// op says so), so a training forward can keep every op's output per layer for the backward.
//
// Training adds, llm.c style, one backward twin beside each forward op, with the same argument
// conventions, e.g.
//
//	MatMulBackward(dx, dw, dout, x Tensor, w Weight)      // dx = dout·W, dw += doutᵀ·x
//	RMSNormBackward(dx, dw, dout, x, w Tensor, eps)       // per row or per head, as RMSNorm
//	RoPEBackward(dx, dout, headDim, pos0, theta)          // the inverse rotation
//	AttentionBackward(dq, dk, dv, dout, q, k, v, ...)     // recomputes the softmax
//	SwiGLUBackward(dgate, dup, dout, gate, up Tensor)
//	EmbeddingBackward(dtable, dout Tensor, ids []int)
//
// plus the loss (cross-entropy over logit chunks) and the optimizer step; gradients and
// optimizer state are allocated under the Gradients and OptimizerState categories. They are
// the Training interface (training.go), implemented by engine/cpu and engine/cuda and driven by
// engine/devtrain; Fused (fused.go) adds fused decoder-block kernels.
package backend

import (
	"fmt"
	"strings"

	"github.com/qwengo/qwengo/engine/nvfp4"
	"github.com/qwengo/qwengo/engine/tensor"
)

// Category classifies device memory for accounting and for the guard's reports.
type Category int

// Memory categories.
const (
	Weights        Category = iota // model parameters (and, when training, master weights)
	KVCache                        // keys and values of cached positions
	Activations                    // per-forward intermediate tensors
	Gradients                      // parameter and activation gradients
	OptimizerState                 // optimizer moments
	Workspace                      // scratch buffers of the ops themselves
	NumCategories                  // the number of categories (not a category)
)

var categoryNames = [...]string{"weights", "kv_cache", "activations", "gradients", "optimizer", "workspace"}

// String returns the category's name as memory reports print it.
func (c Category) String() string {
	if c >= 0 && int(c) < len(categoryNames) {
		return categoryNames[c]
	}
	return fmt.Sprintf("category(%d)", int(c))
}

// MemStats reports bytes in use per category and the peak total since the last ResetPeak.
type MemStats struct {
	Device string               // the backend's description
	InUse  [NumCategories]int64 // bytes in use per category
	Peak   int64                // the largest total in use since the last ResetPeak
	PeakBy [NumCategories]int64 // bytes per category at the moment of that peak
	Total  int64                // device capacity, 0 when unknown (host memory)
	Budget int64                // allocation limit, 0 when none
	Allocs int64                // allocations made (tensors and weights), for leak hunting
	Live   int64                // allocations not yet freed
}

// Used is the sum over categories.
func (m MemStats) Used() int64 {
	var s int64
	for _, b := range m.InUse {
		s += b
	}
	return s
}

// String formats the stats for a memory report.
func (m MemStats) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s in use (%d allocations), peak %s", m.Device, Human(m.Used()), m.Live, Human(m.Peak))
	if m.Budget > 0 {
		fmt.Fprintf(&b, ", budget %s", Human(m.Budget))
	}
	if m.Total > 0 {
		fmt.Fprintf(&b, ", device %s", Human(m.Total))
	}
	for c, v := range m.InUse {
		if v > 0 || m.PeakBy[c] > 0 {
			fmt.Fprintf(&b, "\n  %-12s %10s (at peak %s)", Category(c), Human(v), Human(m.PeakBy[c]))
		}
	}
	return b.String()
}

// Human formats a byte count with binary prefixes.
func Human(n int64) string {
	const unit = 1024
	if n < unit && n > -unit {
		return fmt.Sprintf("%d B", n)
	}
	f, exp := float64(n)/unit, 0
	for (f >= unit || f <= -unit) && exp < 5 {
		f /= unit
		exp++
	}
	return fmt.Sprintf("%.2f %ciB", f, "KMGTPE"[exp])
}

// OverBudget is the error an allocation returns when it would exceed the backend's budget.
// Nothing was allocated; what is resident stays resident.
type OverBudget struct {
	Category Category
	Request  int64 // bytes asked for
	InUse    int64 // bytes in use before the request
	Budget   int64
}

// Error reports the request, the bytes in use and the budget.
func (e *OverBudget) Error() string {
	return fmt.Sprintf("out of memory budget: %s for %s with %s of %s in use", Human(e.Request), e.Category, Human(e.InUse), Human(e.Budget))
}

// Tensor is a backend-owned [Rows, Cols] buffer in the backend's compute type.
type Tensor interface {
	Rows() int
	Cols() int
	// Shape is [Rows, Cols].
	Shape() []int
	// DType is the element type as stored on the device (F32 on the CPU).
	DType() tensor.DType
}

// Weight is an uploaded [Out, In] matrix used as x·Wᵀ (or as an embedding table, one row per
// token).
type Weight interface {
	Out() int
	In() int
	// Kind is "f32", "bf16" or "nvfp4".
	Kind() string
	// Bytes is the weight's accounted storage.
	Bytes() int64
}

// HostWeight is a weight in host memory: a dense [out, in] tensor (F32, F16 or BF16) or an
// NVFP4 matrix.
type HostWeight struct {
	Name  string
	Dense *tensor.Host
	NVFP4 *nvfp4.Matrix
	// Keep selects how UploadWeight stores a dense weight: "f32" or "bf16"; "" keeps BF16 as
	// BF16 and stores F32 and F16 as f32.
	Keep string
}

// Backend is the set of operations a model runs on. A backend is used by one goroutine at a
// time. Shape errors are returned, never panicked; an op that returns an error has written
// nothing.
type Backend interface {
	// Name describes the backend ("cpu (8 threads)").
	Name() string

	// Alloc returns a zeroed [rows, cols] tensor accounted under cat.
	Alloc(cat Category, rows, cols int) (Tensor, error)
	// Free releases t; freeing twice, or freeing nil, does nothing.
	Free(t Tensor)
	// Memory reports bytes in use per category and the peak.
	Memory() MemStats
	// ResetPeak sets the peak to the bytes in use now.
	ResetPeak()

	// Upload copies rows*cols host values into t.
	Upload(t Tensor, src []float32) error
	// Download copies t to the host, reusing dst's storage when it is large enough.
	Download(t Tensor, dst []float32) ([]float32, error)
	// UploadWeight stores a weight (accounted under Weights) in its stored or Keep precision.
	UploadWeight(w HostWeight) (Weight, error)
	// DownloadWeight returns a weight in its stored precision: Dense F32 or BF16, or NVFP4.
	DownloadWeight(w Weight) (HostWeight, error)
	// FreeWeight releases w.
	FreeWeight(w Weight)

	// Embedding: out[t] = table[ids[t]] (out [len(ids), In]).
	Embedding(out Tensor, table Weight, ids []int) error
	// MatMul: out[T, Out] = x[T, In] · Wᵀ, fp32 accumulation; W decoded tile by tile.
	MatMul(out, x Tensor, w Weight) error
	// RMSNorm: w has n elements, n dividing x's width; each group of n consecutive elements of a
	// row is scaled to unit root mean square (statistics in fp32, eps inside the root) and
	// multiplied by w. n = width is the usual norm over hidden; n = head_dim normalises each
	// head (Qwen3's q_norm and k_norm). out may be x.
	RMSNorm(out, x, w Tensor, eps float32) error
	// RoPE rotates each head of x [T, heads*headDim] (NeoX rotate-half: pairs i and i+headDim/2,
	// inv_freq_i = theta^(-2i/headDim)); row t is at position pos0+t. out may be x.
	RoPE(out, x Tensor, headDim, pos0 int, theta float64) error
	// Attention: softmax(q·kᵀ/sqrt(headDim))·v for q [T, nHeads*headDim] over the first pos0+T
	// rows of k and v [≥pos0+T, nKV*headDim] (the KV cache), query head h using KV head
	// h/(nHeads/nKV). The mask is bottom-right aligned: query t attends to rows 0..pos0+t.
	Attention(out, q, k, v Tensor, pos0, nHeads, nKV, headDim int) error
	// SwiGLU: out = silu(gate) * up, element-wise. out may be gate or up.
	SwiGLU(out, gate, up Tensor) error
	// Add: dst += src (the residual connection).
	Add(dst, src Tensor) error
	// CopyRows copies n rows of src starting at srcRow into dst starting at dstRow (same
	// width): KV cache writes and last-row selection.
	CopyRows(dst Tensor, dstRow int, src Tensor, srcRow, n int) error
}
