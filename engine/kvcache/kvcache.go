// Package kvcache is the key/value cache of a decoder: per layer, one preallocated
// [capacity, width] tensor of keys (after RoPE) and one of values, on a backend and accounted
// under backend.KVCache.
//
// Appending writes rows in place, never copying what is cached (the seed project grew its cache
// by concatenation, O(T²)). A forward pass reserves room (Check), writes rows Len()..Len()+n-1 of
// every layer, then Commits; a pass that fails or is cancelled before Commit leaves the cache as
// it was. Truncate rewinds (regenerate from a point, drop a rejected turn); rows past Len() are
// simply overwritten later.
package kvcache

import (
	"fmt"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/tensor"
)

// Cache holds keys and values for every layer of one sequence.
type Cache struct {
	b         backend.Backend
	k, v      []backend.Tensor
	n         int
	capacity  int
	width     int
	elemBytes int64        // bytes an element as stored
	dt        tensor.DType // the values' type: F32, or BF16 (stored as bf16, or rounded float32 on the CPU)
}

// New preallocates a cache of capacity tokens for layers layers of width (kv heads × head_dim)
// keys and values each, of the backend's default element type (backend.KVCacheFormat: bf16 on
// CUDA, float32 on the CPU). Running out of budget frees what was allocated and returns the
// error.
func New(b backend.Backend, layers, width, capacity int) (*Cache, error) {
	return NewOf(b, 0, layers, width, capacity)
}

// NewOf is New with the element type dt: F32, BF16, or 0 for the backend's default.
func NewOf(b backend.Backend, dt tensor.DType, layers, width, capacity int) (*Cache, error) {
	if layers <= 0 || width <= 0 || capacity <= 0 {
		return nil, fmt.Errorf("kv cache: %d layers of width %d for %d tokens: all must be positive", layers, width, capacity)
	}
	c := &Cache{b: b, capacity: capacity, width: width, dt: valueType(b, dt)}
	for i := 0; i < layers; i++ {
		for _, dst := range []*[]backend.Tensor{&c.k, &c.v} {
			t, err := backend.AllocKV(b, capacity, width, dt)
			if err != nil {
				c.Free()
				return nil, fmt.Errorf("kv cache for %d tokens (%d layers): %w", capacity, layers, err)
			}
			*dst = append(*dst, t)
		}
	}
	c.elemBytes = int64(c.k[0].DType().Size())
	return c, nil
}

// Backend is the backend the cache lives on.
func (c *Cache) Backend() backend.Backend { return c.b }

// Len is the number of cached positions.
func (c *Cache) Len() int { return c.n }

// Cap is the capacity in tokens.
func (c *Cache) Cap() int { return c.capacity }

// Layers is the number of layers.
func (c *Cache) Layers() int { return len(c.k) }

// Width is the key (and value) width per token and layer.
func (c *Cache) Width() int { return c.width }

// K is layer i's key tensor [Cap, Width]; rows 0..Len()-1 are valid.
func (c *Cache) K(i int) backend.Tensor { return c.k[i] }

// V is layer i's value tensor [Cap, Width].
func (c *Cache) V(i int) backend.Tensor { return c.v[i] }

// Check returns an error when n more tokens do not fit.
func (c *Cache) Check(n int) error {
	switch {
	case c.k == nil:
		return fmt.Errorf("kv cache: used after Free")
	case n < 0:
		return fmt.Errorf("kv cache: cannot append %d tokens", n)
	case c.n+n > c.capacity:
		return fmt.Errorf("KV cache full: %d tokens (%d cached + %d new), capacity %d", c.n+n, c.n, n, c.capacity)
	}
	return nil
}

// Commit marks n more positions, already written to every layer, as cached.
func (c *Cache) Commit(n int) error {
	if err := c.Check(n); err != nil {
		return err
	}
	c.n += n
	return nil
}

// Truncate keeps positions 0..pos-1.
func (c *Cache) Truncate(pos int) error {
	if pos < 0 || pos > c.n {
		return fmt.Errorf("kv cache: cannot truncate to %d (holds %d)", pos, c.n)
	}
	c.n = pos
	return nil
}

// Reset empties the cache, keeping its memory.
func (c *Cache) Reset() { c.n = 0 }

// Bytes is the memory the cache holds (its whole capacity).
func (c *Cache) Bytes() int64 {
	return int64(len(c.k)+len(c.v)) * int64(c.capacity) * int64(c.width) * c.elemBytes
}

// BytesUsed is the memory holding the Len() cached positions.
func (c *Cache) BytesUsed() int64 {
	return int64(len(c.k)+len(c.v)) * int64(c.n) * int64(c.width) * c.elemBytes
}

// DType is the type of the cached keys and values: F32, or BF16 (backend.KVCacheFormat; a CPU
// cache holds bf16 values in float32 storage, so Bytes counts 4 bytes an element there).
func (c *Cache) DType() tensor.DType { return c.dt }

// valueType is what a cache of type dt (0: b's default) on b holds.
func valueType(b backend.Backend, dt tensor.DType) tensor.DType {
	if dt == tensor.Invalid {
		return backend.KVDType(b)
	}
	return dt
}

// String summarises the cache.
func (c *Cache) String() string {
	return fmt.Sprintf("kv cache: %d/%d tokens, %s of %s (%s)", c.n, c.capacity, backend.Human(c.BytesUsed()), backend.Human(c.Bytes()), c.DType())
}

// Free releases the cache's memory; the cache is unusable afterwards.
func (c *Cache) Free() {
	for _, t := range c.k {
		c.b.Free(t)
	}
	for _, t := range c.v {
		c.b.Free(t)
	}
	c.k, c.v, c.n = nil, nil, 0
}
