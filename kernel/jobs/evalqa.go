package jobs

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"

	"github.com/qwengo/qwengo/engine"
	"github.com/qwengo/qwengo/engine/corpus"
	"github.com/qwengo/qwengo/kernel/cli"
)

func init() {
	cli.Register(cli.Command{Name: "evalqa", Summary: "held-out answer accuracy of a model on the corpus's question sets (greedy generation)", Run: runEvalQA})
}

func runEvalQA(args []string, stdout, stderr io.Writer) int {
	f := cli.New("evalqa")
	f.SetOutput(stderr)
	model := f.String("model", "", "model directory or weight file")
	tokPath := f.String("tokenizer", "", "tokenizer.json (default: beside the model, else the cached Qwen3 one)")
	corpusDir := f.String("corpus", ".cache/corpus/v1", "corpus folder (heldout_phrasing.jsonl, heldout_facts.jsonl)")
	perLang := f.Int("per-lang", 50, "questions per set and language")
	jsonOut := f.JSON()
	f.Required("model")
	if code, ok := f.ParseCommand(args); !ok {
		return code
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	fail := func(err error) int {
		fmt.Fprintln(stderr, "evalqa:", err)
		return cli.ExitError
	}
	im, err := engine.LoadWith(*model, engine.LoadOptions{Tokenizer: *tokPath})
	if err != nil {
		return fail(err)
	}
	defer im.Close()
	sets := map[string][]corpus.Sample{}
	for _, name := range []string{corpus.HeldoutPhrasingFile, corpus.HeldoutFactsFile} {
		ss, err := readCorpusSamples(filepath.Join(*corpusDir, name))
		if err != nil {
			return fail(err)
		}
		sets[strings.TrimSuffix(name, ".jsonl")] = ss
	}
	acc, ex, err := answerAccuracy(ctx, im, sets, *perLang)
	if err != nil {
		return fail(err)
	}
	if *jsonOut {
		cli.WriteJSON(stdout, map[string]any{"model": *model, "per_lang": *perLang, "accuracy": acc, "examples": ex})
		return cli.ExitOK
	}
	for _, k := range sortedKeys(acc) {
		fmt.Fprintf(stdout, "%-28s %5.1f %%\n", k, 100*acc[k])
	}
	return cli.ExitOK
}

// readCorpusSamples reads a corpus JSONL split as written by `qwenrepl corpus`.
func readCorpusSamples(path string) ([]corpus.Sample, error) {
	_, raw, err := readSamplesRaw(path)
	return raw, err
}
