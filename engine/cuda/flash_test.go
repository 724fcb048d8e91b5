//go:build cuda

package cuda

import (
	"fmt"
	"math"
	"testing"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/cpu"
)

// TestFlashAttention compares the tensor-core prefill attention with the CPU reference and with
// the GPU's fp32 kernel, over GQA ratios, cache offsets (pos0 > 0: a prompt chunk after a cached
// prefix), row counts that are not multiples of the 64-row block or the 64-key tile, and a cache
// longer than what is attended to. Bound: Q, K, V and P are rounded to bf16 (2^-9 relative),
// sums are fp32, so max|gpu − cpu| / max|cpu| stays within 1e-2.
func TestFlashAttention(t *testing.T) {
	g := openGPU(t)
	c := cpu.New()
	const bound = 1e-2
	for _, s := range []struct{ T, pos0, heads, kv int }{
		{16, 0, 4, 2}, {64, 0, 8, 2}, {100, 37, 4, 1}, {200, 0, 32, 8}, {130, 1000, 4, 2}, {17, 5, 2, 2}, {65, 63, 4, 4},
	} {
		const hd = 128
		name := fmt.Sprintf("flash T=%d pos0=%d heads=%d/%d", s.T, s.pos0, s.heads, s.kv)
		if !g.useFlash(s.T, hd) {
			t.Fatalf("%s: the flash kernel is not selected", name)
		}
		n := s.pos0 + s.T + 5
		qh := randn(s.T*s.heads*hd, 14, 1)
		kh := randn(n*s.kv*hd, 15, 1)
		cq, gq := pair(t, c, g, s.T, s.heads*hd, qh)
		ck, gk := pair(t, c, g, n, s.kv*hd, kh)
		cv, gv := pair(t, c, g, n, s.kv*hd, randn(n*s.kv*hd, 16, 1))
		co, gO := pair(t, c, g, s.T, s.heads*hd, nil)
		_, gS := pair(t, c, g, s.T, s.heads*hd, nil)
		if err := c.Attention(co, cq, ck, cv, s.pos0, s.heads, s.kv, hd); err != nil {
			t.Fatal(err)
		}
		if err := g.Attention(gO, gq, gk, gv, s.pos0, s.heads, s.kv, hd); err != nil {
			t.Fatal(err)
		}
		compare(t, name, c, g, co, gO, bound)

		// The fp32 kernel on the same inputs, and the log-sum-exp output against float64.
		lse, err := g.Alloc(backend.Workspace, s.heads, s.T)
		if err != nil {
			t.Fatal(err)
		}
		err = g.do(func() error {
			g.attnSIMT = true
			defer func() { g.attnSIMT = false }()
			if err := g.attention(gS.(*Tensor), gq.(*Tensor), gk.(*Tensor), gv.(*Tensor), s.pos0, s.heads, s.kv, hd); err != nil {
				return err
			}
			return g.flashAttention(gO.(*Tensor).ptr, lse.(*Tensor).ptr, gq.(*Tensor), gk.(*Tensor), gv.(*Tensor), s.pos0, s.heads, s.kv, 1)
		})
		if err != nil {
			t.Fatal(err)
		}
		compare(t, name+" vs fp32 kernel", c, g, co, gS, 1e-5)
		got, err := g.Download(lse, nil)
		if err != nil {
			t.Fatal(err)
		}
		g.Free(lse)
		var worst float64
		for h := 0; h < s.heads; h++ {
			kvh := h / (s.heads / s.kv)
			for r := 0; r < s.T; r++ {
				var dots []float64
				mx := math.Inf(-1)
				for j := 0; j <= s.pos0+r; j++ {
					var d float64
					for i := 0; i < hd; i++ {
						d += float64(qh[r*s.heads*hd+h*hd+i]) * float64(kh[j*s.kv*hd+kvh*hd+i])
					}
					d /= math.Sqrt(hd)
					dots = append(dots, d)
					mx = max(mx, d)
				}
				var sum float64
				for _, d := range dots {
					sum += math.Exp(d - mx)
				}
				want := mx + math.Log(sum)
				worst = max(worst, math.Abs(float64(got[h*s.T+r])-want)/max(1, math.Abs(want)))
			}
		}
		// Scores of ~N(0, 1) inputs are ~N(0, 1); bf16 operands move them by ~1e-2.
		if worst > 2e-2 {
			t.Errorf("%s: log-sum-exp off by %.3g (relative)", name, worst)
		}
	}
}

