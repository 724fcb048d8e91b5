package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRunnerScripts runs each runner script of notebooks/runners once, with small settings,
// on the embedded model (needs the Qwen3 tokenizer: make tokenizer).
func TestRunnerScripts(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the embedded model on the CPU (about a minute)")
	}
	root, _ := filepath.Abs("../../..")
	if _, err := os.Stat(filepath.Join(root, ".cache", "tokenizer", "qwen3", "tokenizer.json")); err != nil {
		t.Skip("no Qwen3 tokenizer (make tokenizer)")
	}
	out := t.TempDir()
	for _, c := range []struct {
		script string
		args   []string
		want   []string
	}{
		{"chat.go", []string{"--turns", "你是誰|我是誰", "--max-tokens", "24", "--check-logits"}, []string{"> 你是誰", "qwengo-mini", "stop:", "logit"}},
		{"parity.go", []string{"--a", "cpu:nvfp4:kv", "--b", "cpu:nvfp4"}, []string{"no layer diverges"}},
		{"probe.go", []string{"--batch", "1", "--data", filepath.Join(root, "notebooks", "data", "facts.tsv")}, []string{"one step on", "forward", "backward"}},
		{"whoami.go", []string{"--steps", "2", "--out", out}, []string{"step 2 loss", "你是誰 →", "exported to"}},
	} {
		t.Run(c.script, func(t *testing.T) {
			r := runBinTimeout(t, 4*time.Minute, append([]string{"run", filepath.Join(root, "notebooks", "runners", c.script)}, c.args...)...)
			if r.code != 0 {
				t.Fatalf("exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
			}
			for _, w := range c.want {
				if !strings.Contains(r.stdout, w) {
					t.Errorf("output lacks %q:\n%s", w, r.stdout)
				}
			}
		})
	}
	for _, f := range []string{"nvfp4/model.safetensors", "model.dat"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Errorf("whoami.go export: %v", err)
		}
	}
}

// runBinTimeout is runBin with a longer limit (the runners load and train a model).
func runBinTimeout(t *testing.T, limit time.Duration, args ...string) runResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, qwenrepl(t), args...)
	cmd.Env = isolatedEnv(t.TempDir())
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("run %q: %v", args, err)
		}
		code = ee.ExitCode()
	}
	return runResult{out.String(), errb.String(), code}
}
