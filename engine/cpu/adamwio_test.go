package cpu

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/optim"
)

// TestAdamWStateRoundTrip trains two steps, copies the state out and into a fresh state of a
// second weight holding the same values, then steps both with the same gradients: weights and
// states must stay identical (what a checkpoint and resume needs), for every format, one row
// and matrices.
func TestAdamWStateRoundTrip(t *testing.T) {
	if backend.AdamWInt8Block != optim.Int8Block || backend.AdamW4bitBlock != optim.Bit4Block {
		t.Fatalf("backend's block sizes %d/%d differ from engine/optim's %d/%d", backend.AdamWInt8Block, backend.AdamW4bitBlock, optim.Int8Block, optim.Bit4Block)
	}
	for _, format := range []string{"fp32", "int8", "4bit"} {
		for _, sh := range [][2]int{{1, 300}, {6, 100}, {129, 65}} {
			name := fmt.Sprintf("%s %v", format, sh)
			b := New()
			rows, cols := sh[0], sh[1]
			n := rows * cols
			r := rand.New(rand.NewPCG(5, uint64(n)))
			init := randVec(r, n, 1)
			w1 := uploadWeight(t, b, "bf16", init, rows, cols)
			s1, err := b.NewAdamWState(format, rows, cols)
			if err != nil {
				t.Fatal(err)
			}
			h := func(step int) backend.AdamWHyper {
				return backend.AdamWHyper{LR: 1e-2, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.1, Step: step, GradScale: 1,
					StochasticRound: true, Seed: 3}
			}
			grads := [][]float32{randVec(r, n, 0.5), randVec(r, n, 0.5), randVec(r, n, 0.5), randVec(r, n, 0.5)}
			for step := 1; step <= 2; step++ {
				if err := b.AdamW(w1, upload(t, b, rows, cols, grads[step-1]), s1, h(step)); err != nil {
					t.Fatal(name, err)
				}
			}
			saved, err := b.ReadAdamWState(s1)
			if err != nil {
				t.Fatal(name, err)
			}
			if err := backend.CheckAdamWMoments(saved, format, rows, cols); err != nil {
				t.Fatal(name, err)
			}
			hw, _ := b.DownloadWeight(w1)
			now, _ := hw.Dense.Float32s(nil)
			w2 := uploadWeight(t, b, "bf16", now, rows, cols)
			s2, err := b.NewAdamWState(format, rows, cols)
			if err != nil {
				t.Fatal(err)
			}
			if err := b.WriteAdamWState(s2, saved); err != nil {
				t.Fatal(name, err)
			}
			for step := 3; step <= 4; step++ {
				g := upload(t, b, rows, cols, grads[step-1])
				if err := firstErr(b.AdamW(w1, g, s1, h(step)), b.AdamW(w2, g, s2, h(step))); err != nil {
					t.Fatal(name, err)
				}
			}
			a1, _ := b.ReadAdamWState(s1)
			a2, _ := b.ReadAdamWState(s2)
			h1, _ := b.DownloadWeight(w1)
			h2, _ := b.DownloadWeight(w2)
			v1, _ := h1.Dense.Float32s(nil)
			v2, _ := h2.Dense.Float32s(nil)
			if !slices.Equal(v1, v2) || !slices.Equal(a1.M, a2.M) || !slices.Equal(a1.V, a2.V) ||
				!slices.Equal(a1.MScale, a2.MScale) || !slices.Equal(a1.VScale, a2.VScale) {
				t.Fatalf("%s: after a round trip the next steps differ (weights by %.3g)", name, maxDiff(v1, v2))
			}
		}
	}
}

// TestAdamWStateIOErrors: a state of another format or shape, a short part, a freed or foreign
// state are refused by name, and a refused write changes nothing.
func TestAdamWStateIOErrors(t *testing.T) {
	b := New()
	st, _ := b.NewAdamWState("int8", 2, 64)
	good, err := b.ReadAdamWState(st)
	if err != nil {
		t.Fatal(err)
	}
	good.M[0] = 7
	short := *good
	short.MScale = short.MScale[:1]
	other, _ := b.NewAdamWState("4bit", 2, 64)
	wrong, _ := b.ReadAdamWState(other)
	freed, _ := b.NewAdamWState("fp32", 1, 4)
	b.FreeAdamWState(freed)
	foreign, _ := New().NewAdamWState("int8", 2, 64)
	for _, c := range []struct {
		name string
		st   backend.AdamWState
		m    *backend.AdamWMoments
		want string
	}{
		{"short scales", st, &short, "m scales has 1 entries, want 2"},
		{"other format", st, wrong, "4bit [2, 64] for a int8 [2, 64]"},
		{"nil", st, nil, "none"},
		{"freed", freed, good, "freed"},
		{"foreign", foreign, good, "another backend"},
	} {
		if err := b.WriteAdamWState(c.st, c.m); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error mentioning %q", c.name, err, c.want)
		}
	}
	after, _ := b.ReadAdamWState(st)
	if after.M[0] != 0 {
		t.Errorf("a refused write changed the state")
	}
	if err := b.WriteAdamWState(st, good); err != nil {
		t.Fatal(err)
	}
	if after, _ = b.ReadAdamWState(st); after.M[0] != 7 {
		t.Errorf("write did not land: m[0] = %d", after.M[0])
	}
}