// TestFlashAttentionBackward compares the tensor-core backward (flash_bwd.cu) with the CPU
// reference: GQA ratios 1-4, row counts off the 64/32-row tiles, one query block and many. bf16
// operands and P, dS rounded to bf16 give ~1e-2 relative error; bound 3e-2 per gradient. Two
// runs must agree bit for bit (no atomics).
func TestFlashAttentionBackward(t *testing.T) {
	g, c, ct := trainPair(t)
	const bound = 3e-2
	for i, s := range []struct{ T, nH, nKV int }{{16, 2, 1}, {64, 4, 2}, {130, 4, 1}, {200, 8, 2}, {333, 32, 8}} {
		const hd = 128
		name := fmt.Sprintf("flash backward T%d heads %d/%d", s.T, s.nH, s.nKV)
		if !g.useFlashBackward(s.T, hd) {
			t.Fatalf("%s: the flash kernels are not selected", name)
		}
		ci, gi := attentionInputs(t, c, g, s.T, s.nH, s.nKV, hd, uint64(700+10*i))
		qw, kw := s.nH*hd, s.nKV*hd
		cdq, gdq := pair(t, c, g, s.T, qw, nil)
		cdk, gdk := pair(t, c, g, s.T, kw, nil)
		cdv, gdv := pair(t, c, g, s.T, kw, nil)
		if err := ct.AttentionBackward(cdq, cdk, cdv, ci[3], ci[0], ci[1], ci[2], ci[4], s.nH, s.nKV, hd); err != nil {
			t.Fatalf("%s: cpu: %v", name, err)
		}
		var first [3][]float32
		for rep := 0; rep < 2; rep++ {
			if err := g.AttentionBackward(gdq, gdk, gdv, gi[3], gi[0], gi[1], gi[2], gi[4], s.nH, s.nKV, hd); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			got := [3][]float32{download(t, g, gdq), download(t, g, gdk), download(t, g, gdv)}
			if rep == 0 {
				first = got
				compare(t, name+" dq", c, g, cdq, gdq, bound)
				compare(t, name+" dk", c, g, cdk, gdk, bound)
				compare(t, name+" dv", c, g, cdv, gdv, bound)
				continue
			}
			for k := range got {
				for j := range got[k] {
					if math.Float32bits(got[k][j]) != math.Float32bits(first[k][j]) {
						t.Fatalf("%s: gradient %d element %d differs between two runs (%g, %g)", name, k, j, first[k][j], got[k][j])
					}
				}
			}
		}
		// backend.AttentionStats: the forward's saved log-sum-exp instead of a third forward
		// gives the same bits, and the forward that saves them the usual output.
		if !g.AttentionStatsApply(s.T, hd) {
			t.Fatalf("%s: AttentionStatsApply false where the flash kernels run", name)
		}
		_, gout := pair(t, c, g, s.T, qw, nil)
		_, gplain := pair(t, c, g, s.T, qw, nil)
		_, stats := pair(t, c, g, s.T, s.nH, nil)
		if err := firstErr(g.AttentionSaveStats(gout, stats, gi[0], gi[1], gi[2], s.T, s.nH, s.nKV, hd),
			g.Attention(gplain, gi[0], gi[1], gi[2], 0, s.nH, s.nKV, hd)); err != nil {
			t.Fatalf("%s: forward saving statistics: %v", name, err)
		}
		sameBits(t, name+" forward output (saving statistics)", download(t, g, gout), download(t, g, gplain))
		if err := g.AttentionBackwardStats(gdq, gdk, gdv, gi[3], gi[0], gi[1], gi[2], gi[4], stats, s.T, s.nH, s.nKV, hd); err != nil {
			t.Fatalf("%s: backward from saved statistics: %v", name, err)
		}
		for k, gt := range []backend.Tensor{gdq, gdk, gdv} {
			sameBits(t, fmt.Sprintf("%s gradient %d from saved statistics", name, k), download(t, g, gt), first[k])
		}
		// Wrong-sized statistics are refused before anything runs.
		_, small := pair(t, c, g, s.T, 1, nil)
		if err := g.AttentionBackwardStats(gdq, gdk, gdv, gi[3], gi[0], gi[1], gi[2], gi[4], small, s.T, s.nH, s.nKV, hd); err == nil {
			t.Errorf("%s: statistics of %d elements accepted for %d heads", name, s.T, s.nH)
		}
	}
}

