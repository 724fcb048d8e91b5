package kvcache

import (
	"strings"
	"testing"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/cpu"
)

func TestBatch(t *testing.T) {
	b := cpu.New()
	const layers, width, B, capacity = 2, 4, 3, 5
	c, err := NewBatch(b, layers, width, B, capacity)
	if err != nil {
		t.Fatal(err)
	}
	if got := b.Memory().InUse[backend.KVCache]; got != layers*2*B*capacity*width*4 || c.Bytes() != got {
		t.Fatalf("accounted %d, Bytes %d", got, c.Bytes())
	}
	if c.Size() != B || c.Cap() != capacity || c.Layers() != layers || c.Width() != width || c.K(1).Rows() != B*capacity {
		t.Fatalf("shape: %d sequences of %d, %d layers of %d, K [%d, %d]", c.Size(), c.Cap(), c.Layers(), c.Width(), c.K(1).Rows(), c.K(1).Cols())
	}
	if c.Seq(-1) != nil || c.Seq(B) != nil {
		t.Error("Seq out of range is not nil")
	}

	// A write through sequence 1's cache lands in the batch's rows capacity..2·capacity-1.
	s1 := c.Seq(1)
	row := []float32{1, 2, 3, 4}
	src, _ := b.Alloc(backend.Activations, 1, width)
	if err := b.Upload(src, row); err != nil {
		t.Fatal(err)
	}
	if err := b.CopyRows(s1.V(1), 2, src, 0, 1); err != nil {
		t.Fatal(err)
	}
	all, _ := b.Download(c.V(1), nil)
	if got := all[(capacity+2)*width : (capacity+3)*width]; got[0] != 1 || got[3] != 4 {
		t.Fatalf("row %d of the batch's values: %v", capacity+2, got)
	}
	if err := s1.Commit(3); err != nil {
		t.Fatal(err)
	}
	if err := c.Seq(2).Commit(capacity); err != nil {
		t.Fatal(err)
	}
	if got := c.Lens(); got[0] != 0 || got[1] != 3 || got[2] != capacity {
		t.Fatalf("lengths %v", got)
	}
	// Sequence 2 is full: a batched step fits nowhere and commits nothing.
	if err := c.Commit(1); err == nil || !strings.Contains(err.Error(), "sequence 2: KV cache full") {
		t.Fatalf("commit to a full sequence: %v", err)
	}
	if c.Len(0) != 0 || c.Len(1) != 3 {
		t.Fatalf("a failed commit moved lengths to %v", c.Lens())
	}
	if err := c.Seq(2).Truncate(1); err != nil {
		t.Fatal(err)
	}
	if err := c.Commit(2); err != nil {
		t.Fatal(err)
	}
	if got := c.Lens(); got[0] != 2 || got[1] != 5 || got[2] != 3 {
		t.Fatalf("lengths after commit %v", got)
	}
	if c.BytesUsed() != int64(layers*2*(2+5+3)*width*4) {
		t.Errorf("BytesUsed %d", c.BytesUsed())
	}
	t.Log(c)
	c.Reset()
	if got := c.Lens(); got[0]+got[1]+got[2] != 0 {
		t.Fatalf("lengths after reset %v", got)
	}
	b.Free(src)
	c.Free()
	if b.Memory().Used() != 0 {
		t.Errorf("after Free: %s", b.Memory())
	}
	if err := c.Check(0); err == nil || !strings.Contains(err.Error(), "after Free") {
		t.Errorf("check after Free: %v", err)
	}
	if err := s1.Check(0); err == nil {
		t.Error("a sequence of a freed batch still accepts tokens")
	}
}

// plainBackend hides every method but backend.Backend's: no row views.
type plainBackend struct{ backend.Backend }

func TestBatchErrors(t *testing.T) {
	b := cpu.New()
	for _, c := range []struct {
		name                           string
		b                              backend.Backend
		layers, width, batch, capacity int
		want                           string
	}{
		{"zero sequences", b, 2, 4, 0, 5, "all must be positive"},
		{"zero capacity", b, 2, 4, 3, 0, "all must be positive"},
		{"no row views", plainBackend{b}, 2, 4, 3, 5, "has no row views"},
	} {
		if _, err := NewBatch(c.b, c.layers, c.width, c.batch, c.capacity); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.want)
		}
	}
	b.SetBudget(3 * 2 * 5 * 4 * 4) // room for the first layer's keys and values only
	if _, err := NewBatch(b, 2, 4, 3, 5); err == nil || !strings.Contains(err.Error(), "out of memory budget") {
		t.Errorf("over budget: %v", err)
	}
	if b.Memory().Used() != 0 {
		t.Errorf("a failed NewBatch left %s allocated", backend.Human(b.Memory().Used()))
	}
}
