package engine

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/qwengo/qwengo/engine/data"
	"github.com/qwengo/qwengo/engine/format"
	"github.com/qwengo/qwengo/engine/tensor"
)

// A trainer checkpoint is a model directory NewTrainer opens (the masters as float32
// safetensors, config.json, the tokenizer) plus what Resume restores: optimizer.bin (the AdamW
// state, devtrain.Model.SaveOptimizer), data.bin (the mixture's position) and trainer.json.
type trainerCheckpoint struct {
	Step    int      `json:"step"`
	State   string   `json:"optimizer_state"`
	Master  string   `json:"master"`
	Sources []string `json:"sources"`
}

// SaveCheckpoint writes everything training needs to continue into dir, replacing it
// atomically (a temporary directory beside it is swapped in only when complete): open the
// directory with NewTrainer, add the same data sources, then Resume. A bf16 master saved as
// float32 loads back as the same master, so a resumed run continues exactly.
func (t *Trainer) SaveCheckpoint(dir string) error {
	if t.Dev == nil {
		return errors.New("engine: trainer: SaveCheckpoint after Close")
	}
	var ds []byte
	if t.mix != nil {
		var err error
		if ds, err = t.mix.State(); err != nil {
			return fmt.Errorf("engine: trainer checkpoint: data position: %w", err)
		}
	}
	meta := trainerCheckpoint{Step: t.Dev.Steps(), State: t.Dev.Options().State, Master: t.Dev.Options().Master}
	for _, s := range t.sources {
		meta.Sources = append(meta.Sources, s.Name)
	}
	mj, err := json.MarshalIndent(meta, "", " ")
	if err != nil {
		return err
	}
	err = format.ReplaceDirAtomic(dir, func(tmp string) error {
		gm, err := t.Dev.Export()
		if err != nil {
			return err
		}
		if err := gm.SaveSafetensors(tmp, tensor.F32); err != nil {
			return err
		}
		if err := t.Dev.SaveOptimizer(filepath.Join(tmp, "optimizer.bin")); err != nil {
			return err
		}
		if t.tokPath != "" {
			tj, err := os.ReadFile(t.tokPath)
			if err != nil {
				return fmt.Errorf("tokenizer: %w", err)
			}
			if err := format.WriteFileAtomic(filepath.Join(tmp, "tokenizer.json"), tj); err != nil {
				return err
			}
		}
		if err := format.WriteFileAtomic(filepath.Join(tmp, "data.bin"), ds); err != nil {
			return err
		}
		return format.WriteFileAtomic(filepath.Join(tmp, "trainer.json"), mj)
	})
	if err != nil {
		return fmt.Errorf("engine: trainer checkpoint %s: %w", dir, err)
	}
	return nil
}

// Resume restores the optimizer state, step count and data position a SaveCheckpoint wrote in
// dir into a trainer opened from that directory (NewTrainer(dir, …) with the same options)
// after its data sources were added as before. Everything is checked before anything changes.
func (t *Trainer) Resume(dir string) error {
	if t.Dev == nil {
		return errors.New("engine: trainer: Resume after Close")
	}
	fail := func(err error) error { return fmt.Errorf("engine: trainer resume %s: %w", dir, err) }
	if !sameDir(t.Path, dir) {
		return fail(fmt.Errorf("the trainer's weights come from %s: open the checkpoint itself (NewTrainer(%q, …)) and then Resume", t.Path, dir))
	}
	mj, err := os.ReadFile(filepath.Join(dir, "trainer.json"))
	if err != nil {
		return fail(err)
	}
	var meta trainerCheckpoint
	if err := json.Unmarshal(mj, &meta); err != nil {
		return fail(fmt.Errorf("trainer.json: %w", err))
	}
	if o := t.Dev.Options(); meta.State != o.State || meta.Master != o.Master {
		return fail(fmt.Errorf("saved with %s moments and %s masters, this trainer has %s and %s", meta.State, meta.Master, o.State, o.Master))
	}
	var names []string
	for _, s := range t.sources {
		names = append(names, s.Name)
	}
	if fmt.Sprint(names) != fmt.Sprint(meta.Sources) {
		return fail(fmt.Errorf("saved with data sources %q, this trainer has %q (add the same sources before Resume)", meta.Sources, names))
	}
	ds, err := os.ReadFile(filepath.Join(dir, "data.bin"))
	if err != nil {
		return fail(err)
	}
	if t.mix != nil {
		// Check the position on a copy first, so a bad file changes nothing.
		probe, err := t.mixCopy()
		if err != nil {
			return fail(err)
		}
		if err := probe.Restore(ds); err != nil {
			return fail(err)
		}
	}
	if err := t.Dev.LoadOptimizer(filepath.Join(dir, "optimizer.bin")); err != nil {
		return fail(err)
	}
	if t.mix != nil {
		if err := t.mix.Restore(ds); err != nil {
			return fail(err)
		}
	}
	return nil
}

// mixCopy is a new mixture over the trainer's sources (to check a saved position on).
func (t *Trainer) mixCopy() (*data.Mixture, error) { return data.NewMixture(t.sources, t.opt.Seed) }

// sameDir reports whether model path p (a directory or a file in one) is directory dir.
func sameDir(p, dir string) bool {
	if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
		p = filepath.Dir(p)
	}
	a, err1 := filepath.Abs(p)
	b, err2 := filepath.Abs(dir)
	return err1 == nil && err2 == nil && filepath.Clean(a) == filepath.Clean(b)
}
