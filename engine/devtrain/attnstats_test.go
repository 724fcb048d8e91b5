package devtrain

import (
	"context"
	"fmt"
	"testing"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/cpu"
)

// statsCPU is the CPU reference with backend.AttentionStats by composition: the "statistics"
// of each sequence are the first T·nHeads values of its forward output, and the backward
// refuses statistics that are not those of the output it is given, so a stats view that does
// not line up with its sequence, or a backward that runs without the forward having saved,
// fails the step.
type statsCPU struct {
	*cpu.Backend
	saves, backwards int
}

func (s *statsCPU) AttentionStatsApply(T, headDim int) bool { return T >= 2 }

// seqs calls fn with sequence r's row views of ts (T rows each; stats: T rows of nHeads).
func (s *statsCPU) seqs(T int, ts []backend.Tensor, fn func(vs []backend.Tensor) error) error {
	if T <= 0 || ts[0].Rows()%T != 0 {
		return fmt.Errorf("%d rows are not sequences of %d", ts[0].Rows(), T)
	}
	vs := make([]backend.Tensor, len(ts))
	for r := 0; r < ts[0].Rows()/T; r++ {
		for i, t := range ts {
			v, err := s.RowView(t, r*T, T)
			if err != nil {
				return err
			}
			vs[i] = v
		}
		if err := fn(vs); err != nil {
			return err
		}
	}
	return nil
}

func (s *statsCPU) AttentionSaveStats(out, stats, q, k, v backend.Tensor, T, nHeads, nKV, headDim int) error {
	if stats.Rows()*stats.Cols() != q.Rows()*nHeads {
		return fmt.Errorf("stats [%d, %d] for %d rows of %d heads", stats.Rows(), stats.Cols(), q.Rows(), nHeads)
	}
	return s.seqs(T, []backend.Tensor{out, stats, q, k, v}, func(vs []backend.Tensor) error {
		if err := s.Attention(vs[0], vs[2], vs[3], vs[4], 0, nHeads, nKV, headDim); err != nil {
			return err
		}
		o, err := s.Download(vs[0], nil)
		if err != nil {
			return err
		}
		s.saves++
		return s.Upload(vs[1], o[:vs[1].Rows()*vs[1].Cols()])
	})
}

func (s *statsCPU) AttentionBackwardStats(dq, dk, dv, dout, q, k, v, out, stats backend.Tensor, T, nHeads, nKV, headDim int) error {
	if stats.Rows()*stats.Cols() != q.Rows()*nHeads {
		return fmt.Errorf("stats [%d, %d] for %d rows of %d heads", stats.Rows(), stats.Cols(), q.Rows(), nHeads)
	}
	return s.seqs(T, []backend.Tensor{dq, dk, dv, dout, q, k, v, out, stats}, func(vs []backend.Tensor) error {
		o, err := s.Download(vs[7], nil)
		if err != nil {
			return err
		}
		st, err := s.Download(vs[8], nil)
		if err != nil {
			return err
		}
		for i := range st {
			if st[i] != o[i] {
				return fmt.Errorf("statistics element %d is %v, not this forward's (%v)", i, st[i], o[i])
			}
		}
		s.backwards++
		return s.AttentionBackward(vs[0], vs[1], vs[2], vs[3], vs[4], vs[5], vs[6], vs[7], nHeads, nKV, headDim)
	})
}

// TestAttentionStatsWiring: with a backend that keeps attention statistics, Grads and steps
// give the CPU reference's results bit for bit in every mode (activations kept, recomputed,
// in spans), every backward takes the statistics its own forward saved, and the step's peak
// is PeakPlan's (which counts the statistics).
func TestAttentionStatsWiring(t *testing.T) {
	ctx := context.Background()
	b := chunkBatch()
	gm := tiny(t, "tiny-untied")
	for _, mode := range []struct {
		recompute, fused bool
		chunk            int
	}{{false, false, 0}, {true, false, 0}, {true, true, 12}, {true, true, 24}} {
		what := fmt.Sprintf("recompute=%v fused=%v LayerChunkRows=%d", mode.recompute, mode.fused, mode.chunk)
		opt := DefaultOptions()
		opt.Recompute, opt.FusedOptimizer, opt.ChunkRows, opt.LayerChunkRows = mode.recompute, mode.fused, 7, mode.chunk
		if mode.fused {
			opt.ClipNorm = 0
		}
		ref := newModel(t, gm, opt)
		st := &statsCPU{Backend: cpu.New()}
		m, err := New(st, gm, opt)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		rg, rsum, _, err := ref.Grads(ctx, b)
		if err != nil {
			t.Fatal(err)
		}
		g, sum, _, err := m.Grads(ctx, b)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if sum != rsum {
			t.Fatalf("%s: loss %v, reference %v", what, sum, rsum)
		}
		sameBits(t, what+" gradients", g, rg)
		if st.saves == 0 || st.backwards == 0 {
			t.Fatalf("%s: %d forwards saved statistics, %d backwards used them", what, st.saves, st.backwards)
		}
		rs, s := runSteps(t, ref, b, 2, 1e-3), runSteps(t, m, b, 2, 1e-3)
		for i := range s {
			if s[i].Loss != rs[i].Loss {
				t.Fatalf("%s: step %d loss %v, reference %v", what, i+1, s[i].Loss, rs[i].Loss)
			}
		}
		sameBits(t, what+" weights", exportAll(t, m), exportAll(t, ref))
		var plan int64
		for _, it := range m.PeakPlan(b.B, b.T) {
			plan += it.Bytes
		}
		if got := m.Memory().Peak; got != plan {
			t.Errorf("%s: measured peak %d, plan %d", what, got, plan)
		}
	}
}
