package kvcache

import (
	"fmt"
	"strings"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/tensor"
)

// Batch is the KV cache of B sequences decoded together (batched decode, backend.Batched):
// per layer one [B·capacity, width] tensor of keys and one of values, sequence r owning rows
// [r·capacity, (r+1)·capacity), and a length per sequence. One tensor per layer for all
// sequences is what lets a batched step write every sequence's new row and attend over every
// sequence's rows in one op each.
//
// Seq(r) is sequence r as an ordinary single-sequence Cache whose tensors are row views of the
// batch's (backend.Training.RowView): a forward pass over it (a prompt's prefill) writes the
// batch's rows in place, and its Len is the sequence's length, so sequences are filled, reset
// and truncated independently through it. Batch.Free releases everything; do not Free a Seq.
type Batch struct {
	b        backend.Backend
	k, v     []backend.Tensor
	seqs     []*Cache
	capacity int
	width    int
}

// rowViewer is the part of backend.Training a batch cache needs.
type rowViewer interface {
	RowView(t backend.Tensor, row0, n int) (backend.Tensor, error)
}

// NewBatch preallocates a cache of batch sequences of capacity tokens each, for layers layers
// of width keys and values (accounted under backend.KVCache). The backend must provide row views
// (backend.Training). Running out of budget frees what was allocated and returns the error.
func NewBatch(b backend.Backend, layers, width, batch, capacity int) (*Batch, error) {
	return NewBatchOf(b, 0, layers, width, batch, capacity)
}

// NewBatchOf is NewBatch with the element type dt: F32, BF16, or 0 for the backend's default.
func NewBatchOf(b backend.Backend, dt tensor.DType, layers, width, batch, capacity int) (*Batch, error) {
	if layers <= 0 || width <= 0 || batch <= 0 || capacity <= 0 {
		return nil, fmt.Errorf("batch kv cache: %d layers of width %d for %d sequences of %d tokens: all must be positive", layers, width, batch, capacity)
	}
	rv, ok := b.(rowViewer)
	if !ok {
		return nil, fmt.Errorf("batch kv cache: backend %s has no row views (backend.Training)", b.Name())
	}
	c := &Batch{b: b, capacity: capacity, width: width}
	for i := 0; i < layers; i++ {
		for _, dst := range []*[]backend.Tensor{&c.k, &c.v} {
			t, err := backend.AllocKV(b, batch*capacity, width, dt)
			if err != nil {
				c.Free()
				return nil, fmt.Errorf("batch kv cache for %d sequences of %d tokens (%d layers): %w", batch, capacity, layers, err)
			}
			*dst = append(*dst, t)
		}
	}
	elem := int64(c.k[0].DType().Size())
	for r := 0; r < batch; r++ {
		s := &Cache{b: b, capacity: capacity, width: width, elemBytes: elem, dt: valueType(b, dt)}
		for i := 0; i < layers; i++ {
			kv, err1 := rv.RowView(c.k[i], r*capacity, capacity)
			vv, err2 := rv.RowView(c.v[i], r*capacity, capacity)
			if err1 != nil || err2 != nil {
				c.Free()
				return nil, fmt.Errorf("batch kv cache: sequence %d, layer %d: %w", r, i, firstErr(err1, err2))
			}
			s.k, s.v = append(s.k, kv), append(s.v, vv)
		}
		c.seqs = append(c.seqs, s)
	}
	return c, nil
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

// Backend is the backend the cache lives on.
func (c *Batch) Backend() backend.Backend { return c.b }

// Size is the number of sequences B.
func (c *Batch) Size() int { return len(c.seqs) }

// Cap is each sequence's capacity in tokens.
func (c *Batch) Cap() int { return c.capacity }

// Layers is the number of layers.
func (c *Batch) Layers() int { return len(c.k) }

// Width is the key (and value) width per token and layer.
func (c *Batch) Width() int { return c.width }

// K is layer i's key tensor [B·Cap, Width]: sequence r's rows start at r·Cap.
func (c *Batch) K(i int) backend.Tensor { return c.k[i] }

// V is layer i's value tensor [B·Cap, Width].
func (c *Batch) V(i int) backend.Tensor { return c.v[i] }

// Seq returns sequence r as a single-sequence cache over its rows (see Batch); nil when r is
// out of range.
func (c *Batch) Seq(r int) *Cache {
	if r < 0 || r >= len(c.seqs) {
		return nil
	}
	return c.seqs[r]
}

// Seqs returns every sequence's cache, in order (the slice is the caller's).
func (c *Batch) Seqs() []*Cache { return append([]*Cache(nil), c.seqs...) }

// Len is sequence r's number of cached positions.
func (c *Batch) Len(r int) int { return c.seqs[r].Len() }

// Lens returns every sequence's length: the positions the next batched step's tokens go to.
func (c *Batch) Lens() []int {
	out := make([]int, len(c.seqs))
	for r, s := range c.seqs {
		out[r] = s.Len()
	}
	return out
}

// Check returns an error naming the first sequence that has no room for n more tokens.
func (c *Batch) Check(n int) error {
	if c.k == nil {
		return fmt.Errorf("batch kv cache: used after Free")
	}
	for r, s := range c.seqs {
		if err := s.Check(n); err != nil {
			return fmt.Errorf("sequence %d: %w", r, err)
		}
	}
	return nil
}

// Commit marks n more positions of every sequence, already written to every layer, as cached.
// It checks every sequence first, so a failure commits nothing.
func (c *Batch) Commit(n int) error {
	if err := c.Check(n); err != nil {
		return err
	}
	for _, s := range c.seqs {
		s.n += n
	}
	return nil
}

// Reset empties every sequence, keeping the memory.
func (c *Batch) Reset() {
	for _, s := range c.seqs {
		s.Reset()
	}
}

// Bytes is the memory the cache holds (every sequence's whole capacity).
func (c *Batch) Bytes() int64 {
	var n int64
	for _, s := range c.seqs {
		n += s.Bytes()
	}
	return n
}

// BytesUsed is the memory holding the cached positions.
func (c *Batch) BytesUsed() int64 {
	var n int64
	for _, s := range c.seqs {
		n += s.BytesUsed()
	}
	return n
}

// String summarises the cache.
func (c *Batch) String() string {
	lens := make([]string, len(c.seqs))
	for r, s := range c.seqs {
		lens[r] = fmt.Sprint(s.Len())
	}
	return fmt.Sprintf("batch kv cache: %d sequences of %d tokens (lengths %s), %s of %s", len(c.seqs), c.capacity,
		strings.Join(lens, " "), backend.Human(c.BytesUsed()), backend.Human(c.Bytes()))
}

// Free releases the cache's memory; the cache and its sequences are unusable afterwards.
func (c *Batch) Free() {
	for _, t := range c.k {
		c.b.Free(t)
	}
	for _, t := range c.v {
		c.b.Free(t)
	}
	for _, s := range c.seqs {
		// The sequences' tensors are views (freeing one does nothing); mark them unusable.
		s.k, s.v, s.n = nil, nil, 0
	}
	c.k, c.v = nil, nil
}
