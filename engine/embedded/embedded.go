//go:build !qwengo_noembed

// Package embedded holds qwengo-mini, the default model: a small Qwen3-architecture model
// (the real Qwen3 tokenizer, 151,936-token vocabulary, tied embeddings) that the project
// pretrained itself with `qwenrepl pretrain` on a bilingual corpus built from package-registry
// data (`make corpus`), stored as NVFP4 (model/, about 25 MB). It makes the whole workflow —
// chat, one-step probes, parity tools, training, the F# God experiment — run on a fresh machine
// without a GPU or downloaded weights. model/MODEL_CARD.md records the data, the recipe, the loss
// curve and the held-out metrics; `make embedded-model` reproduces it on a GPU machine.
//
// The files are compiled into binaries that import this package (engine does); Dir writes them
// once to the user's cache ($QWENGO_CACHE/models, else the user cache directory), under a name
// that carries the weights' hash, so every loader reads a plain directory. Build with the tag
// qwengo_noembed to leave the model out (Dir then returns ErrNotEmbedded).
package embedded

import (
	"embed"
	"io/fs"
)

//go:embed model/config.json model/model.safetensors model/hf_quant_config.json model/MODEL_CARD.md model/loss_curve.csv
var files embed.FS

func modelFS() (fs.FS, error) { return fs.Sub(files, "model") }
