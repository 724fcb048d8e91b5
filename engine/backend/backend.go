// Package backend defines the operations a Qwen3 forward (and, later, backward) pass is made
// of, so the model is written once and runs on the pure-Go CPU reference or on the GPU.
//
// Tensors are opaque handles owned by one backend. Every allocation names a Category so the
// backend can account bytes per category and the peak (the memory guard builds on this).
// Activations are row-major [rows, cols] float32 on the CPU (bf16 or f32 on a GPU). Weights
// are uploaded once as Weight values, dense (f32 or bf16) or NVFP4, and are decoded inside the
// matmul, tile by tile — never the whole model at once.
//
// Ops come in the order of a Qwen3 block (see engine/qwen3). Backward ops (the *Backward twin
// of each op, llm.c style) are added beside their forward op when training lands.
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
	Weights Category = iota
	KVCache
	Activations
	Gradients
	OptimizerState
	Workspace
	NumCategories
)

var categoryNames = [...]string{"weights", "kv_cache", "activations", "gradients", "optimizer", "workspace"}

func (c Category) String() string {
	if c >= 0 && int(c) < len(categoryNames) {
		return categoryNames[c]
	}
	return fmt.Sprintf("category(%d)", int(c))
}

// MemStats reports bytes in use per category and the peak total since the last ResetPeak.
type MemStats struct {
	Device  string
	InUse   [NumCategories]int64
	Peak    int64
	Total   int64 // device capacity, 0 when unknown (host memory)
	Budget  int64 // the guard's budget, 0 when none
	Allocs  int64
	Entries int64
}

// Used is the sum over categories.
func (m MemStats) Used() int64 {
	var s int64
	for _, b := range m.InUse {
		s += b
	}
	return s
}

// String formats the stats for %mem and the console.
func (m MemStats) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s in use, peak %s", m.Device, Human(m.Used()), Human(m.Peak))
	if m.Budget > 0 {
		fmt.Fprintf(&b, ", budget %s", Human(m.Budget))
	}
	if m.Total > 0 {
		fmt.Fprintf(&b, ", device %s", Human(m.Total))
	}
	for c, v := range m.InUse {
		if v > 0 {
			fmt.Fprintf(&b, "\n  %-12s %s", Category(c), Human(v))
		}
	}
	return b.String()
}

// Human formats a byte count.
func Human(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.2f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// Tensor is a backend-owned [Rows, Cols] float buffer.
type Tensor interface {
	Rows() int
	Cols() int
}

// Weight is an uploaded [Out, In] matrix used as x·Wᵀ, or as an embedding table.
type Weight interface {
	Out() int
	In() int
	// Kind is "f32", "bf16" or "nvfp4".
	Kind() string
	Bytes() int64
}

// HostWeight is what UploadWeight takes: either a dense tensor (F32/F16/BF16) or an NVFP4 matrix.
type HostWeight struct {
	Name  string
	Dense *tensor.Host
	NVFP4 *nvfp4.Matrix
	// Keep selects the stored precision of a dense weight: "f32" or "bf16" ("" = as stored,
	// with f16 widened to f32).
	Keep string
}

// Backend is the set of operations a model runs on.
type Backend interface {
	Name() string
	// Alloc returns a zeroed [rows, cols] tensor accounted under cat.
	Alloc(cat Category, rows, cols int) (Tensor, error)
	Free(t Tensor)
	UploadWeight(w HostWeight) (Weight, error)
	FreeWeight(w Weight)
	// WeightHost returns a weight's data in its stored precision (Dense as F32 or BF16, or NVFP4).
	WeightHost(w Weight) HostWeight
	// Upload copies host data (len rows*cols) into t; Download copies t out.
	Upload(t Tensor, data []float32) error
	Download(t Tensor, dst []float32) []float32
	// DownloadRow copies row r of t.
	DownloadRow(t Tensor, r int, dst []float32) []float32
	// Reshape returns a view of t with new dimensions (same element count), sharing storage.
	Reshape(t Tensor, rows, cols int) Tensor
	// Rows returns a view of rows r0..r1-1 of t.
	RowSlice(t Tensor, r0, r1 int) Tensor

	// Embedding: out[t] = table[ids[t]].
	Embedding(out Tensor, table Weight, ids []int) error
	// MatMul: out[T, Out] = x[T, In] · Wᵀ.
	MatMul(out, x Tensor, w Weight) error
	// RMSNorm normalises each row of x (statistics in fp32) and scales by w (len = x.Cols()).
	// Per-head norms pass x reshaped to [T*heads, head_dim].
	RMSNorm(out, x Tensor, w Tensor, eps float32) error
	// RoPE rotates x [T, heads*headDim] in place (NeoX rotate-half), row t at position pos0+t.
	RoPE(x Tensor, headDim, pos0 int, theta float64) error
	// Attention: causal GQA of q [T, nHeads*hd] over keys/values k, v [P+T, nKV*hd]
	// (the cache rows 0..pos0+T-1), bottom-right aligned: query t attends to 0..pos0+t.
	Attention(out, q, k, v Tensor, pos0, nHeads, nKV, headDim int) error
	// SwiGLU: out = silu(gate) * up.
	SwiGLU(out, gate, up Tensor) error
	// Add: dst += src.
	Add(dst, src Tensor) error
	// Copy: dst = src (same shape); used to write the KV cache.
	Copy(dst, src Tensor) error

	Memory() MemStats
	ResetPeak()
}
