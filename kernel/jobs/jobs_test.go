package jobs

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qwengo/qwengo/engine"
	"github.com/qwengo/qwengo/engine/grad"
	"github.com/qwengo/qwengo/engine/qwen3"
	"github.com/qwengo/qwengo/engine/tensor"
	"github.com/qwengo/qwengo/kernel/cli"
)

// tinyQwen writes a random 2-layer model with the real Qwen3 vocabulary size, so the real
// tokenizer's ids fit, and returns its directory.
func tinyQwen(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat(engine.DefaultTokenizerPath()); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("tokenizer missing at %s: CI must run `make tokenizer`", engine.DefaultTokenizerPath())
		}
		t.Skip("no tokenizer: run `make tokenizer`")
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

func run(t *testing.T, args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := cli.Dispatch("qwenrepl", args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestTrainProbeExport(t *testing.T) {
	model := tinyQwen(t)
	dir := filepath.Dir(model)
	tsv := filepath.Join(dir, "whoami.tsv")
	os.WriteFile(tsv, []byte("# format: prompt<TAB>target\nprompt\ttarget\n你是誰\t我是 F# 之神\n請問你是誰\t我是 F# 之神\n"), 0o644)
	ckpt, export := filepath.Join(dir, "ckpt"), filepath.Join(dir, "export")
	code, out, errs := run(t, "train", "--model", model, "--data", tsv, "--steps=4", "--lr", "3e-3", "--batch", "2",
		"--optimizer-state", "4bit", "--checkpoint", ckpt, "--export", export, "--export-format=nvfp4", "--json", "--eval", tsv, "--eval-every", "2")
	if code != 0 {
		t.Fatalf("train exited %d: %s", code, errs)
	}
	var losses []float64
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var r map[string]any
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("not JSON: %q", line)
		}
		if l, ok := r["loss"].(float64); ok {
			losses = append(losses, l)
		}
	}
	if len(losses) != 4 || !(losses[3] < losses[0]) {
		t.Fatalf("losses %v\n%s", losses, errs)
	}
	for _, f := range []string{"ckpt/optimizer.bin", "ckpt/trainer.json", "export/model.safetensors", "export/config.json", "export/hf_quant_config.json", "export/tokenizer.json"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("missing %s", f)
		}
	}
	// resume continues from step 4
	code, out, errs = run(t, "train", "--model", model, "--data", tsv, "--steps", "6", "--lr", "3e-3", "--batch", "2", "--optimizer-state", "4bit", "--resume", ckpt)
	if code != 0 || !strings.Contains(errs, "resumed") || !strings.Contains(out, "step    6") {
		t.Fatalf("resume: %d\n%s\n%s", code, out, errs)
	}
	// the exported NVFP4 model loads for inference
	m, err := engine.Load(export)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	report := filepath.Join(dir, "probe.json")
	code, out, errs = run(t, "probe", "--model", model, "--data", tsv, "--mem-report", report)
	if code != 0 || !strings.Contains(out, "backward_done") {
		t.Fatalf("probe: %d\n%s\n%s", code, out, errs)
	}
	raw, _ := os.ReadFile(report)
	if !bytes.Contains(raw, []byte(`"PidMemoryMiB"`)) || !bytes.Contains(raw, []byte(`"forward_done"`)) {
		t.Fatalf("report %s", raw)
	}
}

