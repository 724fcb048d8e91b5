package bench

import (
	"strings"
	"testing"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/devtrain"
)

func TestTrainMemory(t *testing.T) {
	for _, c := range []struct {
		chunk, bf16 string
		wantChunk   int
		wantBF16    bool
		err         string
	}{
		{"", "", 8192, true, ""},
		{"0", "0", 0, false, ""},
		{"4096", "true", 4096, true, ""},
		{"-1", "", 0, false, "QWENGO_TRAIN_LAYER_CHUNK_ROWS"},
		{"", "maybe", 0, false, "QWENGO_TRAIN_CHECKPOINT_BF16"},
	} {
		t.Setenv("QWENGO_TRAIN_LAYER_CHUNK_ROWS", c.chunk)
		t.Setenv("QWENGO_TRAIN_CHECKPOINT_BF16", c.bf16)
		chunk, bf16, err := trainMemory()
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%q %q: error %v, want one naming %s", c.chunk, c.bf16, err, c.err)
			}
			continue
		}
		if err != nil || chunk != c.wantChunk || bf16 != c.wantBF16 {
			t.Errorf("%q %q: %d %v %v, want %d %v", c.chunk, c.bf16, chunk, bf16, err, c.wantChunk, c.wantBF16)
		}
	}
}

// TestPeakNote: the peak by category, the plan's items and what the backend added beyond them.
func TestPeakNote(t *testing.T) {
	var ms backend.MemStats
	ms.Peak = 3_500_000_000
	ms.PeakBy[backend.Weights], ms.PeakBy[backend.Activations], ms.PeakBy[backend.Workspace] = 2_000_000_000, 1_000_000_000, 500_000_000
	plan := []devtrain.PlanItem{{What: "masters", Category: backend.Weights, Bytes: 2_000_000_000}, {What: "inputs", Category: backend.Activations, Bytes: 1_000_000_000}}
	got := peakNote(ms, plan)
	for _, want := range []string{"peak 3.50 GB = weights 1.86 GiB + activations 953.67 MiB + workspace 476.84 MiB", "plan (devtrain.PeakPlan) 3.00 GB: masters 1.86 GiB, inputs 953.67 MiB", "beyond the plan 0.50 GB"} {
		if !strings.Contains(got, want) {
			t.Errorf("note %q lacks %q", got, want)
		}
	}
	if got := peakNote(ms, nil); strings.Contains(got, "plan") {
		t.Errorf("no plan: %q", got)
	}
}
