//go:build cuda

package cuda

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/qwengo/qwengo/engine/qwen3"
)

// stampStep runs one decode step (one, from decodeSteppers) with the GEMVs stamped when stamp
// is set, and returns the logits and the stamped launches with their blocks' records.
func stampStep(t *testing.T, g *Backend, one func() ([]float32, error), stamp bool) ([]float32, []tcpStampLaunch, [][]tcpBlockStamps) {
	t.Helper()
	if stamp {
		if err := g.startGEMVStamps(32 << 20); err != nil {
			t.Fatal(err)
		}
	}
	lg, err := one()
	if err != nil {
		t.Fatal(err)
	}
	if !stamp {
		return lg, nil, nil
	}
	launches, blocks, dropped, err := g.stopGEMVStamps()
	if err != nil {
		t.Fatal(err)
	}
	if dropped != 0 {
		t.Fatalf("%d launches found the stamps buffer full", dropped)
	}
	return lg, launches, blocks
}

// decodeSteppers builds the batch-1 and batch-8 single steps of TestGEMVStamps and the figure:
// each call truncates its cache(s) back to ctxLen tokens and decodes one token, returning the
// logits (nil for LogitsNone).
func decodeSteppers(t *testing.T, m *qwen3.Model, ctxLen int, mode qwen3.LogitsMode) (b1, b8 func() ([]float32, error)) {
	t.Helper()
	ctx := context.Background()
	vocab := m.Config.VocabSize
	cache, err := m.NewKVCache(ctxLen + 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cache.Free() })
	ids := make([]int, ctxLen)
	for i := range ids {
		ids[i] = (i * 7) % vocab
	}
	if _, err := m.Forward(ctx, ids, cache, qwen3.LogitsNone); err != nil {
		t.Fatal(err)
	}
	b1 = func() ([]float32, error) {
		if err := cache.Truncate(ctxLen); err != nil {
			return nil, err
		}
		lg, err := m.Forward(ctx, []int{3}, cache, mode)
		if err != nil || lg == nil {
			return nil, err
		}
		return lg.Data, nil
	}
	const B = 8
	bc, err := m.NewBatchKVCache(B, ctxLen+4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bc.Free() })
	for r := 0; r < B; r++ {
		p := make([]int, ctxLen)
		for i := range p {
			p[i] = (i*37 + r*101) % vocab
		}
		if _, err := m.Forward(ctx, p, bc.Seq(r), qwen3.LogitsNone); err != nil {
			t.Fatal(err)
		}
	}
	b8 = func() ([]float32, error) {
		for r := 0; r < B; r++ {
			if err := bc.Seq(r).Truncate(ctxLen); err != nil {
				return nil, err
			}
		}
		next := []int{1, 2, 3, 4, 5, 6, 7, 8}
		lg, err := m.ForwardBatch(ctx, next, bc, mode)
		if err != nil || lg == nil {
			return nil, err
		}
		return lg.Data, nil
	}
	return b1, b8
}

// TestGEMVStamps: a decode step with the GEMVs' stamped entry points gives the same logits bit
// for bit as without, at batch 1 (the block-merge norm and acc forms, SwiGLU + down, all in their
// one-row column-scale forms) and batch 8
// (the two-pass forms); the stamped launches are the step's GEMVs and every block's stamps are in
// order on a real SM.
func TestGEMVStamps(t *testing.T) {
	g := openGPU(t)
	_, m := randomLayers4B(t, g, 2)
	defer m.Free()
	b1, b8 := decodeSteppers(t, m, 40, qwen3.LogitsLast)
	for _, c := range []struct {
		name  string
		step  func() ([]float32, error)
		kinds []string // kernels the step must have stamped
	}{
		{"batch 1", b1, []string{"gemv_nvfp4_tcp1_8x4_norm_bm_cs", "gemv_nvfp4_tcp1_8x4_acc_bm_cs", "gemv_nvfp4_tcp1_8x4_swiacc_cs"}},
		{"batch 8", b8, []string{"gemv_nvfp4_tcp2_8x4"}},
	} {
		want, _, _ := stampStep(t, g, c.step, false)
		got, launches, blocks := stampStep(t, g, c.step, true)
		if len(got) == 0 || len(got) != len(want) {
			t.Fatalf("%s: %d logits with stamps, %d without", c.name, len(got), len(want))
		}
		for i := range want {
			if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
				t.Fatalf("%s: logit %d is %v with stamps, %v without", c.name, i, got[i], want[i])
			}
		}
		seen := map[string]int{}
		for i, l := range launches {
			seen[l.name]++
			for bi, r := range blocks[i] {
				if r.ns[0] == 0 || r.ns[4] < r.ns[0] || r.sm < 0 || r.sm >= g.sms {
					t.Fatalf("%s: %v block %d: stamps %v on SM %d", c.name, l, bi, r.ns, r.sm)
				}
				prev := r.ns[0]
				for k := 1; k < 5; k++ {
					if r.ns[k] != 0 && r.ns[k] < prev {
						t.Fatalf("%s: %v block %d: stamp %d (%d) before stamp %d (%d)", c.name, l, bi, k, r.ns[k], k-1, prev)
					}
					if r.ns[k] != 0 {
						prev = r.ns[k]
					}
				}
			}
		}
		for _, k := range c.kinds {
			if seen[k] == 0 {
				t.Errorf("%s: no %s launch was stamped (stamped: %v)", c.name, k, seen)
			}
		}
		t.Logf("%s: %d stamped launches %v", c.name, len(launches), seen)
	}
}

