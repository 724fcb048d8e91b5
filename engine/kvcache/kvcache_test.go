package kvcache

import (
	"errors"
	"strings"
	"testing"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/cpu"
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
