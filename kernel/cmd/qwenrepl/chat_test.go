package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/qwengo/qwengo/engine/grad"
	"github.com/qwengo/qwengo/engine/qwen3"
	"github.com/qwengo/qwengo/engine/tensor"
)

// repoCache is the repository's .cache, where `make tokenizer` puts the
// Qwen3 tokenizer.json.
func repoCache(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs("../../../.cache")
	if err != nil {
		t.Fatal(err)
	}
	if c := os.Getenv("QWENGO_CACHE"); c != "" {
		dir = c
	}
	if _, err := os.Stat(filepath.Join(dir, "tokenizer", "qwen3", "tokenizer.json")); err != nil {
		t.Skipf("no Qwen3 tokenizer in %s (run `make tokenizer`): chat on the engine not tested", dir)
	}
	return dir
}

// tinyModel writes a random 2-layer Qwen3 with the real vocabulary, so the
// real tokenizer's ids fit.
func tinyModel(t *testing.T) string {
	t.Helper()
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
	m.Randomize(3, 4, 0.05)
	dir := filepath.Join(t.TempDir(), "model")
	if err := m.SaveSafetensors(dir, tensor.F32); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestConsoleTerminalChat(t *testing.T) {
	cache := repoCache(t)
	model := tinyModel(t)
	home := t.TempDir()
	m := startTmux(t, "QWENGO_CACHE="+shellQuote(cache)+" QWENGO_MODEL= "+consoleCmd(t, home))
	m.waitFor(30*time.Second, "In [1]: ")
	m.line("x := 7")
	m.line(":chat " + model)
	m.waitFor(60*time.Second, "loaded in", "chat mode", "chat> ")
	m.line("/max 5")
	m.waitFor(5*time.Second, "max_tokens = 5", "chat> ")
	m.line("/temp 0")
	m.waitFor(5*time.Second, "temp = 0", "chat> ")
	m.line("你是誰")
	m.waitFor(60*time.Second, "chat> 你是誰", "chat> ") // the reply streams between the prompts
	m.line("/stats")
	m.waitFor(10*time.Second, "last reply: prefill", "tok/s", "KV cache:", "memory:", "chat> ")
	m.line("/system Answer briefly.")
	m.waitFor(5*time.Second, "system prompt set", "chat> ")
	m.line("/reset")
	m.waitFor(5*time.Second, "conversation reset", "chat> ")
	m.line("/nope")
	m.waitFor(5*time.Second, "unknown chat command /nope", "chat> ")
	// Back to Go: the session's state is intact.
	m.line(":go")
	m.waitFor(5*time.Second, "In [2]: ")
	m.line("x * 6")
	m.waitFor(10*time.Second, "Out[2]: 42")
	// :chat again returns to the same conversation without reloading.
	m.line(":chat")
	m.waitFor(5*time.Second, "conversation kept", "chat> ")
	t.Logf("screen:\n%s", m.screen())
	m.keys("C-d")
	m.waitExit(10 * time.Second)
}
