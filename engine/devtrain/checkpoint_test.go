package devtrain

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestOptimizerCheckpointResume: two steps, then the masters (Export) and the optimizer state
// (SaveOptimizer) go to disk; a model built from them (New, LoadOptimizer) takes the next two
// steps exactly as the original does — losses and masters bit for bit — for every state format.
func TestOptimizerCheckpointResume(t *testing.T) {
	b := paddedBatch()
	for _, state := range []string{"fp32", "int8", "4bit"} {
		opt := DefaultOptions()
		opt.State, opt.Seed = state, 9
		m := newModel(t, tiny(t, "tiny-untied"), opt)
		runSteps(t, m, b, 2, 1e-3)
		path := filepath.Join(t.TempDir(), "optimizer.bin")
		if err := m.SaveOptimizer(path); err != nil {
			t.Fatal(state, err)
		}
		gm, err := m.Export()
		if err != nil {
			t.Fatal(err)
		}
		r := newModel(t, gm, opt)
		if err := r.LoadOptimizer(path); err != nil {
			t.Fatal(state, err)
		}
		if r.Steps() != 2 {
			t.Fatalf("%s: resumed at step %d, want 2", state, r.Steps())
		}
		a, c := runSteps(t, m, b, 2, 1e-3), runSteps(t, r, b, 2, 1e-3)
		for i := range a {
			if a[i].Loss != c[i].Loss {
				t.Fatalf("%s step %d: loss %v resumed, %v uninterrupted", state, i+3, c[i].Loss, a[i].Loss)
			}
		}
		sameBits(t, state+" masters after resume", exportAll(t, m), exportAll(t, r))
	}
}

// TestLoadOptimizerRefuses: a file for another state format, another model, a truncated file
// or a stranger are refused by name and leave the model's state untouched.
func TestLoadOptimizerRefuses(t *testing.T) {
	b := paddedBatch()
	dir := t.TempDir()
	opt := DefaultOptions()
	m := newModel(t, tiny(t, "tiny-untied"), opt)
	runSteps(t, m, b, 1, 1e-3)
	good := filepath.Join(dir, "good.bin")
	if err := m.SaveOptimizer(good); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(good)
	cut := filepath.Join(dir, "cut.bin")
	os.WriteFile(cut, raw[:len(raw)*3/4], 0o644)
	junk := filepath.Join(dir, "junk.bin")
	os.WriteFile(junk, []byte("not a gob stream"), 0o644)
	fourBit := opt
	fourBit.State = "4bit"
	other := newModel(t, tiny(t, "tiny-untied"), fourBit)
	otherPath := filepath.Join(dir, "4bit.bin")
	if err := other.SaveOptimizer(otherPath); err != nil {
		t.Fatal(err)
	}
	tied := newModel(t, tiny(t, "tiny-tied"), opt)
	tiedPath := filepath.Join(dir, "tied.bin")
	if err := tied.SaveOptimizer(tiedPath); err != nil {
		t.Fatal(err)
	}
	fresh := newModel(t, tiny(t, "tiny-untied"), opt)
	for _, c := range []struct{ path, want string }{
		{cut, "moments of"}, {junk, "header"}, {otherPath, "4bit moments, the model has int8"},
		{tiedPath, "parameters, the model has"}, {filepath.Join(dir, "missing.bin"), "no such file"},
	} {
		err := fresh.LoadOptimizer(c.path)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error mentioning %q", filepath.Base(c.path), err, c.want)
		}
	}
	if fresh.Steps() != 0 {
		t.Fatalf("a refused load moved the step count to %d", fresh.Steps())
	}
	// Two steps from the untouched state land where a new model's two steps do (the second
	// step's loss and both updates depend on the moments).
	ref := newModel(t, tiny(t, "tiny-untied"), opt)
	got, want := runSteps(t, fresh, b, 2, 1e-3), runSteps(t, ref, b, 2, 1e-3)
	if got[1].Loss != want[1].Loss {
		t.Fatalf("after refused loads the second step's loss is %v, a new model's %v", got[1].Loss, want[1].Loss)
	}
	sameBits(t, "masters after refused loads", exportAll(t, fresh), exportAll(t, ref))
}
