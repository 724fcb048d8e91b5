package bench

import (
	"fmt"
	"math"
	"time"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/devtrain"
)

// train4bit measures the training figures with 4-bit AdamW moments (issue 7: peak memory at
// most 16 GB at S=192, batch 1): a trainable model built like train's (random host model,
// bf16 masters, recompute, optimizer fused, the same layer-chunk and checkpoint settings) but
// with State "4bit", then steps at the plan's first S and batch 1: tokens/s and the backend's
// peak memory. It builds its own host model after train has freed its own, so the int8 and
// 4-bit models are never resident together.
func (r *runner) train4bit() {
	k := train4Key(r.plan)
	ft, fp := r.rep.Figure(k+"_tps"), r.rep.Figure(k+"_peak")
	if ft == nil || fp == nil || ft.Status != "not run" {
		return
	}
	fail := func(status string) { ft.Status, fp.Status = status, status }
	if s := r.stopReason(); s != "" {
		fail(s)
		return
	}
	tb, err := backend.AsTraining(r.b)
	if err != nil {
		fail("not run: " + err.Error())
		return
	}
	if rc, ok := r.b.(interface{ ReleaseCache() error }); ok {
		if err := rc.ReleaseCache(); err != nil {
			r.logf("release cached blocks before the 4-bit model: %v", err)
		}
	}
	r.logf("building the trainable model with 4-bit AdamW states")
	t0 := time.Now()
	dm, chunkRows, bf16, err := r.trainable(tb, "4bit")
	if err != nil {
		fail(err.Error())
		return
	}
	defer dm.Close()
	r.logf("trainable model with 4-bit states ready in %.1f s", time.Since(t0).Seconds())
	s := r.plan.TrainLengths[0]
	batch := r.batch(1, s)
	var last devtrain.StepStats
	r.measure(ft, func() (float64, time.Duration, error) {
		t0 := time.Now()
		st, err := dm.Step(r.ctx, batch, 1e-5)
		d := time.Since(t0)
		if err != nil {
			return 0, d, err
		}
		if math.IsNaN(st.Loss) || math.IsInf(st.Loss, 0) {
			return 0, d, fmt.Errorf("4-bit step at S=%d: loss %v", s, st.Loss)
		}
		last = st
		return float64(s) / d.Seconds(), d, nil
	})
	if !ft.OK() {
		fp.Status = ft.Status
		return
	}
	gib := float64(ft.PeakBytes) / (1 << 30)
	fp.Value, fp.Samples, fp.Status, fp.PeakBytes = gib, []float64{gib}, StatusOK, ft.PeakBytes
	fp.Note = fmt.Sprintf("4-bit AdamW states (%.3f B/param); issue 7 target ≤ 16 GB; LayerChunkRows %d, CheckpointBF16 %v; ",
		dm.OptimizerBytesPerParam(), chunkRows, bf16) + peakNote(r.b.Memory(), dm.PeakPlan(1, s))
	ft.Note = fmt.Sprintf("loss %.3f; phases of the last step: %s", last.Loss, phaseSummary(last.Phases))
	r.logf("%s: %s", fp.Key, fp.Note)
}
