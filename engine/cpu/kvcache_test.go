package cpu

import (
	"errors"
	"strings"
	"testing"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/tensor"
)

// TestKVCacheValues: with bf16 KV caches, what Upload, CopyRows and ScatterRows (through which
// QKNormRoPECacheBatch writes) put into a cache or its row views is rounded to nearest even;
// float32 caches and tensors of other categories keep values as written.
func TestKVCacheValues(t *testing.T) {
	const w = 4
	in := []float32{1 + 1.0/256, 1 + 3.0/256, 0.1, -3.3} // two ties (to even: down, up), two others
	rounded := make([]float32, len(in))
	for i, v := range in {
		rounded[i] = tensor.BF16ToF32(tensor.F32ToBF16(v))
	}
	if rounded[0] != 1 || rounded[1] != 1+4.0/256 || rounded[2] == in[2] {
		t.Fatalf("test values round to %v", rounded)
	}
	writes := []struct {
		name  string
		write func(b *Backend, dst, src backend.Tensor) error
	}{
		{"upload", func(b *Backend, dst, _ backend.Tensor) error { return b.Upload(dst, append(in, in...)) }},
		{"copy rows", func(b *Backend, dst, src backend.Tensor) error {
			return errors.Join(b.CopyRows(dst, 0, src, 0, 1), b.CopyRows(dst, 1, src, 0, 1))
		}},
		{"scatter rows", func(b *Backend, dst, src backend.Tensor) error {
			two, err := b.Alloc(backend.Activations, 2, w)
			if err != nil {
				return err
			}
			return errors.Join(b.Upload(two, append(in, in...)), b.ScatterRows(dst, []int{1, 0}, two))
		}},
		{"copy rows into a row view", func(b *Backend, dst, src backend.Tensor) error {
			v0, err0 := b.RowView(dst, 0, 1)
			v1, err1 := b.RowView(dst, 1, 1)
			return errors.Join(err0, err1, b.CopyRows(v0, 0, src, 0, 1), b.CopyRows(v1, 0, src, 0, 1))
		}},
	}
	for _, kv := range []tensor.DType{tensor.F32, tensor.BF16} {
		for _, cat := range []backend.Category{backend.KVCache, backend.Activations} {
			for _, wr := range writes {
				t.Run(kv.String()+"/"+cat.String()+"/"+wr.name, func(t *testing.T) {
					b := New()
					if err := b.SetKVCacheDType(kv); err != nil {
						t.Fatal(err)
					}
					if got := b.KVCacheDType(); got != kv {
						t.Fatalf("KVCacheDType %s after setting %s", got, kv)
					}
					src, _ := b.Alloc(backend.Activations, 1, w)
					if err := b.Upload(src, in); err != nil {
						t.Fatal(err)
					}
					dst, err := b.Alloc(cat, 2, w)
					if err != nil {
						t.Fatal(err)
					}
					if dst.DType() != tensor.F32 {
						t.Errorf("a CPU tensor's storage is %s, want F32", dst.DType())
					}
					if err := wr.write(b, dst, src); err != nil {
						t.Fatal(err)
					}
					want := in
					if kv == tensor.BF16 && cat == backend.KVCache {
						want = rounded
					}
					got, _ := b.Download(dst, nil)
					for i := range got {
						if got[i] != want[i%w] {
							t.Fatalf("element %d is %v, want %v (all: %v)", i, got[i], want[i%w], got)
						}
					}
				})
			}
		}
	}
}

// TestKVCacheDTypeErrors: only F32 and BF16 caches exist; a setting applies to later caches.
func TestKVCacheDTypeErrors(t *testing.T) {
	b := New()
	for _, dt := range []tensor.DType{tensor.F16, tensor.I8, tensor.Invalid} {
		if err := b.SetKVCacheDType(dt); err == nil || !strings.Contains(err.Error(), "a KV cache holds F32 or BF16") {
			t.Errorf("SetKVCacheDType(%s): %v", dt, err)
		}
	}
	if b.KVCacheDType() != tensor.F32 {
		t.Errorf("default %s, want F32", b.KVCacheDType())
	}
	before, _ := b.Alloc(backend.KVCache, 1, 2)
	if err := backend.SetKVDType(b, tensor.BF16); err != nil {
		t.Fatal(err)
	}
	if err := b.Upload(before, []float32{0.1, 0.2}); err != nil {
		t.Fatal(err)
	}
	if got, _ := b.Download(before, nil); got[0] != 0.1 || got[1] != 0.2 {
		t.Errorf("a cache allocated before the switch was rounded: %v", got)
	}
}
