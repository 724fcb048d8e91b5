package backend

import "fmt"

// Batched is implemented by backends that advance B independent sequences by one token each in
// one pass (batched decode). Row r of every [B, width] activation is sequence r's new token; the
// ops of a decoder block that work row by row (RMSNorm, MatMul, SwiGLU, Add and the Fused ops)
// take the B rows as they are, and the ops here are the ones whose rows differ by sequence:
// each row has its own position, and its keys and values live in its own part of the cache.
//
// The batch KV cache of a layer is one tensor of [B·capacity, width] for the keys and one for
// the values: sequence r owns rows [r·capacity, (r+1)·capacity), its token at position p is
// row r·capacity+p. positions[r] is the position of row r's new token, so row r attends over
// the positions[r]+1 rows r·capacity .. r·capacity+positions[r] (its own new key included).
//
// Each op is exactly the composition of Backend ops its doc names, applied to row views
// (Training.RowView) — the same results on the CPU, bit for bit (engine/cpu tests it), and the
// same within float32 rounding on a GPU, whose kernels may split the keys differently — so a
// model computes the same batched or one sequence at a time. A call validates every argument
// before writing anything and names what is wrong; it never panics. engine/qwen3's ForwardBatch
// uses these ops when the backend has them.
type Batched interface {
	// RoPEAt rotates row r of x [B, heads·headDim] at position positions[r] into row r of out:
	// RoPE(out[r], x[r], headDim, positions[r], theta) for every r. out may be x.
	RoPEAt(out, x Tensor, headDim int, positions []int, theta float64) error
	// ScatterRows copies row r of src to row rows[r] of dst (the same width), for every r:
	// CopyRows(dst, rows[r], src, r, 1). The rows must be distinct and dst must not share
	// memory with src. It is the KV cache write of a batched step.
	ScatterRows(dst Tensor, rows []int, src Tensor) error
	// AttentionBatch is causal GQA of B single-token queries q [B, nHeads·headDim] over the
	// batch KV cache k, v [B·capacity, nKV·headDim] into out [B, nHeads·headDim]: for every r,
	// Attention(out[r], q[r], k[r·capacity : r·capacity+p+1], v[…], p, nHeads, nKV, headDim)
	// with p = positions[r] < capacity. out must not share memory with q, k or v.
	AttentionBatch(out, q, k, v Tensor, capacity int, positions []int, nHeads, nKV, headDim int) error
	// QKNormRoPECacheBatch is Fused.QKNormRoPECache for B sequences: RMSNorm(qr, q, qn, eps),
	// RMSNorm(kr, k, kn, eps) (per head: qn and kn have headDim elements), RoPEAt(qr, qr, …)
	// and RoPEAt(kr, kr, …) at positions, then ScatterRows(kCache, rows, kr) and
	// ScatterRows(vCache, rows, v) with rows[r] = r·capacity+positions[r]. One launch on a GPU
	// where the composition takes seven; outputs must not share memory with inputs.
	QKNormRoPECacheBatch(qr, kr, q, k, v, qn, kn, kCache, vCache Tensor, headDim, capacity int, positions []int, theta float64, eps float32) error
}

// AsBatched returns b's batched ops, or an error naming the backend when it has none.
func AsBatched(b Backend) (Batched, error) {
	bt, ok := b.(Batched)
	if !ok {
		return nil, fmt.Errorf("backend %s has no batched decode ops (backend.Batched)", b.Name())
	}
	return bt, nil
}

// BatchedGate is implemented by a backend whose Batched ops may be switched off: engine/qwen3
// and engine/bench use them only where BatchedEnabled reports true (engine/cuda keeps its
// batched kernels off until they have passed its GPU tests).
type BatchedGate interface {
	BatchedEnabled() bool
}

// UseBatched returns b's batched ops when it has them and they are enabled.
func UseBatched(b Backend) (Batched, bool) {
	bt, ok := b.(Batched)
	if g, gated := b.(BatchedGate); ok && gated && !g.BatchedEnabled() {
		return nil, false
	}
	return bt, ok
}

// Validation shared by every backend, so the CPU reference and the GPU refuse exactly the same
// calls with the same words. name prefixes the error ("cpu", "cuda"). Checks of shared memory
// are the backends' own (host slices or device pointers).

// CheckPositions validates one position per row of a B-row batch whose sequences own capacity
// cache rows each (capacity ≤ 0: no cache, positions only need to be non-negative).
func CheckPositions(name, op string, rows int, positions []int, capacity int) error {
	if len(positions) != rows {
		return fmt.Errorf("%s: %s: %d positions for %d rows (one per sequence)", name, op, len(positions), rows)
	}
	for r, p := range positions {
		switch {
		case p < 0:
			return fmt.Errorf("%s: %s: sequence %d has position %d", name, op, r, p)
		case capacity > 0 && p >= capacity:
			return fmt.Errorf("%s: %s: sequence %d is at position %d, past its %d cache rows", name, op, r, p, capacity)
		}
	}
	return nil
}

// CheckRoPEAt validates RoPEAt's arguments.
func CheckRoPEAt(name string, out, x Tensor, headDim int, positions []int, theta float64) error {
	const op = "rope at positions"
	switch {
	case headDim <= 0 || headDim%2 != 0 || x.Cols()%headDim != 0:
		return fmt.Errorf("%s: %s: head_dim %d must be even and divide the width %d", name, op, headDim, x.Cols())
	case out.Rows() != x.Rows() || out.Cols() != x.Cols():
		return fmt.Errorf("%s: %s: x [%d, %d] into out [%d, %d]", name, op, x.Rows(), x.Cols(), out.Rows(), out.Cols())
	case !(theta > 0):
		return fmt.Errorf("%s: %s: theta %v", name, op, theta)
	}
	return CheckPositions(name, op, x.Rows(), positions, 0)
}

