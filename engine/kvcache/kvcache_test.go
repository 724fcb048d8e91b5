package kvcache

import (
	"errors"
	"strings"
	"testing"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/cpu"
	"github.com/qwengo/qwengo/engine/tensor"
)

func TestCache(t *testing.T) {
	b := cpu.New()
	c, err := New(b, 3, 8, 10)
	if err != nil {
		t.Fatal(err)
	}
	if got := b.Memory().InUse[backend.KVCache]; got != 3*2*10*8*4 || c.Bytes() != got {
		t.Fatalf("accounted %d, Bytes %d", got, c.Bytes())
	}
	steps := []struct {
		op      string
		n       int
		wantLen int
		wantErr string
	}{
		{"commit", 4, 4, ""},
		{"commit", 6, 10, ""},
		{"check", 1, 10, "KV cache full: 11 tokens (10 cached + 1 new), capacity 10"},
		{"truncate", 3, 3, ""},
		{"truncate", 5, 3, "cannot truncate to 5 (holds 3)"},
		{"commit", -1, 3, "cannot append -1"},
		{"reset", 0, 0, ""},
	}
	for _, s := range steps {
		var err error
		switch s.op {
		case "commit":
			err = c.Commit(s.n)
		case "check":
			err = c.Check(s.n)
		case "truncate":
			err = c.Truncate(s.n)
		case "reset":
			c.Reset()
		}
		if (err == nil) != (s.wantErr == "") || (err != nil && !strings.Contains(err.Error(), s.wantErr)) {
			t.Fatalf("%s %d: err %v, want %q", s.op, s.n, err, s.wantErr)
		}
		if c.Len() != s.wantLen {
			t.Fatalf("%s %d: len %d, want %d", s.op, s.n, c.Len(), s.wantLen)
		}
	}
	c.Commit(2)
	if c.BytesUsed() != 3*2*2*8*4 {
		t.Fatalf("BytesUsed %d", c.BytesUsed())
	}
	t.Log(c)
	c.Free()
	if b.Memory().Used() != 0 || c.Check(0) == nil {
		t.Fatalf("after Free: %v, check %v", b.Memory(), c.Check(0))
	}

	b.SetBudget(1000)
	_, err = New(b, 4, 8, 10)
	var ob *backend.OverBudget
	if !errors.As(err, &ob) || b.Memory().Used() != 0 {
		t.Fatalf("over budget: %v; in use %d", err, b.Memory().Used())
	}
	if _, err := New(b, 0, 8, 10); err == nil {
		t.Fatal("zero layers accepted")
	}
}

// TestCacheTypes: a cache's element type is the backend's default or the one asked for; what is
// written into a bf16 cache is rounded (the CPU keeps bf16 values in float32 storage); a type
// a cache cannot hold is refused before anything is allocated.
func TestCacheTypes(t *testing.T) {
	for _, c := range []struct {
		name      string
		def, ask  tensor.DType
		want      tensor.DType
		rounded   bool
		wantError string
	}{
		{"default f32", tensor.F32, 0, tensor.F32, false, ""},
		{"default bf16", tensor.BF16, 0, tensor.BF16, true, ""},
		{"bf16 asked", tensor.F32, tensor.BF16, tensor.BF16, true, ""},
		{"f32 asked", tensor.BF16, tensor.F32, tensor.F32, false, ""},
		{"f16 refused", tensor.F32, tensor.F16, 0, false, "a KV cache holds F32 or BF16, not F16"},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := cpu.New()
			if err := b.SetKVCacheDType(c.def); err != nil {
				t.Fatal(err)
			}
			for _, batch := range []bool{false, true} {
				var kc *Cache
				var err error
				if batch {
					var bc *Batch
					if bc, err = NewBatchOf(b, c.ask, 2, 4, 3, 5); err == nil {
						defer bc.Free()
						kc = bc.Seq(1)
					}
				} else if kc, err = NewOf(b, c.ask, 2, 4, 5); err == nil {
					defer kc.Free()
				}
				if c.wantError != "" {
					if err == nil || !strings.Contains(err.Error(), c.wantError) {
						t.Fatalf("batch %v: error %v, want %q", batch, err, c.wantError)
					}
					if m := b.Memory(); m.InUse[backend.KVCache] != 0 {
						t.Errorf("a refused cache left %d bytes", m.InUse[backend.KVCache])
					}
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				if kc.DType() != c.want || !strings.Contains(kc.String(), "("+c.want.String()+")") {
					t.Errorf("batch %v: DType %s, String %q; want %s", batch, kc.DType(), kc, c.want)
				}
				x := float32(1 + 3.0/256) // a tie: bf16 rounds it to even, 1 + 4/256
				if err := b.Upload(kc.K(1), []float32{x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}); err != nil {
					t.Fatal(err)
				}
				got, _ := b.Download(kc.K(1), nil)
				if want := map[bool]float32{false: x, true: 1 + 4.0/256}[c.rounded]; got[0] != want {
					t.Errorf("batch %v: a cache of %s holds %v for %v, want %v", batch, c.want, got[0], x, want)
				}
			}
		})
	}
}
