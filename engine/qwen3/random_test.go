package qwen3

import (
	"bytes"
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/qwengo/qwengo/engine/format"
	"github.com/qwengo/qwengo/engine/tensor"
)

// TestRandomSourceReadOrder: a tensor's values depend only on the seed and its name, however
// the source is read — in Stream's order (tensors generated ahead on other goroutines), in
// reverse, skipping around, or one fresh source a tensor — and an unknown name is refused.
func TestRandomSourceReadOrder(t *testing.T) {
	cfg := &Config{VocabSize: 96, HiddenSize: 64, IntermediateSize: 160, NumLayers: 3, NumHeads: 4,
		NumKVHeads: 2, HeadDim: 16, RMSNormEps: 1e-6, RopeTheta: 1e6, MaxPositions: 64, BOSTokenID: -1}
	opt := RandomOptions{Seed: 11, NormJitter: 0.1}
	for _, dt := range []tensor.DType{tensor.BF16, tensor.F32} {
		// The reference: each tensor from a source of its own (nothing generated ahead).
		want := map[string][]byte{}
		for _, ti := range newRandomSource(cfg, opt, dt).Tensors() {
			h, err := newRandomSource(cfg, opt, dt).Read(ti.Name)
			if err != nil {
				t.Fatal(err)
			}
			want[ti.Name] = h.Data
		}
		names := func(src *randomSource) []string {
			var out []string
			for _, ti := range src.Tensors() {
				out = append(out, ti.Name)
			}
			return out
		}
		ref := newRandomSource(cfg, opt, dt)
		forward := names(ref)
		reverse := make([]string, len(forward))
		for i, n := range forward {
			reverse[len(forward)-1-i] = n
		}
		var skipping []string // every third tensor, then the rest in order
		for i := 0; i < len(forward); i += 3 {
			skipping = append(skipping, forward[i])
		}
		for i, n := range forward {
			if i%3 != 0 {
				skipping = append(skipping, n)
			}
		}
		for _, c := range []struct {
			name  string
			order []string
		}{{"stream order", forward}, {"reverse", reverse}, {"skipping", skipping}} {
			t.Run(fmt.Sprintf("%v %s", dt, c.name), func(t *testing.T) {
				src := newRandomSource(cfg, opt, dt)
				for _, n := range c.order {
					h, err := src.Read(n)
					if err != nil {
						t.Fatal(err)
					}
					if h.Name != n || !bytes.Equal(h.Data, want[n]) {
						t.Fatalf("%s: tensor %s differs from its own source's", c.name, n)
					}
				}
			})
		}
		got := map[string]bool{}
		if err := format.Stream(newRandomSource(cfg, opt, dt), func(h *tensor.Host) error {
			if !bytes.Equal(h.Data, want[h.Name]) {
				return fmt.Errorf("tensor %s differs", h.Name)
			}
			got[h.Name] = true
			return nil
		}, nil); err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Fatalf("Stream read %d tensors, want %d", len(got), len(want))
		}
	}
	if _, err := newRandomSource(cfg, opt, tensor.BF16).Read("model.layers.9.mlp.up_proj.weight"); err == nil ||
		!strings.Contains(err.Error(), `no tensor "model.layers.9.mlp.up_proj.weight"`) {
		t.Fatalf("unknown tensor: got %v", err)
	}
	if runtime.GOMAXPROCS(0) > 1 && readAhead() < 2 {
		t.Fatalf("readAhead() = %d with %d cores", readAhead(), runtime.GOMAXPROCS(0))
	}
}
