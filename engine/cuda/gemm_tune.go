//go:build cuda

package cuda

import (
	"fmt"
	"math"
	"os"

	"github.com/qwengo/qwengo/engine/backend"
)

// Per-shape algorithm tuning for the cuBLASLt products.
//
// cuBLASLt's heuristic ranks algorithms by a model, not by measurement; on the training step's
// shapes its first choice was up to 24 % slower than the best of its own top eight
// (TestFiguresGEMMAlgos, session 6 run 1: 1,024×16,384×2,560 0.145 vs 0.121 ms; the layer's
// products 17.2 ms first-choice vs 15.6 ms best, PyTorch 15.7 ms). So a plan keeps the top
// ltCandidates algorithms, and on its gemmTuneAtUse-th launch it times each and keeps the
// fastest. Waiting for a repeated use keeps one-off shapes (a prefill of a new prompt length)
// from paying for the timing; a training step repeats every layer's shapes 36 times, so its
// first step is tuned.
//
// Tuning runs the product as it will run — same pointers, leading dimensions and workspace —
// except where that would change data: a product that accumulates (beta ≠ 0) is timed with
// both operands pointing at a zeroed scratch (allocated for the tuning and freed after it), so
// D = D + alpha·0 leaves D as it was (a −0 element becomes +0). A product that overwrites D (beta = 0) is timed on its real operands:
// the real launch that follows rewrites D.
//
// The pick depends on timings, so two processes may choose different algorithms for a shape
// and round differently; QWENGO_CUDA_GEMM_TUNE=0 keeps the heuristic's first choice
// (reproducible across processes on one machine and library).

const (
	// gemmTuneAtUse is the launch of a plan at which it is tuned.
	gemmTuneAtUse = 3
	// gemmTuneMargin is how much faster another candidate must be than the heuristic's first
	// choice to replace it (noise must not flip a near-tie).
	gemmTuneMargin = 0.02
	// gemmTuneBudgetMs is about how long each candidate is timed for.
	gemmTuneBudgetMs = 2.0
)

// gemmTuneOn reports whether plans are tuned (QWENGO_CUDA_GEMM_TUNE, default on).
func gemmTuneOn() bool { return os.Getenv("QWENGO_CUDA_GEMM_TUNE") != "0" }

// operandBytes is the extent in bytes of a column-major bf16 matrix of the given columns and
// leading dimension: what a product reads of A (columns m when transposed, else k) or B
// (columns k when transposed, else n).
func (s ltShape) operandBytes() (a, b int64) {
	ca, cb := s.k, s.n
	if s.transA {
		ca = s.m
	}
	if s.transB {
		cb = s.k
	}
	return 2 * int64(s.lda) * int64(ca), 2 * int64(s.ldb) * int64(cb)
}

// gemmTuneRecord is one tuned shape (gemmStatus, figures).
type gemmTuneRecord struct {
	shape      ltShape
	pick       int
	firstMs    float64
	bestMs     float64
	candidates int
}

func (r gemmTuneRecord) String() string {
	return fmt.Sprintf("%s: #%d of %d, %.3f → %.3f ms", r.shape.label(), r.pick, r.candidates, r.firstMs, r.bestMs)
}

// maybeTune counts a launch of l's plan and tunes the plan at its gemmTuneAtUse-th launch
// (owner goroutine, before the launch). A failure to tune leaves the first choice in use and
// is not an error of the product: it is kept in g.skip for gemmStatus.
func (b *Backend) maybeTune(l gemmLaunch, alpha float32) {
	g := &b.gemm
	p := l.plan
	if b.capturing { // (a cuBLASLt product fails a capture anyway; its timing must not run in one)
		return
	}
	p.uses++
	if p.uses != gemmTuneAtUse || p.candidates() < 2 || !g.tune {
		return
	}
	rec, err := b.tunePlan(l, alpha)
	if err != nil {
		g.skip = fmt.Sprintf("tuning %s: %v", l.call.shape.label(), err)
		p.use(0)
		return
	}
	g.tuned = append(g.tuned, rec)
}

// tunePlan times every candidate of l's plan and keeps the fastest (see the top of the file).
func (b *Backend) tunePlan(l gemmLaunch, alpha float32) (gemmTuneRecord, error) {
	g := &b.gemm
	p, c := l.plan, l.call
	a, bb, d := l.a, l.b, l.d
	if c.beta != 0 {
		na, nb := c.shape.operandBytes()
		z, err := b.alloc(backend.Workspace, max(na, nb), "zeros for cuBLASLt tuning")
		if err != nil {
			return gemmTuneRecord{}, err
		}
		defer b.free(z)
		if err := memsetD8(z, 0, max(na, nb)); err != nil {
			return gemmTuneRecord{}, err
		}
		a, bb = z, z
	}
	e0, err := eventCreate()
	if err != nil {
		return gemmTuneRecord{}, err
	}
	defer eventDestroy(e0)
	e1, err := eventCreate()
	if err != nil {
		return gemmTuneRecord{}, err
	}
	defer eventDestroy(e1)
	s := c.shape
	estMs := 2 * float64(s.m) * float64(s.n) * float64(s.k) / 600e12 * 1e3 // at ~600 TFLOP/s
	reps := int(min(max(gemmTuneBudgetMs/estMs, 2), 10))
	times := make([]float64, p.candidates())
	for i := range times {
		p.use(i)
		times[i] = math.Inf(1)
		run := func() error { return p.runUntimed(g.h, alpha, c.beta, a, bb, d, g.ws.ptr, gemmWorkspaceBytes) }
		if run() != nil { // this candidate cannot run here (e.g. not supported at launch)
			continue
		}
		if err := eventRecord(e0); err != nil {
			return gemmTuneRecord{}, err
		}
		ok := true
		for r := 0; r < reps && ok; r++ {
			ok = run() == nil
		}
		if err := eventRecord(e1); err != nil {
			return gemmTuneRecord{}, err
		}
		if err := eventSynchronize(e1); err != nil {
			return gemmTuneRecord{}, err
		}
		if ms, err := eventElapsed(e0, e1); err == nil && ok {
			times[i] = ms / float64(reps)
		}
	}
	best := 0
	for i, t := range times {
		if t < times[best] {
			best = i
		}
	}
	if math.IsInf(times[0], 1) && math.IsInf(times[best], 1) {
		return gemmTuneRecord{}, fmt.Errorf("no candidate ran")
	}
	if !math.IsInf(times[0], 1) && times[best] > times[0]*(1-gemmTuneMargin) {
		best = 0
	}
	p.use(best)
	return gemmTuneRecord{shape: s, pick: best, firstMs: times[0], bestMs: times[best], candidates: len(times)}, nil
}
