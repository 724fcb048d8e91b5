//go:build cuda

package cuda

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/qwengo/qwengo/engine/backend"
)

// TestGraphReplay records y = (y + x)·½ as a graph and replays it three times: the result must
// be what three direct runs give, bit for bit (the same kernels on the same buffers).
func TestGraphReplay(t *testing.T) {
	g := openGPU(t)
	const n = 3000
	x, _ := g.Alloc(backend.Activations, 1, n)
	y, _ := g.Alloc(backend.Activations, 1, n)
	defer g.Free(x)
	defer g.Free(y)
	xs := randn(n, 91, 1)
	if err := g.Upload(x, xs); err != nil {
		t.Fatal(err)
	}
	step := func() error {
		if err := g.Add(y, x); err != nil {
			return err
		}
		return g.Scale(y, 0.5)
	}
	run := func(replay func() error) []float32 {
		if err := g.Upload(y, make([]float32, n)); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 3; i++ {
			if err := replay(); err != nil {
				t.Fatal(err)
			}
		}
		out, err := g.Download(y, nil)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	want := run(step)
	gr, err := g.CaptureGraph(step)
	if err != nil {
		t.Fatal(err)
	}
	defer gr.Free()
	if gr.Nodes() != 2 {
		t.Errorf("graph of Add and Scale: %d nodes, want 2", gr.Nodes())
	}
	got := run(gr.Replay)
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("element %d: replayed %v, direct %v", i, got[i], want[i])
		}
	}
	// The host reference of the same three steps.
	for i, v := range xs {
		r := float32(0)
		for k := 0; k < 3; k++ {
			r = (r + v) * 0.5
		}
		if want[i] != r {
			t.Fatalf("element %d: %v, want %v", i, want[i], r)
		}
	}
}

// TestGraphErrors: what cannot be captured fails with a clear error and leaves the backend
// usable; a failing function, an empty one, nesting and replaying a freed graph are refused.
func TestGraphErrors(t *testing.T) {
	g := openGPU(t)
	x, _ := g.Alloc(backend.Activations, 1, 64)
	defer g.Free(x)
	data := randn(64, 5, 1)
	for _, c := range []struct {
		name string
		f    func() error
		want string
	}{
		{"a host-to-device copy", func() error { return g.Upload(x, data) }, "only kernel launches"},
		{"a failing function", func() error { g.Scale(x, 2); return errors.New("boom") }, "boom"},
		{"no kernel", func() error { return nil }, "no kernel"},
		{"nested", func() error { _, err := g.CaptureGraph(func() error { return g.Scale(x, 2) }); return err }, "do not nest"},
	} {
		gr, err := g.CaptureGraph(c.f)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err %v, want one mentioning %q", c.name, err, c.want)
		}
		if gr != nil {
			t.Errorf("%s: a graph came back with the error", c.name)
		}
		// The backend still works: a direct op and a download.
		if err := g.Upload(x, data); err != nil {
			t.Fatalf("after %s: upload: %v", c.name, err)
		}
		if err := g.Scale(x, 2); err != nil {
			t.Fatalf("after %s: scale: %v", c.name, err)
		}
		got, err := g.Download(x, nil)
		if err != nil || got[7] != 2*data[7] {
			t.Fatalf("after %s: download %v, %v (want %v)", c.name, got[7], err, 2*data[7])
		}
	}
	gr, err := g.CaptureGraph(func() error { return g.Scale(x, 1) })
	if err != nil {
		t.Fatal(err)
	}
	gr.Free()
	gr.Free()
	if err := gr.Replay(); !errors.Is(err, ErrGraphFreed) {
		t.Errorf("replay after free: %v, want ErrGraphFreed", err)
	}
}

// TestFiguresGraph times the launches of a decode step's NVFP4 GEMVs (36 layers × q/k/v, o,
// gate/up, down on one token row) issued one by one against the same kernels replayed as one
// graph: the difference is what launch gaps cost a decode step once kernels are back to back.
func TestFiguresGraph(t *testing.T) {
	benchEnabled(t)
	g := openGPU(t)
	type prod struct {
		ws  []*Weight
		in  *Tensor
		out []*Tensor
	}
	x, _ := g.Alloc(backend.Activations, 1, 9728)
	if err := g.Upload(x, randn(9728, 3, 1)); err != nil {
		t.Fatal(err)
	}
	xv := x.(*Tensor)
	in2560 := &Tensor{rows: 1, cols: 2560, ptr: xv.ptr, cat: xv.cat, owner: g, view: true}
	in4096 := &Tensor{rows: 1, cols: 4096, ptr: xv.ptr, cat: xv.cat, owner: g, view: true}
	var prods []prod
	seed := uint64(1)
	mk := func(N, K int) *Weight {
		seed++
		w, err := g.UploadWeight(backend.HostWeight{Name: fmt.Sprintf("w%d", seed), NVFP4: randomNVFP4(N, K, seed)})
		if err != nil {
			t.Fatal(err)
		}
		return w.(*Weight)
	}
	out := func(N int) *Tensor { o, _ := g.Alloc(backend.Activations, 1, N); return o.(*Tensor) }
	const layers = 4 // distinct weights for 4 layers, launched 9 times over: 36 layers' launches
	for l := 0; l < layers; l++ {
		prods = append(prods,
			prod{[]*Weight{mk(4096, 2560), mk(1024, 2560), mk(1024, 2560)}, in2560, []*Tensor{out(4096), out(1024), out(1024)}},
			prod{[]*Weight{mk(2560, 4096)}, in4096, []*Tensor{out(2560)}},
			prod{[]*Weight{mk(9728, 2560), mk(9728, 2560)}, in2560, []*Tensor{out(9728), out(9728)}},
			prod{[]*Weight{mk(2560, 9728)}, xv, []*Tensor{out(2560)}})
	}
	step := func() error {
		for rep := 0; rep < 36/layers; rep++ {
			for _, p := range prods {
				var err error
				if len(p.ws) == 1 {
					err = g.matmul(p.out[0], p.in, p.ws[0])
				} else {
					err = g.gemvTCMany(p.out, p.in, p.ws)
				}
				if err != nil {
					return err
				}
			}
		}
		return nil
	}
	direct, err := timeOnDevice(g, 10, func() error { return g.do(step) })
	if err != nil {
		t.Fatal(err)
	}
	gr, err := g.CaptureGraph(step)
	if err != nil {
		t.Fatal(err)
	}
	defer gr.Free()
	replay, err := timeOnDevice(g, 10, gr.Replay)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("figure decode-step GEMVs (%d launches): launched one by one %.3f ms, replayed as a graph %.3f ms (%.1f %% less)",
		gr.Nodes(), direct, replay, 100*(direct-replay)/direct)
}
