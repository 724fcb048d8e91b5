package devtrain_test

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/qwengo/qwengo/engine/cpu"
	"github.com/qwengo/qwengo/engine/data"
	"github.com/qwengo/qwengo/engine/devtrain"
	"github.com/qwengo/qwengo/engine/format"
	"github.com/qwengo/qwengo/engine/grad"
	"github.com/qwengo/qwengo/engine/qwen3"
)

// A few fine-tuning steps of a tiny Qwen3 on the CPU backend (the GPU backend is used the same
// way), then the trained weights back on the host.
func Example() {
	dir := filepath.Join("..", "qwen3", "testdata", "tiny-tied")
	cfg, err := qwen3.LoadConfig(filepath.Join(dir, "config.json"))
	if err != nil {
		fmt.Println(err)
		return
	}
	src, err := format.Open(filepath.Join(dir, "model.safetensors"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer src.Close()
	gm, err := grad.Load(cfg, src)
	if err != nil {
		fmt.Println(err)
		return
	}

	opt := devtrain.DefaultOptions() // bf16 masters, int8 moments, clip 1
	opt.Recompute = true             // keep only each layer's input
	m, err := devtrain.New(cpu.New(), gm, opt)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer m.Close()

	// prompt 10 20 30 → answer 7 77 and end-of-turn 2 (only the answer is scored)
	batch := data.MakeBatch([]*data.Sample{{IDs: []int{10, 20, 30, 7, 77, 2}, Mask: []bool{false, false, false, true, true, true}}}, 0)
	var first, last devtrain.StepStats
	for i := 0; i < 20; i++ {
		st, err := m.Step(context.Background(), batch, 3e-3)
		if err != nil {
			fmt.Println(err)
			return
		}
		if i == 0 {
			first = st
		}
		last = st
	}
	fmt.Println("steps:", last.Step, "scored tokens:", last.Targets)
	fmt.Println("loss fell below a quarter:", last.Loss < first.Loss/4)
	for _, p := range last.Phases {
		fmt.Println("phase:", p.Name)
	}
	trained, err := m.Export() // a host grad.Model: SaveNVFP4, SaveSafetensors, Source …
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("exported parameters:", len(trained.Params))
	// Output:
	// steps: 20 scored tokens: 3
	// loss fell below a quarter: true
	// phase: forward
	// phase: backward
	// phase: optimizer
	// exported parameters: 24
}
