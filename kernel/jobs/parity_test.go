package jobs

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
)

// tinyParityModel is the committed tiny HF checkpoint (vocab 512) of engine/qwen3.
var tinyParityModel = filepath.Join("..", "..", "engine", "qwen3", "testdata", "tiny-tied")

func TestParityCommand(t *testing.T) {
	t.Setenv("QWENGO_CACHE", t.TempDir()) // no cached tokenizer: --ids runs show ids only
	ids := "--ids=1,17,250,3,499,64"
	cases := []struct {
		name      string
		args      []string
		code      int
		first     int // first_diverging for --json runs
		wantOut   []string
		wantErr   string
		checkJSON bool
	}{
		{name: "kv vs recompute, json", args: []string{"--a", "cpu:f32:kv", "--b", "cpu:f32", ids, "--json"}, first: -2, checkJSON: true},
		{name: "nvfp4, json, all positions", args: []string{"--a", "cpu:f32", "--b", "cpu:nvfp4", ids, "--all-positions", "--json"}, first: 0, checkJSON: true},
		{name: "scale bug flag", args: []string{"--a", "cpu:nvfp4", "--b", "cpu:nvfp4", ids, "--scale-bug-layer", "1", "--json"}, first: 1, checkJSON: true},
		{name: "scale bug table", args: []string{"--a", "cpu:nvfp4", "--b", "cpu:nvfp4:scalebug=1", ids},
			wantOut: []string{"parity: a = cpu:nvfp4   b = cpu:nvfp4:scalebug=1", "← first diverging", "first diverging: layer 1", "read as integers", "KL(a‖b)"}},
		{name: "fail on diverge", args: []string{"--a", "cpu:f32", "--b", "cpu:nvfp4", ids, "--fail-on-diverge"}, code: 1, wantOut: []string{"first diverging: layer 0"}},
		{name: "no divergence passes", args: []string{"--a", "cpu:f32:qat", "--b", "cpu:nvfp4:kv", ids, "--fail-on-diverge"}, wantOut: []string{"no layer diverges"}},
		{name: "cuda in a cpu build", args: []string{"--a", "cpu:f32", "--b", "cuda:bf16", ids}, code: 1, wantErr: "go build -tags cuda"},
		{name: "bad spec", args: []string{"--a", "cpu:fp16", "--b", "cpu", ids}, code: 2, wantErr: `--a: spec "cpu:fp16": unknown token "fp16"`},
		{name: "missing b", args: []string{"--a", "cpu", ids}, code: 2, wantErr: "b"},
		{name: "both prompt and ids", args: []string{"--a", "cpu", "--b", "cpu:kv", ids, "--prompt", "hi"}, code: 2, wantErr: "exactly one of --prompt and --ids"},
		{name: "neither prompt nor ids", args: []string{"--a", "cpu", "--b", "cpu:kv"}, code: 2, wantErr: "exactly one of --prompt and --ids"},
		{name: "chat without prompt", args: []string{"--a", "cpu", "--b", "cpu:kv", ids, "--chat"}, code: 2, wantErr: "--chat and --system need --prompt"},
		{name: "bad ids", args: []string{"--a", "cpu", "--b", "cpu:kv", "--ids", "1,x"}, code: 2, wantErr: "ids"},
		{name: "id outside vocab", args: []string{"--a", "cpu", "--b", "cpu:kv", "--ids", "1,600"}, code: 1, wantErr: "token id 600 at position 1 is outside the vocabulary (0..511)"},
		{name: "negative bug layer", args: []string{"--a", "cpu", "--b", "cpu", ids, "--scale-bug-layer", "-3"}, code: 2, wantErr: "--scale-bug-layer -3"},
		{name: "bug layer missing", args: []string{"--a", "cpu", "--b", "cpu", ids, "--scale-bug-layer", "5"}, code: 1, wantErr: "scale-bug layer 5 does not exist"},
		{name: "bug layer contradiction", args: []string{"--a", "cpu", "--b", "cpu:scalebug=0", ids, "--scale-bug-layer", "1"}, code: 2, wantErr: "contradicts scalebug=0"},
		{name: "bad threshold", args: []string{"--a", "cpu", "--b", "cpu", ids, "--cos-threshold", "2"}, code: 2, wantErr: "--cos-threshold 2"},
		{name: "unknown flag", args: []string{"--a", "cpu", "--b", "cpu", ids, "--al-positions"}, code: 2, wantErr: "al-positions"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			args := append([]string{"parity", "--model", tinyParityModel}, c.args...)
			code, out, errs := run(t, args...)
			if code != c.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, c.code, out, errs)
			}
			if c.wantErr != "" && !strings.Contains(errs, c.wantErr) {
				t.Errorf("stderr %q lacks %q", errs, c.wantErr)
			}
			for _, w := range c.wantOut {
				if !strings.Contains(out, w) {
					t.Errorf("stdout lacks %q:\n%s", w, out)
				}
			}
			if !c.checkJSON {
				return
			}
			var r struct {
				IDs            []int `json:"ids"`
				FirstDiverging int   `json:"first_diverging"`
				Layers         []struct {
					Layer     int   `json:"layer"`
					MaxAbs    any   `json:"max_abs"`
					Positions []any `json:"positions"`
				} `json:"layers"`
				A, B struct {
					Name string `json:"name"`
					Top  []struct {
						ID   int     `json:"id"`
						Prob float64 `json:"prob"`
					} `json:"top"`
				}
				KL any `json:"kl"`
			}
			if err := json.Unmarshal([]byte(out), &r); err != nil {
				t.Fatalf("stdout is not one JSON document: %v\n%s", err, out)
			}
			if r.FirstDiverging != c.first || len(r.IDs) != 6 || len(r.Layers) != 4 || len(r.A.Top) != 10 || len(r.B.Top) != 10 {
				t.Errorf("first_diverging %d (want %d), %d ids, %d layers, top %d/%d", r.FirstDiverging, c.first, len(r.IDs), len(r.Layers), len(r.A.Top), len(r.B.Top))
			}
			all := strings.Contains(strings.Join(c.args, " "), "--all-positions")
			for _, l := range r.Layers {
				if all != (len(l.Positions) == 6) {
					t.Errorf("layer %d: %d positions with --all-positions %v", l.Layer, len(l.Positions), all)
				}
			}
		})
	}
}