// CheckScatterRows validates ScatterRows' arguments (except that dst and src do not overlap).
func CheckScatterRows(name string, dst Tensor, rows []int, src Tensor) error {
	const op = "scatter rows"
	switch {
	case dst.Cols() != src.Cols():
		return fmt.Errorf("%s: %s: src [%d, %d] into dst [%d, %d]: the widths differ", name, op, src.Rows(), src.Cols(), dst.Rows(), dst.Cols())
	case len(rows) != src.Rows():
		return fmt.Errorf("%s: %s: %d destination rows for the %d rows of src", name, op, len(rows), src.Rows())
	}
	seen := make(map[int]int, len(rows))
	for r, d := range rows {
		if d < 0 || d >= dst.Rows() {
			return fmt.Errorf("%s: %s: row %d of src goes to row %d, outside dst [%d, %d]", name, op, r, d, dst.Rows(), dst.Cols())
		}
		if q, dup := seen[d]; dup {
			return fmt.Errorf("%s: %s: rows %d and %d of src both go to row %d", name, op, q, r, d)
		}
		seen[d] = r
	}
	return nil
}

// CheckAttentionBatch validates AttentionBatch's arguments (except overlaps other than out = q).
func CheckAttentionBatch(name string, out, q, k, v Tensor, capacity int, positions []int, nHeads, nKV, headDim int) error {
	const op = "attention batch"
	B := q.Rows()
	switch {
	case nHeads <= 0 || nKV <= 0 || headDim <= 0 || nHeads%nKV != 0:
		return fmt.Errorf("%s: %s: %d query heads over %d KV heads of %d (the KV heads must divide the query heads)", name, op, nHeads, nKV, headDim)
	case q.Cols() != nHeads*headDim || out.Rows() != B || out.Cols() != q.Cols():
		return fmt.Errorf("%s: %s: q [%d, %d] and out [%d, %d] for %d heads of %d", name, op, q.Rows(), q.Cols(), out.Rows(), out.Cols(), nHeads, headDim)
	case capacity <= 0:
		return fmt.Errorf("%s: %s: capacity %d", name, op, capacity)
	case k.Cols() != nKV*headDim || v.Cols() != nKV*headDim || k.Rows() != B*capacity || v.Rows() != B*capacity:
		return fmt.Errorf("%s: %s: k [%d, %d] and v [%d, %d] for %d sequences of %d rows and %d KV heads of %d",
			name, op, k.Rows(), k.Cols(), v.Rows(), v.Cols(), B, capacity, nKV, headDim)
	case out == q:
		return fmt.Errorf("%s: %s: out and q are the same tensor", name, op)
	}
	return CheckPositions(name, op, B, positions, capacity)
}

// CheckQKNormRoPECacheBatch validates QKNormRoPECacheBatch's arguments (except overlaps).
func CheckQKNormRoPECacheBatch(name string, qr, kr, q, k, v, qn, kn, kCache, vCache Tensor, headDim, capacity int, positions []int, theta float64) error {
	const op = "qk norm+rope+cache batch"
	B := q.Rows()
	n := func(t Tensor) int { return t.Rows() * t.Cols() }
	switch {
	case headDim <= 0 || headDim%2 != 0 || q.Cols()%headDim != 0 || k.Cols()%headDim != 0:
		return fmt.Errorf("%s: %s: head_dim %d must be even and divide the widths of q (%d) and k (%d)", name, op, headDim, q.Cols(), k.Cols())
	case n(qn) != headDim || n(kn) != headDim:
		return fmt.Errorf("%s: %s: q_norm has %d and k_norm %d elements, want head_dim %d", name, op, n(qn), n(kn), headDim)
	case k.Rows() != B || v.Rows() != B || v.Cols() != k.Cols():
		return fmt.Errorf("%s: %s: q [%d, %d], k [%d, %d] and v [%d, %d] must have one row per sequence and k and v one width",
			name, op, q.Rows(), q.Cols(), k.Rows(), k.Cols(), v.Rows(), v.Cols())
	case qr.Rows() != B || qr.Cols() != q.Cols() || kr.Rows() != B || kr.Cols() != k.Cols():
		return fmt.Errorf("%s: %s: qr [%d, %d] and kr [%d, %d] for q [%d, %d] and k [%d, %d]", name, op,
			qr.Rows(), qr.Cols(), kr.Rows(), kr.Cols(), q.Rows(), q.Cols(), k.Rows(), k.Cols())
	case capacity <= 0:
		return fmt.Errorf("%s: %s: capacity %d", name, op, capacity)
	case kCache.Cols() != k.Cols() || vCache.Cols() != k.Cols() || kCache.Rows() != B*capacity || vCache.Rows() != B*capacity:
		return fmt.Errorf("%s: %s: caches [%d, %d] and [%d, %d] for %d sequences of %d rows of width %d", name, op,
			kCache.Rows(), kCache.Cols(), vCache.Rows(), vCache.Cols(), B, capacity, k.Cols())
	case !(theta > 0):
		return fmt.Errorf("%s: %s: theta %v", name, op, theta)
	}
	return CheckPositions(name, op, B, positions, capacity)
}

// CacheRows returns the batch KV cache rows r·capacity+positions[r] that a batched step writes.
func CacheRows(capacity int, positions []int) []int {
	rows := make([]int, len(positions))
	for r, p := range positions {
		rows[r] = r*capacity + p
	}
	return rows
}
