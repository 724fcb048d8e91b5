package cpu

import (
	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/tensor"
)

// KV caches with bf16 values (backend.KVCacheFormat).
//
// The CUDA backend stores KV caches as bf16 by default. So that the CPU backend can be the
// reference for that path too, a CPU KV cache can hold bf16 values: its storage stays float32
// (DType F32, 4 bytes an element), but every op that writes into it — Upload, CopyRows,
// ScatterRows (and QKNormRoPECacheBatch through it) — rounds the written values to nearest
// even as tensor.F32ToBF16 and the CUDA kernels do, and attention reads them as they are. The
// default is float32 (unrounded): CPU results stay what they were.

// KVCacheDType implements backend.KVCacheFormat.
func (b *Backend) KVCacheDType() tensor.DType {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.kvBF16 {
		return tensor.BF16
	}
	return tensor.F32
}

// SetKVCacheDType implements backend.KVCacheFormat.
func (b *Backend) SetKVCacheDType(dt tensor.DType) error {
	if err := backend.CheckKVDType("cpu", dt); err != nil {
		return err
	}
	b.mu.Lock()
	b.kvBF16 = dt == tensor.BF16
	b.mu.Unlock()
	return nil
}

// roundStored rounds values just written into t (a slice of t.Data) to bf16 when t holds bf16
// values; otherwise it does nothing.
func (t *Tensor) roundStored(values []float32) {
	if !t.bf16Values {
		return
	}
	for i, v := range values {
		values[i] = tensor.BF16ToF32(tensor.F32ToBF16(v))
	}
}

var _ backend.KVCacheFormat = (*Backend)(nil)