// TestFiguresFlash times prefill attention at Qwen3-4B heads (32 query, 8 KV, head_dim 128) on
// the flash kernel and on the fp32 kernel, side by side (QWENGO_CUDA_BENCH=1).
func TestFiguresFlash(t *testing.T) {
	benchEnabled(t)
	g := openGPU(t)
	alloc := func(rows, cols int) *Tensor { return randTensor(t, g, rows, cols) }
	for _, s := range []struct{ T, pos0, reps int }{{512, 0, 20}, {2048, 0, 10}, {8192, 0, 3}, {512, 1536, 10}} {
		n := s.pos0 + s.T
		q, k, v, o := alloc(s.T, 4096), alloc(n, 1024), alloc(n, 1024), alloc(s.T, 4096)
		var keys float64
		for r := 0; r < s.T; r++ {
			keys += float64(s.pos0 + r + 1)
		}
		flops := 4 * keys * 32 * 128 // q·k and p·v over the keys each row attends to
		for _, simt := range []bool{false, true} {
			if simt && s.T > 2048 {
				continue // ~0.6 s a call
			}
			ms, err := timeOnDevice(g, s.reps, func() error {
				g.attnSIMT = simt
				defer func() { g.attnSIMT = false }()
				return g.attention(o, q, k, v, s.pos0, 32, 8, 128)
			})
			if err != nil {
				t.Fatal(err)
			}
			kind := "flash (bf16 mma)"
			if simt {
				kind = "fp32 SIMT"
			}
			t.Logf("figure attention %s T=%d context %d: %.3f ms, %.1f TFLOP/s", kind, s.T, n, ms, flops/ms/1e9)
		}
	}
	// Backward (pos0 = 0): flash kernels against the fp32 kernels. FLOPs: the forward's two
	// products again (the recomputed forward), then S, dP, dV, dK in flash_bwd_dkdv and S, dP,
	// dQ in flash_bwd_dq: 9 products over the causal triangle.
	for _, T := range []int{512, 2048} {
		q, k, v, o, do := alloc(T, 4096), alloc(T, 1024), alloc(T, 1024), alloc(T, 4096), alloc(T, 4096)
		dq, dk, dv := alloc(T, 4096), alloc(T, 1024), alloc(T, 1024)
		keys := float64(T) * float64(T+1) / 2
		flops := 9 * 2 * keys * 32 * 128
		for _, simt := range []bool{false, true} {
			ms, err := timeOnDevice(g, 3, func() error {
				g.attnSIMT = simt
				defer func() { g.attnSIMT = false }()
				if simt {
					return g.AttentionBackward(dq, dk, dv, do, q, k, v, o, 32, 8, 128)
				}
				return g.flashBackward(dq, dk, dv, do, q, k, v, o, 0, 32, 8, 1)
			})
			if err != nil {
				t.Fatal(err)
			}
			kind := "flash (bf16 mma)"
			if simt {
				kind = "fp32 SIMT"
			}
			t.Logf("figure attention backward %s T=%d: %.3f ms, %.1f TFLOP/s", kind, T, ms, flops/ms/1e9)
		}
		// From the forward's saved log-sum-exp (AttentionStats): 7 products, not 9.
		stats := alloc(T, 32)
		if err := g.AttentionSaveStats(o, stats, q, k, v, T, 32, 8, 128); err != nil {
			t.Fatal(err)
		}
		ms, err := timeOnDevice(g, 3, func() error { return g.flashBackward(dq, dk, dv, do, q, k, v, o, stats.ptr, 32, 8, 1) })
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("figure attention backward flash from saved statistics T=%d: %.3f ms, %.1f TFLOP/s", T, ms, flops*7/9/ms/1e9)
	}
	// A training span's batch in one launch per kernel (AttentionStats, grid.z) against the
	// same sequences one call each: 8 × 2048 rows.
	{
		const B, T = 8, 2048
		q, k, v, o, do := alloc(B*T, 4096), alloc(B*T, 1024), alloc(B*T, 1024), alloc(B*T, 4096), alloc(B*T, 4096)
		dq, dk, dv, stats := alloc(B*T, 4096), alloc(B*T, 1024), alloc(B*T, 1024), alloc(B*T, 32)
		flops := float64(B) * 7 * 2 * float64(T) * float64(T+1) / 2 * 32 * 128
		fwdFlops := float64(B) * 4 * float64(T) * float64(T+1) / 2 * 32 * 128
		for _, batched := range []bool{false, true} {
			seqs := 1
			if batched {
				seqs = B
			}
			sub := func(x *Tensor, r int) *Tensor {
				n := x.rows / B * seqs
				return &Tensor{rows: n, cols: x.cols, ptr: x.ptr + devPtr(4*int64(r)*int64(n)*int64(x.cols)), cat: x.cat, owner: g, view: true}
			}
			fwd, err := timeOnDevice(g, 3, func() error {
				for r := 0; r < B/seqs; r++ {
					st := sub(stats, r)
					if err := g.flashAttention(sub(o, r).ptr, st.ptr, sub(q, r), sub(k, r), sub(v, r), 0, 32, 8, seqs); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			bwd, err := timeOnDevice(g, 3, func() error {
				for r := 0; r < B/seqs; r++ {
					if err := g.flashBackward(sub(dq, r), sub(dk, r), sub(dv, r), sub(do, r), sub(q, r), sub(k, r), sub(v, r), sub(o, r),
						sub(stats, r).ptr, 32, 8, seqs); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			kind := "one sequence a launch"
			if batched {
				kind = "8 sequences a launch"
			}
			t.Logf("figure attention 8x2048 %s: forward %.3f ms (%.1f TFLOP/s), backward from saved statistics %.3f ms (%.1f TFLOP/s)",
				kind, fwd, fwdFlops/fwd/1e9, bwd, flops/bwd/1e9)
		}
	}
}

// sameBits fails unless got and want are the same floats bit for bit.
func sameBits(t *testing.T, name string, got, want []float32) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", name, len(got), len(want))
	}
	for i := range got {
		if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
			t.Fatalf("%s: element %d is %g, want %g (bit for bit)", name, i, got[i], want[i])
		}
	}
}

// TestFlashBatched: several sequences in one AttentionSaveStats / AttentionBackwardStats call
// (grid.z) give exactly what Attention and AttentionBackward give per sequence, and rows that
// are not whole sequences are refused.
func TestFlashBatched(t *testing.T) {
	g := openGPU(t)
	const B, T, nH, nKV, hd = 3, 130, 4, 2, 128
	if !g.AttentionStatsApply(T, hd) {
		t.Skip("the flash kernels do not take this shape here")
	}
	qw, kw := nH*hd, nKV*hd
	q, k, v, do := randTensor(t, g, B*T, qw), randTensor(t, g, B*T, kw), randTensor(t, g, B*T, kw), randTensor(t, g, B*T, qw)
	if err := firstErr(g.Upload(k, randn(B*T*kw, 41, 1)), g.Upload(v, randn(B*T*kw, 42, 1)), g.Upload(do, randn(B*T*qw, 43, 1))); err != nil {
		t.Fatal(err)
	}
	out1, out2, stats := randTensor(t, g, B*T, qw), randTensor(t, g, B*T, qw), randTensor(t, g, B*T, nH)
	dq1, dk1, dv1 := randTensor(t, g, B*T, qw), randTensor(t, g, B*T, kw), randTensor(t, g, B*T, kw)
	dq2, dk2, dv2 := randTensor(t, g, B*T, qw), randTensor(t, g, B*T, kw), randTensor(t, g, B*T, kw)
	view := func(x *Tensor, r int) backend.Tensor {
		vw, err := g.RowView(x, r*T, T)
		if err != nil {
			t.Fatal(err)
		}
		return vw
	}
	for r := 0; r < B; r++ {
		if err := g.Attention(view(out1, r), view(q, r), view(k, r), view(v, r), 0, nH, nKV, hd); err != nil {
			t.Fatal(err)
		}
		if err := g.AttentionBackward(view(dq1, r), view(dk1, r), view(dv1, r), view(do, r), view(q, r), view(k, r), view(v, r),
			view(out1, r), nH, nKV, hd); err != nil {
			t.Fatal(err)
		}
	}
	if err := g.AttentionSaveStats(out2, stats, q, k, v, T, nH, nKV, hd); err != nil {
		t.Fatal(err)
	}
	sameBits(t, "batched forward", download(t, g, out2), download(t, g, out1))
	if err := g.AttentionBackwardStats(dq2, dk2, dv2, do, q, k, v, out1, stats, T, nH, nKV, hd); err != nil {
		t.Fatal(err)
	}
	sameBits(t, "batched dq", download(t, g, dq2), download(t, g, dq1))
	sameBits(t, "batched dk", download(t, g, dk2), download(t, g, dk1))
	sameBits(t, "batched dv", download(t, g, dv2), download(t, g, dv1))
	if err := g.AttentionSaveStats(out2, stats, q, k, v, T+1, nH, nKV, hd); err == nil {
		t.Errorf("%d rows taken as sequences of %d", B*T, T+1)
	}
}
