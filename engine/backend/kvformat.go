package backend

import (
	"fmt"

	"github.com/qwengo/qwengo/engine/tensor"
)

// KVCacheFormat is implemented by backends whose KV caches (tensors allocated under KVCache) can
// hold bf16 or float32 keys and values. bf16 halves the bytes every decode step reads and the
// memory a long context needs (144 KiB a token for Qwen3-4B, as shared/reference/qwen3.md
// counts it), and is what a bf16 PyTorch model keeps; float32 keeps keys and values exactly as
// computed, for comparing numeric paths bit for bit. Only the cache's storage changes: a value
// is rounded to nearest even (tensor.F32ToBF16) when it is written into the cache and widened
// exactly when it is read, so attention runs in float32 either way.
//
// The setting applies to caches allocated after it; a cache keeps the format it was made with.
type KVCacheFormat interface {
	// KVCacheDType is the element type of the caches allocated from now on: F32 or BF16.
	KVCacheDType() tensor.DType
	// SetKVCacheDType chooses it; any other type is an error.
	SetKVCacheDType(dt tensor.DType) error
	// AllocKVCache allocates a zeroed [rows, cols] cache tensor (accounted under KVCache) of
	// element type dt, F32 or BF16, whatever the default.
	AllocKVCache(rows, cols int, dt tensor.DType) (Tensor, error)
}

// KVDType returns the element type of b's next KV caches: F32 unless b implements KVCacheFormat.
func KVDType(b Backend) tensor.DType {
	if f, ok := b.(KVCacheFormat); ok {
		return f.KVCacheDType()
	}
	return tensor.F32
}

// AllocKV allocates a [rows, cols] KV cache tensor of element type dt on b: dt 0 (Invalid) is
// b's default (Alloc under KVCache); F32 works on every backend, BF16 needs KVCacheFormat.
func AllocKV(b Backend, rows, cols int, dt tensor.DType) (Tensor, error) {
	if dt == tensor.Invalid {
		return b.Alloc(KVCache, rows, cols)
	}
	if f, ok := b.(KVCacheFormat); ok {
		return f.AllocKVCache(rows, cols, dt)
	}
	if dt == tensor.F32 {
		return b.Alloc(KVCache, rows, cols)
	}
	return nil, fmt.Errorf("backend %s keeps its KV caches in float32 only, not %s", b.Name(), dt)
}

// SetKVDType sets the element type of b's next KV caches. F32 is accepted by every backend;
// BF16 needs a backend that implements KVCacheFormat.
func SetKVDType(b Backend, dt tensor.DType) error {
	if f, ok := b.(KVCacheFormat); ok {
		return f.SetKVCacheDType(dt)
	}
	if dt == tensor.F32 {
		return nil
	}
	return fmt.Errorf("backend %s keeps its KV caches in float32 only, not %s", b.Name(), dt)
}

// CheckKVDType is the argument check of SetKVCacheDType implementations (who names the backend).
func CheckKVDType(who string, dt tensor.DType) error {
	if dt != tensor.F32 && dt != tensor.BF16 {
		return fmt.Errorf("%s: a KV cache holds F32 or BF16, not %s", who, dt)
	}
	return nil
}
