//go:build cuda

package cuda

import (
	"errors"
	"fmt"
)

// CUDA graphs: the kernels a function launches, recorded once by stream capture and replayed
// with one launch. A replay runs the recorded kernels with the arguments they had when
// recorded — the same tensors, shapes, positions — so it serves work that repeats exactly (a
// fixed-shape step over the same buffers); it saves the host's per-kernel launch work and the
// gaps between kernels. Measured reason the model does not use one yet (NOTES.md, session 4):
// batch-1 decode is kernel-bound (per-layer kernel time ≈ wall time since programmatic
// dependent launch), and batched decode's per-step arguments (positions, cache rows, key
// splits) change every step; its launch gaps are ≤ 7 % of a step.

// Graph is an instantiated CUDA graph recorded by Backend.CaptureGraph.
type Graph struct {
	b     *Backend
	exec  graphExec
	nodes int
}

// ErrGraphFreed is returned by Replay on a freed graph.
var ErrGraphFreed = errors.New("cuda: graph: freed")

// CaptureGraph runs f on the owner goroutine with the backend's kernel stream in capture mode
// and returns the graph of the kernels f launched: they are recorded, not run. Only kernel
// launches can be captured: an operation that copies between host and device, sets or
// allocates device memory on the default stream, or calls cuBLASLt makes the capture fail with
// an error (and the backend stays usable). Run f once without capturing first, so that the
// workspaces its ops grow on first use exist; every tensor f touches must outlive the graph.
// Captures do not nest.
func (b *Backend) CaptureGraph(f func() error) (*Graph, error) {
	var g *Graph
	err := b.do(func() error {
		if !graphInit() {
			return errors.New("cuda: graph capture: the driver lacks the CUDA graph entry points")
		}
		if b.capturing {
			return errors.New("cuda: graph capture: already capturing (captures do not nest)")
		}
		if err := captureBegin(); err != nil {
			return fmt.Errorf("cuda: graph capture: %w", err)
		}
		b.capturing = true
		ended := false
		defer func() { // f panicked: leave the stream out of capture mode
			if !ended {
				b.capturing = false
				captureEnd(false)
			}
		}()
		ferr := f()
		b.capturing, ended = false, true
		exec, nodes, err := captureEnd(ferr == nil)
		switch {
		case ferr != nil:
			return fmt.Errorf("cuda: graph capture: the captured function failed (only kernel launches can be captured): %w", ferr)
		case err != nil:
			return fmt.Errorf("cuda: graph capture: %w (only kernel launches can be captured)", err)
		case nodes == 0:
			graphFree(exec)
			return errors.New("cuda: graph capture: the function launched no kernel")
		}
		g = &Graph{b: b, exec: exec, nodes: nodes}
		b.graphs[g] = struct{}{}
		return nil
	})
	return g, err
}

// Nodes is the number of operations the graph replays.
func (g *Graph) Nodes() int { return g.nodes }

// Replay launches the graph's kernels on the backend's stream, after the work already queued
// there, as one launch; like any op, its results are visible to the next op or download.
func (g *Graph) Replay() error {
	return g.b.do(func() error {
		if g.exec == nil {
			return ErrGraphFreed
		}
		if g.b.capturing {
			return errors.New("cuda: graph replay: not while capturing")
		}
		if err := graphReplay(g.exec); err != nil {
			return fmt.Errorf("cuda: graph replay (%d nodes): %w", g.nodes, err)
		}
		return nil
	})
}

// Free destroys the graph; Replay fails afterwards. Freeing twice is a no-op.
func (g *Graph) Free() {
	g.b.do(func() error {
		if g.exec != nil {
			graphFree(g.exec)
			g.exec = nil
			delete(g.b.graphs, g)
		}
		return nil
	})
}

// freeGraphs destroys every graph still alive (teardown, owner goroutine).
func (b *Backend) freeGraphs() {
	for g := range b.graphs {
		graphFree(g.exec)
		g.exec = nil
	}
	clear(b.graphs)
}
