//go:build cuda

package cuda

import (
	"math"
	"testing"

	"github.com/qwengo/qwengo/engine/backend"
)

// TestFiguresLaunchChain times the bare dependency mechanisms a decode step is built from
// (kernels/probe.cu), with no work behind them, so that a layer's fixed cost can be split into
// what the mechanism costs and what the kernels do:
//   - a chain of dependent kernels replayed from a CUDA graph (no host launch cost), plain and
//     as programmatic dependent launches, for one block, one block an SM and two: µs a link;
//   - a grid-wide barrier inside one resident (cooperative) kernel: µs a round;
//   - a flag handed from block to block inside one resident kernel while every block polls it:
//     µs a hand-over.
//
// Each also checks its result (the chain's count, the barrier's rounds, the flag's value), so a
// probe that skipped a dependency fails instead of timing less.
func TestFiguresLaunchChain(t *testing.T) {
	benchEnabled(t)
	g := openGPU(t)
	cellT, err := g.Alloc(backend.Activations, 1, 1024)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Free(cellT)
	cell := cellT.(*Tensor)
	const links = 256
	for _, blocks := range []int{1, g.sms, 2 * g.sms} {
		for _, pdl := range []bool{false, true} {
			if pdl && !g.launchEx {
				t.Log("no cuLaunchKernelEx: programmatic chains skipped")
				continue
			}
			if err := g.Upload(cellT, make([]float32, 1024)); err != nil {
				t.Fatal(err)
			}
			chain := func() error {
				for i := range links {
					if _, err := launchDepKernel(g.fns["chain_link"], [3]int{blocks, 1, 1}, [3]int{256, 1, 1}, 0, pdl,
						ptrArg(cell.ptr), intArg(i)); err != nil {
						return err
					}
				}
				return nil
			}
			if err := g.do(chain); err != nil { // a first run grows nothing, but CaptureGraph asks for one
				t.Fatal(err)
			}
			gr, err := g.CaptureGraph(func() error { return g.do(chain) })
			if err != nil {
				t.Fatal(err)
			}
			ms, err := timeOnDevice(g, 10, gr.Replay)
			gr.Free()
			if err != nil {
				t.Fatal(err)
			}
			got, err := g.Download(cellT, nil)
			if err != nil {
				t.Fatal(err)
			}
			if n := int(int32(math.Float32bits(got[links]))); n != links {
				t.Fatalf("chain of %d blocks (pdl %v): the last link counted %d, want %d", blocks, pdl, n, links)
			}
			t.Logf("figure launch chain, %4d blocks of 256, %-12s %6.2f us a link (graph of %d links)",
				blocks, map[bool]string{false: "plain", true: "programmatic"}[pdl], ms*1e3/links, links)
		}
	}
	if !g.launchEx {
		t.Skip("no cuLaunchKernelEx: no cooperative launches")
	}
	const rounds = 2000
	for _, blocks := range []int{g.sms, 2 * g.sms} {
		if err := g.Upload(cellT, make([]float32, 1024)); err != nil {
			t.Fatal(err)
		}
		ms, err := timeOnDevice(g, 5, func() error {
			return launchCooperative(g.fns["barrier_rounds"], blocks, 256, 0, ptrArg(cell.ptr), intArg(rounds))
		})
		if err != nil {
			t.Fatal(err)
		}
		got, err := g.Download(cellT, nil)
		if err != nil {
			t.Fatal(err)
		}
		if n := math.Float32bits(got[2]); n != 6*rounds || math.Float32bits(got[0]) != 0 {
			t.Fatalf("barrier over %d blocks: %d rounds completed, counter %d; want %d, 0", blocks, n, math.Float32bits(got[0]), 6*rounds)
		}
		t.Logf("figure grid barrier, %4d blocks of 256:      %6.2f us a round", blocks, ms*1e3/rounds)

		if err := g.Upload(cellT, make([]float32, 1024)); err != nil {
			t.Fatal(err)
		}
		base := 0
		ms, err = timeOnDevice(g, 5, func() error {
			err := launchCooperative(g.fns["flag_relay"], blocks, 32, 0, ptrArg(cell.ptr), intArg(base), intArg(rounds))
			base += rounds
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		got, err = g.Download(cellT, nil)
		if err != nil {
			t.Fatal(err)
		}
		if n := int(math.Float32bits(got[0])); n != base {
			t.Fatalf("flag relay over %d blocks: the flag reads %d, want %d", blocks, n, base)
		}
		t.Logf("figure flag relay, %4d blocks polling:       %6.2f us a hand-over", blocks, ms*1e3/rounds)
	}
}
