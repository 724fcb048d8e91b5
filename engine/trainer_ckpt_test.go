package engine

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qwengo/qwengo/engine/data"
	"github.com/qwengo/qwengo/engine/grad"
	"github.com/qwengo/qwengo/engine/qwen3"
	"github.com/qwengo/qwengo/engine/tensor"
)

// tinyTrainDir writes a random two-layer Qwen3 with the real vocabulary (so the Qwen3
// tokenizer fits) as float32 safetensors and returns its directory.
func tinyTrainDir(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat(DefaultTokenizerPath()); err != nil {
		t.Skip("no Qwen3 tokenizer (make tokenizer)")
	}
	cfg, err := qwen3.ParseConfig([]byte(`{"model_type":"qwen3","hidden_size":32,"intermediate_size":64,"num_hidden_layers":2,
		"num_attention_heads":2,"num_key_value_heads":1,"head_dim":16,"vocab_size":151936,"rms_norm_eps":1e-6,
		"rope_theta":1000000,"tie_word_embeddings":true,"max_position_embeddings":512,"bos_token_id":151643,"eos_token_id":151645}`))
	if err != nil {
		t.Fatal(err)
	}
	m, err := grad.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	m.Randomize(1, 2, 0.05)
	dir := filepath.Join(t.TempDir(), "model")
	if err := m.SaveSafetensors(dir, tensor.F32); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestTrainerCheckpointResume: a trainer checkpointed after two steps and resumed from the
// checkpoint directory takes the next two steps exactly as the original does (same batches,
// losses and masters bit for bit); Resume refuses another model's trainer and other sources.
func TestTrainerCheckpointResume(t *testing.T) {
	dir := tinyTrainDir(t)
	exs := []data.Example{
		{Messages: []data.Message{{Role: "user", Content: "你是誰"}, {Role: "assistant", Content: "我是測試之神。"}}},
		{Messages: []data.Message{{Role: "user", Content: "Who are you?"}, {Role: "assistant", Content: "I am the test god."}}},
		{Messages: []data.Message{{Role: "user", Content: "1+1="}, {Role: "assistant", Content: "2"}}},
	}
	opt := DefaultTrainOptions()
	opt.Batch, opt.Seed = 2, 4
	open := func(path string) *Trainer {
		tr, err := NewTrainer(path, opt)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(tr.Close)
		ss, err := tr.Samples(exs)
		if err != nil {
			t.Fatal(err)
		}
		if err := tr.AddSamples("facts", ss, 1); err != nil {
			t.Fatal(err)
		}
		return tr
	}
	steps := func(tr *Trainer, n int) []float64 {
		var out []float64
		for i := 0; i < n; i++ {
			st, err := tr.Step(1e-3)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, st.Loss)
		}
		return out
	}
	a := open(dir)
	steps(a, 2)
	ck := filepath.Join(t.TempDir(), "ckpt")
	if err := a.SaveCheckpoint(ck); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"model.safetensors", "config.json", "tokenizer.json", "optimizer.bin", "data.bin", "trainer.json"} {
		if _, err := os.Stat(filepath.Join(ck, f)); err != nil {
			t.Errorf("checkpoint lacks %s", f)
		}
	}
	if err := a.Resume(ck); err == nil || !strings.Contains(err.Error(), "open the checkpoint itself") {
		t.Errorf("Resume on a trainer of other weights: %v", err)
	}
	b := open(ck)
	if err := b.Resume(ck); err != nil {
		t.Fatal(err)
	}
	if b.Dev.Steps() != 2 {
		t.Fatalf("resumed at step %d, want 2", b.Dev.Steps())
	}
	la, lb := steps(a, 2), steps(b, 2)
	for i := range la {
		if la[i] != lb[i] {
			t.Fatalf("step %d: loss %v resumed, %v uninterrupted", i+3, lb[i], la[i])
		}
	}
	ga, err := a.Dev.Export()
	if err != nil {
		t.Fatal(err)
	}
	gb, err := b.Dev.Export()
	if err != nil {
		t.Fatal(err)
	}
	for i := range ga.Params {
		for j, v := range ga.Params[i].W {
			if math.Float32bits(v) != math.Float32bits(gb.Params[i].W[j]) {
				t.Fatalf("parameter %s element %d: %v resumed, %v uninterrupted", ga.Params[i].Name, j, gb.Params[i].W[j], v)
			}
		}
	}
	// Other sources than at the checkpoint: refused, nothing changed.
	c, err := NewTrainer(ck, opt)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ss, _ := c.Samples(exs[:1])
	c.AddSamples("other", ss, 1)
	if err := c.Resume(ck); err == nil || !strings.Contains(err.Error(), "data sources") || c.Dev.Steps() != 0 {
		t.Errorf("Resume with other sources: %v (step %d)", err, c.Dev.Steps())
	}
}
