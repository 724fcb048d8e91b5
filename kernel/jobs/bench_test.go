package jobs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qwengo/qwengo/engine/bench"
)

// TestBenchQuick runs `qwenrepl bench --quick` on the CPU, then combines its JSON with a peer
// report through --report/--peer, as run.sh does on the GPU machine.
func TestBenchQuick(t *testing.T) {
	t.Setenv("QWENGO_BACKEND", "cpu")
	dir := t.TempDir()
	ours, md := filepath.Join(dir, "ours.json"), filepath.Join(dir, "table.md")
	code, out, errs := run(t, "bench", "--quick", "--only", "prefill,decode", "--figure-seconds", "0.02", "--json", ours, "--markdown", md)
	if code != 0 {
		t.Fatalf("bench exited %d: %s", code, errs)
	}
	if !strings.Contains(out, "| prefill S=32 (to last-row logits) (tok/s) |") || !strings.Contains(errs, "prefill_s32:") {
		t.Errorf("table or progress missing:\n%s\n%s", out, errs)
	}
	if data, err := os.ReadFile(md); err != nil || string(data) != out {
		t.Errorf("--markdown file differs from stdout (%v)", err)
	}
	r, err := bench.ReadReport(ours)
	if err != nil {
		t.Fatal(err)
	}
	peer := *r
	peer.Side, peer.Device, peer.Software = "pytorch", "fake GPU", "torch test"
	peer.Figures = append([]bench.Figure(nil), r.Figures...)
	for i := range peer.Figures {
		peer.Figures[i].Value *= 2
	}
	pp := filepath.Join(dir, "peer.json")
	if err := peer.WriteFile(pp); err != nil {
		t.Fatal(err)
	}
	code, out, errs = run(t, "bench", "--report", ours, "--peer", pp)
	if code != 0 || !strings.Contains(out, "PyTorch on fake GPU") || !strings.Contains(out, "0.50×") {
		t.Errorf("combine: exit %d\n%s\n%s", code, out, errs)
	}
	// A broken peer file still prints our side.
	os.WriteFile(pp, []byte("{"), 0o644)
	code, out, errs = run(t, "bench", "--report", ours, "--peer", pp)
	if code != 0 || !strings.Contains(errs, "peer report unusable") || !strings.Contains(out, "prefill S=32") {
		t.Errorf("broken peer: exit %d\n%s\n%s", code, out, errs)
	}
	if code, _, errs := run(t, "bench", "--report", filepath.Join(dir, "none.json")); code == 0 || !strings.Contains(errs, "none.json") {
		t.Errorf("missing report: exit %d: %s", code, errs)
	}
	// --combine prints whichever side is there (run.sh, when our side died).
	peer.WriteFile(pp)
	code, out, errs = run(t, "bench", "--combine", "--report", filepath.Join(dir, "none.json"), "--peer", pp)
	if code != 0 || !strings.Contains(errs, "our report unusable") || !strings.Contains(out, "PyTorch on fake GPU") {
		t.Errorf("--combine without ours: exit %d\n%s\n%s", code, out, errs)
	}
	if code, _, _ := run(t, "bench", "--combine"); code == 0 {
		t.Error("--combine with nothing to combine succeeded")
	}
}