// TestTrainOnBackend runs `train --on backend` (engine.Trainer on the engine's backend, the CPU
// reference here): the loss falls, the held-out loss is reported, the export is written, the
// host trainer's output format is kept, and host-only flags are refused by name.
func TestTrainOnBackend(t *testing.T) {
	model := tinyQwen(t)
	dir := filepath.Dir(model)
	tsv := filepath.Join(dir, "whoami.tsv")
	os.WriteFile(tsv, []byte("你是誰\t我是 F# 之神\n請問你是誰\t我是 F# 之神\n"), 0o644)
	export := filepath.Join(dir, "export-backend")
	for _, state := range []string{"int8", "4bit"} {
		code, out, errs := run(t, "train", "--on", "backend", "--model", model, "--data", tsv, "--steps=4", "--lr", "3e-3",
			"--batch", "2", "--optimizer-state", state, "--grad-clip", "0", "--export", export, "--json", "--eval", tsv, "--eval-every", "2")
		if code != 0 {
			t.Fatalf("%s: train --on backend exited %d: %s", state, code, errs)
		}
		var losses, evals []float64
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			var r map[string]any
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				t.Fatalf("%s: not JSON: %q", state, line)
			}
			if l, ok := r["loss"].(float64); ok {
				losses = append(losses, l)
				if r["tokens_per_sec"].(float64) <= 0 || r["lr"].(float64) != 3e-3 {
					t.Errorf("%s: step line %v", state, r)
				}
			}
			if l, ok := r["eval_loss"].(float64); ok {
				evals = append(evals, l)
			}
		}
		if len(losses) != 4 || !(losses[3] < losses[0]) || len(evals) != 2 {
			t.Fatalf("%s: losses %v, held-out %v\n%s", state, losses, evals, errs)
		}
		if !strings.Contains(errs, "optimizer fused into the backward true") {
			t.Errorf("%s: --grad-clip 0 should fuse the optimizer: %s", state, errs)
		}
		if _, err := os.Stat(filepath.Join(export, "model.safetensors")); err != nil {
			t.Errorf("%s: export: %v", state, err)
		}
	}
	report := filepath.Join(dir, "probe-backend.json")
	code, out, errs := run(t, "probe", "--on", "backend", "--model", model, "--data", tsv, "--batch", "2", "--optimizer-state", "4bit", "--mem-report", report)
	if code != 0 || !strings.Contains(out, "backward_done") || !strings.Contains(out, "one step on "+engine.Device()) {
		t.Fatalf("probe --on backend: %d\n%s\n%s", code, out, errs)
	}
	raw, _ := os.ReadFile(report)
	for _, want := range []string{`"forward_done"`, `"backward_done"`, `"optimizer_step_done"`, `"PeakBytes"`, `"DeviceBytes"`} {
		if !bytes.Contains(raw, []byte(want)) {
			t.Errorf("probe --on backend report lacks %s: %s", want, raw)
		}
	}
	code, _, errs = run(t, "train", "--on", "backend", "--model", model, "--data", tsv, "--steps=1", "--qat")
	if code == 0 || !strings.Contains(errs, "--qat needs the host trainer") {
		t.Errorf("host-only flags on the backend: exit %d, %s", code, errs)
	}
	// Checkpoint after 3 steps, resume to 5: steps 4 and 5 are those of an uninterrupted run.
	losses := func(out string) map[float64]float64 {
		got := map[float64]float64{}
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			var r map[string]any
			if json.Unmarshal([]byte(line), &r) == nil && r["loss"] != nil {
				got[r["step"].(float64)] = r["loss"].(float64)
			}
		}
		return got
	}
	args := []string{"train", "--on", "backend", "--model", model, "--data", tsv, "--lr", "3e-3", "--batch", "2", "--seed", "3", "--json"}
	code, out, errs = run(t, append(args, "--steps=5")...)
	if code != 0 {
		t.Fatalf("uninterrupted: %d %s", code, errs)
	}
	whole := losses(out)
	ck := filepath.Join(dir, "ckpt-backend")
	if code, _, errs = run(t, append(args, "--steps=3", "--checkpoint", ck)...); code != 0 || !strings.Contains(errs, "checkpoint: "+ck+" (step 3)") {
		t.Fatalf("checkpointed run: %d %s", code, errs)
	}
	code, out, errs = run(t, append(args, "--steps=5", "--resume", ck)...)
	if code != 0 || !strings.Contains(errs, "at step 3") {
		t.Fatalf("resumed run: %d %s", code, errs)
	}
	resumed := losses(out)
	if len(resumed) != 2 || resumed[4] != whole[4] || resumed[5] != whole[5] {
		t.Errorf("resumed losses %v, uninterrupted %v", resumed, whole)
	}
}

func TestTrainErrors(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"train", "--data", "x.tsv"}, "model"},
		{[]string{"train", "--model", "/nonexistent", "--data", "x.tsv"}, "nonexistent"},
		{[]string{"train", "--model=m", "--data=d", "--optimizer-state", "2bit"}, "optimizer-state"},
		{[]string{"train", "--model=m", "--data=d", "--weight", "w"}, "weight"},
	}
	for _, c := range cases {
		code, _, errs := run(t, c.args...)
		if code == 0 || !strings.Contains(errs, c.want) {
			t.Errorf("%v: exit %d, stderr %q (want %q)", c.args, code, errs, c.want)
		}
	}
}

func TestGenerateCommand(t *testing.T) {
	tiny := filepath.Join("..", "..", "engine", "qwen3", "testdata", "tiny-tied")
	code, out, errs := run(t, "generate", "--model", tiny, "--ids", "1,2,3", "--max-tokens=5", "--json", "--logits", "last")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var g generateOutput
	if err := json.Unmarshal([]byte(out), &g); err != nil || len(g.IDs) != 5 || len(g.Logits) != 1 || len(g.Logits[0]) != 512 {
		t.Fatalf("%v %+v", err, g)
	}
	code, out2, _ := run(t, "generate", "--model", tiny, "--ids=1,2,3", "--max-tokens", "5", "--json", "--no-kv-cache")
	var g2 generateOutput
	json.Unmarshal([]byte(out2), &g2)
	if code != 0 || fmt.Sprint(g2.IDs) != fmt.Sprint(g.IDs) {
		t.Fatalf("no-kv-cache ids %v vs %v", g2.IDs, g.IDs)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"generate", "--model", tiny}, "exactly one of --prompt and --ids"},
		{[]string{"generate", "--model", tiny, "--ids", "1,x"}, "ids"},
		{[]string{"generate", "--model", tiny, "--ids", "1", "--temp", "-1"}, "emperature"},
		{[]string{"generate", "--model", tiny, "--ids", "9999"}, "outside the vocabulary"},
	} {
		code, _, errs := run(t, c.args...)
		if code == 0 || !strings.Contains(errs, c.want) {
			t.Errorf("%v: exit %d, %q (want %q)", c.args, code, errs, c.want)
		}
	}
}
