//go:build cuda

package cuda

import (
	"errors"
	"strings"
	"testing"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/cpu"
	"github.com/qwengo/qwengo/engine/tensor"
)

// kvTypes are the KV cache element types every cache-touching test runs on.
var kvTypes = []tensor.DType{tensor.F32, tensor.BF16}

// withKV makes g allocate KV caches of type dt for the rest of the test (the previous type comes
// back at its end) and returns a CPU backend whose caches hold the same values: the reference
// for anything computed through a cache.
func withKV(t *testing.T, g *Backend, dt tensor.DType) *cpu.Backend {
	t.Helper()
	prev := g.KVCacheDType()
	if err := g.SetKVCacheDType(dt); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.SetKVCacheDType(prev) })
	c := cpu.New()
	if err := c.SetKVCacheDType(dt); err != nil {
		t.Fatal(err)
	}
	return c
}

// pairKV is pair for KV cache tensors (backend.KVCache: bf16 on g when it stores bf16 caches).
func pairKV(t *testing.T, c *cpu.Backend, g *Backend, rows, cols int, data []float32) (backend.Tensor, backend.Tensor) {
	t.Helper()
	return pairOf(t, c, g, backend.KVCache, rows, cols, data)
}

// roundedBF16 is v rounded to bf16 values (tensor.F32ToBF16: nearest even).
func roundedBF16(v []float32) []float32 {
	o := make([]float32, len(v))
	for i, x := range v {
		o[i] = tensor.BF16ToF32(tensor.F32ToBF16(x))
	}
	return o
}

// TestKVCacheBF16Storage: a bf16 cache is stored in 2 bytes an element, holds the bf16 rounding
// of what is uploaded or copied into it (as the CPU's bf16 caches do), views and copies address
// its rows by 2-byte elements, and the ops that do not read caches refuse it.
func TestKVCacheBF16Storage(t *testing.T) {
	g := openGPU(t)
	c := withKV(t, g, tensor.BF16)
	const rows, cols = 9, 256
	data := randn(rows*cols, 41, 3)
	data[5], data[6] = 1+1.0/256, 1+3.0/256 // ties: to even (down, then up)
	before := g.Memory()
	ck, gk := pairKV(t, c, g, rows, cols, data)
	if gk.DType() != tensor.BF16 {
		t.Fatalf("cache dtype %s, want BF16", gk.DType())
	}
	if d := g.Memory().InUse[backend.KVCache] - before.InUse[backend.KVCache]; d != rows*cols*2 {
		t.Errorf("a bf16 cache of %d elements took %d bytes, want %d", rows*cols, d, rows*cols*2)
	}
	compare(t, "bf16 cache upload", c, g, ck, gk, 0)
	got, err := g.Download(gk, nil)
	if err != nil {
		t.Fatal(err)
	}
	compareSlices(t, "bf16 cache holds the rounding", got, roundedBF16(data), 0)
	if got[5] != 1 || got[6] != 1+4.0/256 {
		t.Errorf("ties rounded to %v and %v, want 1 and %v", got[5], got[6], 1+4.0/256)
	}

	// Row views and CopyRows: float32 rows into the cache (rounded), cache rows back out
	// (widened), cache to cache (a copy of bf16 bits).
	src := randn(3*cols, 42, 2)
	cs, gs := pair(t, c, g, 3, cols, src)
	if err := errors.Join(c.CopyRows(ck, 4, cs, 0, 3), g.CopyRows(gk, 4, gs, 0, 3)); err != nil {
		t.Fatal(err)
	}
	compare(t, "copy rows f32 → bf16 cache", c, g, ck, gk, 0)
	cv, err1 := c.RowView(ck, 2, 5)
	gv, err2 := g.RowView(gk, 2, 5)
	if err := errors.Join(err1, err2); err != nil {
		t.Fatal(err)
	}
	compare(t, "row view of a bf16 cache", c, g, cv, gv, 0)
	co, gO := pair(t, c, g, 2, cols, nil)
	if err := errors.Join(c.CopyRows(co, 0, ck, 5, 2), g.CopyRows(gO, 0, gk, 5, 2)); err != nil {
		t.Fatal(err)
	}
	compare(t, "copy rows bf16 cache → f32", c, g, co, gO, 0)
	if err := errors.Join(c.CopyRows(ck, 0, ck, 4, 3), g.CopyRows(gk, 0, gk, 4, 3)); err != nil {
		t.Fatal(err)
	}
	compare(t, "copy rows within a bf16 cache (overlapping)", c, g, ck, gk, 0)

	// Every op that does not take caches names the bf16 operand; mixed caches are refused.
	_, gf := pair(t, c, g, rows, cols, nil)
	for _, e := range []struct {
		err  error
		want string
	}{
		{g.Add(gk, gf), "add: dst [9, 256] is a bf16 KV cache"},
		{g.SwiGLU(gf, gk, gf), "is a bf16 KV cache"},
		{g.Attention(gO, gs, gk, gf, 0, 2, 1, 128), "a cache holds one type"},
		{g.SetKVCacheDType(tensor.F16), "a KV cache holds F32 or BF16, not F16"},
		{c.SetKVCacheDType(tensor.I32), "a KV cache holds F32 or BF16"},
	} {
		if e.err == nil || !strings.Contains(e.err.Error(), e.want) {
			t.Errorf("error %v, want one containing %q", e.err, e.want)
		}
	}
	// A cache of the other type than the default, asked for by name.
	f, err := g.AllocKVCache(2, cols, tensor.F32)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Free(f)
	if f.DType() != tensor.F32 {
		t.Errorf("AllocKVCache(F32) made a %s tensor", f.DType())
	}
	if _, err := g.AllocKVCache(2, cols, tensor.F16); err == nil || !strings.Contains(err.Error(), "not F16") {
		t.Errorf("AllocKVCache(F16): %v", err)
	}
	if backend.KVDType(g) != tensor.BF16 || backend.KVDType(c) != tensor.BF16 {
		t.Errorf("KVDType %s / %s, want BF16", backend.KVDType(g), backend.KVDType(c))
	}
}
