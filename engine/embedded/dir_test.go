package embedded

import (
	"os"
	"path/filepath"
	"testing"
)

// TestMaterialise writes the model into a fresh cache, finds it there the second time, and
// rewrites a directory whose weights were damaged.
func TestMaterialise(t *testing.T) {
	if _, err := modelFS(); err != nil {
		t.Skip(err)
	}
	root := t.TempDir()
	d1, err := materialise(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"config.json", "model.safetensors", "hf_quant_config.json", "MODEL_CARD.md", "loss_curve.csv"} {
		if fi, err := os.Stat(filepath.Join(d1, f)); err != nil || fi.Size() == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
	st, _ := os.Stat(filepath.Join(d1, "model.safetensors"))
	d2, err := materialise(root)
	if err != nil || d2 != d1 {
		t.Fatalf("second call: %q, %v (want %q)", d2, err, d1)
	}
	st2, _ := os.Stat(filepath.Join(d1, "model.safetensors"))
	if !st2.ModTime().Equal(st.ModTime()) {
		t.Error("an intact copy was rewritten")
	}
	// Damage the weights: the next call must notice (hash) and restore them.
	if err := os.WriteFile(filepath.Join(d1, "model.safetensors"), []byte("broken"), 0o644); err != nil {
		t.Fatal(err)
	}
	d3, err := materialise(root)
	if err != nil || d3 != d1 {
		t.Fatalf("after damage: %q, %v", d3, err)
	}
	if ok, err := matches(d3, mustHash(t)); !ok || err != nil {
		t.Errorf("damaged copy not restored: %v %v", ok, err)
	}
	entries, _ := os.ReadDir(root)
	if len(entries) != 1 {
		t.Errorf("leftover temporary directories: %v", entries)
	}
}

func mustHash(t *testing.T) string {
	src, err := modelFS()
	if err != nil {
		t.Fatal(err)
	}
	h, err := hashFile(src, "model.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	return h
}