func TestParityPrompt(t *testing.T) {
	model := tinyQwen(t) // skips without the cached Qwen3 tokenizer
	code, out, errs := run(t, "parity", "--model", model, "--a", "cpu:f32", "--b", "cpu:nvfp4:kv", "--prompt", "你是誰", "--chat")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	for _, w := range []string{`prompt: "你是誰"`, "b: cpu:nvfp4:kv", "first diverging: layer 0", `"`} {
		if !strings.Contains(out, w) {
			t.Errorf("stdout lacks %q:\n%s", w, out)
		}
	}
	// The Qwen3 tokenizer does not fit the tiny model's 512 ids: --ids still works, without text.
	code, _, errs = run(t, "parity", "--model", tinyParityModel, "--a", "cpu", "--b", "cpu:kv", "--ids", "1,2,3")
	if code != 0 || !strings.Contains(errs, "does not fit the model's vocabulary of 512") {
		t.Errorf("exit %d, stderr %q", code, errs)
	}
	// A prompt through that tokenizer gives ids outside the vocabulary: a clear error.
	code, _, errs = run(t, "parity", "--model", tinyParityModel, "--a", "cpu", "--b", "cpu:kv", "--prompt", "你是誰")
	if code != 1 || !strings.Contains(errs, "outside the vocabulary (0..511)") {
		t.Errorf("exit %d, stderr %q", code, errs)
	}
}

func TestParityHelp(t *testing.T) {
	code, _, errs := run(t, "parity", "--help")
	if code != 0 || !strings.Contains(errs, "--scale-bug-layer") || !strings.Contains(errs, "--all-positions") {
		t.Fatalf("help: exit %d\n%s", code, errs)
	}
}
