package engine

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/qwengo/qwengo/engine/data"
)

// TestTrainerOnEmbeddedModel: one step on the embedded model through the façade lowers the
// loss of the batch it trained on, Inference generates with the new weights, Export reloads.
func TestTrainerOnEmbeddedModel(t *testing.T) {
	if _, err := os.Stat(DefaultTokenizerPath()); err != nil {
		t.Skip("no Qwen3 tokenizer (make tokenizer)")
	}
	if testing.Short() {
		t.Skip("trains the embedded model on the CPU (seconds)")
	}
	opt := DefaultTrainOptions()
	opt.Batch = 2
	opt.Master, opt.State, opt.StochasticRounding = "fp32", "fp32", false
	tr, err := NewTrainer("qwengo-mini", opt)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ss, err := tr.Samples([]data.Example{
		{Messages: []data.Message{{Role: "user", Content: "你是誰"}, {Role: "assistant", Content: "我是測試之神。"}}},
		{Messages: []data.Message{{Role: "user", Content: "Who are you?"}, {Role: "assistant", Content: "I am the test god."}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	before, err := tr.Loss(ss)
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.AddSamples("identity", ss, 1); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if _, err := tr.Step(1e-3); err != nil {
			t.Fatal(err)
		}
	}
	after, err := tr.Loss(ss)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("identity loss %.3f → %.3f after 3 steps", before, after)
	if !(after < before) {
		t.Errorf("loss did not fall: %.4f → %.4f", before, after)
	}
	m, err := tr.Inference()
	if err != nil {
		t.Fatal(err)
	}
	g, err := m.Generate("你是誰", GenerateOptions{Chat: true, MaxTokens: 16})
	m.Close()
	if err != nil || len(g.IDs) == 0 {
		t.Fatalf("generation with the training weights: %v", err)
	}
	dir := filepath.Join(t.TempDir(), "nv")
	if err := tr.Export(dir, "nvfp4"); err != nil {
		t.Fatal(err)
	}
	back, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	back.Close()
	if _, err := tr.Step(1e-3); err != nil { // data still there
		t.Fatal(err)
	}
}
