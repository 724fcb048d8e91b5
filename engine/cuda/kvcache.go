//go:build cuda

package cuda

import (
	"fmt"
	"os"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/tensor"
)

// KV caches in bf16 (backend.KVCacheFormat).
//
// A decode step reads every cached key and value of every layer: at context 8192 a float32
// cache is 67 MB a layer for Qwen3-4B, more than the layer's NVFP4 weights, so the cache's
// element type is the attention's bandwidth. The backend stores caches (tensors allocated under
// backend.KVCache) as bf16 unless told otherwise (SetKVCacheDType, or QWENGO_CUDA_KV=f32 when
// the backend opens). The kernels that write a cache (qk_norm_rope_cache, scatter_rows,
// CopyRows' conversion) round to nearest even, those that read one (every attention kernel,
// kernels/attention_common.cuh) widen exactly and compute in float32 as before; their bf16
// entry points carry the suffix _kb. The flash prefill kernel reads the bf16 cache directly (it
// rounded K and V to bf16 copies anyway). Every other op refuses a bf16 tensor (Backend.ten).

// kvFromEnv reads QWENGO_CUDA_KV: "bf16" (default) or "f32".
func kvFromEnv() (bf16 bool, err error) {
	switch v := os.Getenv("QWENGO_CUDA_KV"); v {
	case "", "bf16":
		return true, nil
	case "f32":
		return false, nil
	default:
		return false, fmt.Errorf("cuda: QWENGO_CUDA_KV=%q: want bf16 or f32", v)
	}
}

// KVCacheDType implements backend.KVCacheFormat.
func (b *Backend) KVCacheDType() tensor.DType {
	var bf16 bool
	b.do(func() error { bf16 = b.kvBF16; return nil })
	if bf16 {
		return tensor.BF16
	}
	return tensor.F32
}

// SetKVCacheDType implements backend.KVCacheFormat.
func (b *Backend) SetKVCacheDType(dt tensor.DType) error {
	if err := backend.CheckKVDType("cuda", dt); err != nil {
		return err
	}
	return b.do(func() error { b.kvBF16 = dt == tensor.BF16; return nil })
}

// AllocKVCache implements backend.KVCacheFormat.
func (b *Backend) AllocKVCache(rows, cols int, dt tensor.DType) (backend.Tensor, error) {
	if err := backend.CheckKVDType("cuda", dt); err != nil {
		return nil, err
	}
	kv := kvF32
	if dt == tensor.BF16 {
		kv = kvBF16
	}
	return b.allocAs(backend.KVCache, rows, cols, kv)
}

// kvPair checks a layer's key and value caches (or rows of them) for an attention op: live
// tensors of this backend of one element type. It returns the kernel-name suffix of that type.
func (b *Backend) kvPair(op string, k, v backend.Tensor, kname, vname string) (kt, vt *Tensor, suffix string, err error) {
	if kt, err = b.tenKV(k, op, kname); err != nil {
		return nil, nil, "", err
	}
	if vt, err = b.tenKV(v, op, vname); err != nil {
		return nil, nil, "", err
	}
	if kt.bf16 != vt.bf16 {
		return nil, nil, "", fmt.Errorf("cuda: %s: %s is %s and %s %s; a cache holds one type", op, kname, kt.DType(), vname, vt.DType())
	}
	return kt, vt, kvSuffix(kt), nil
}

// kvSuffix is the kernel-name suffix for a cache of t's element type.
func kvSuffix(t *Tensor) string {
	if t.bf16 {
		return "_kb"
	}
	return ""
}

var _ backend.KVCacheFormat = (*Backend)(nil)