// TestFiguresGEMVStamps times the inside of every decode GEMV launch of one step (figLayers(2)
// Qwen3-4B layers; batch 1 at contexts 512 and 8192, batch 8 at 1024; fused forms as decode
// runs them) from the blocks' stamps: per launch, its span (first block's start to last block's
// end), the gap since the previous GEMV's last block ended, and the blocks' median and slowest
// times waiting for the previous kernel (start → pdl_wait), staging x, in warp 0's loop and in
// the tail (the merge), in µs. The first layer's launches are skipped (the step's first kernels
// follow host work). QWENGO_CUDA_STAMPS_DIR=dir also writes every block's stamps of each case to
// dir/stamps_b{batch}_ctx{context}.csv (writeStampsCSV).
func TestFiguresGEMVStamps(t *testing.T) {
	benchEnabled(t)
	g := openGPU(t)
	layers := figLayers(2)
	_, m := randomLayers4B(t, g, layers)
	defer m.Free()
	for _, c := range []struct {
		batch, ctx int
	}{{1, 512}, {1, 8192}, {8, 1024}} {
		b1, b8 := decodeSteppers(t, m, c.ctx, qwen3.LogitsNone)
		step := b1
		if c.batch == 8 {
			step = b8
		}
		for range 4 { // warm-up: workspaces grown, stamped kernels loaded
			stampStep(t, g, step, true)
		}
		_, launches, blocks := stampStep(t, g, step, true)
		if dir := os.Getenv("QWENGO_CUDA_STAMPS_DIR"); dir != "" {
			path := filepath.Join(dir, fmt.Sprintf("stamps_b%d_ctx%d.csv", c.batch, c.ctx))
			if err := writeStampsCSV(path, launches, blocks); err != nil {
				t.Fatal(err)
			}
		}
		per := len(launches) / layers
		var prevEnd uint64
		for i, l := range launches {
			st := summarizeStamps(blocks[i])
			if i >= per { // not the first layer
				t.Logf("figure gemv stamps b%d ctx %5d %-30s %4d blocks on %3d SMs: span %6.2f gap %5.2f | wait %5.2f/%5.2f stage %5.2f/%5.2f loop %5.2f/%5.2f tail %5.2f/%5.2f µs (median/slowest block)",
					c.batch, c.ctx, strings.TrimPrefix(l.name, "gemv_nvfp4_"), l.blocks, st.sms, st.span, us(int64(st.firstWait)-int64(prevEnd)),
					st.med[0], st.max[0], st.med[1], st.max[1], st.med[2], st.max[2], st.med[3], st.max[3])
			}
			prevEnd = st.lastEnd
		}
	}
}

// writeStampsCSV writes every block's record of one step (a row per block: launch index, kernel,
// block, SM, then its five stamps in ns from the step's earliest stamp, 0 where the block skipped
// the point) for analysis outside the test; atomically (a temporary file renamed over path).
func writeStampsCSV(path string, launches []tcpStampLaunch, blocks [][]tcpBlockStamps) error {
	origin := uint64(math.MaxUint64)
	for _, recs := range blocks {
		for _, r := range recs {
			origin = min(origin, r.ns[0])
		}
	}
	var b bytes.Buffer
	b.WriteString("launch,kernel,block,sm,start,waited,staged,looped,end\n")
	for i, l := range launches {
		for bi, r := range blocks[i] {
			fmt.Fprintf(&b, "%d,%s,%d,%d", i, l.name, bi, r.sm)
			for _, ns := range r.ns {
				if ns == 0 {
					b.WriteString(",0")
					continue
				}
				fmt.Fprintf(&b, ",%d", ns-origin)
			}
			b.WriteByte('\n')
		}
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b.Bytes(), 0o644); err != nil {
		return fmt.Errorf("stamps csv: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("stamps csv: %w", err)
	}
	return nil
}

// stampSummary condenses one launch's block records.
type stampSummary struct {
	span               float64    // µs from the first block's start to the last block's end
	firstWait, lastEnd uint64     // ns: the first block past pdl_wait, the last block's end
	med, max           [4]float64 // µs per phase: wait, stage, loop, tail
	sms                int
}

func us(ns int64) float64 { return float64(ns) / 1e3 }

func summarizeStamps(recs []tcpBlockStamps) stampSummary {
	var s stampSummary
	first, firstWait := uint64(math.MaxUint64), uint64(math.MaxUint64)
	sms := map[int]bool{}
	phases := make([][]float64, 4)
	for _, r := range recs {
		sms[r.sm] = true
		first = min(first, r.ns[0])
		s.lastEnd = max(s.lastEnd, r.ns[4])
		if r.ns[1] != 0 {
			firstWait = min(firstWait, r.ns[1])
		}
		// A phase a block skipped (a zero stamp) takes its time into the next one.
		at := r.ns[0]
		for k := 1; k < 5; k++ {
			if r.ns[k] == 0 {
				phases[k-1] = append(phases[k-1], 0)
				continue
			}
			phases[k-1] = append(phases[k-1], us(int64(r.ns[k]-at)))
			at = r.ns[k]
		}
	}
	for k, p := range phases {
		slices.Sort(p)
		s.med[k], s.max[k] = p[len(p)/2], p[len(p)-1]
	}
	s.span, s.firstWait, s.sms = us(int64(s.lastEnd-first)), firstWait, len(sms)
	return s
}

// String is a launch's summary in one line (for failures).
func (s stampSummary) String() string {
	return fmt.Sprintf("span %.2f µs on %d SMs", s.span, s.sms)
}
