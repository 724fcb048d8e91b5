package jobs

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qwengo/qwengo/engine/corpus"
)

// corpusFixtureRoot lays engine/corpus's fixtures out as fetch.sh lays out the packages.
func corpusFixtureRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	td := filepath.Join("..", "..", "engine", "corpus", "testdata")
	src := corpus.DefaultSources(root)
	copyTo := func(from, to string) {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"index.noun", "index.verb", "index.adj", "data.noun", "data.verb", "data.adj"} {
		copyTo(filepath.Join(td, "wordnet", f), filepath.Join(src.WordNetDir, f))
	}
	copyTo(filepath.Join(td, "cedict_all.js"), src.CedictJS)
	copyTo(filepath.Join(td, "tang300.json"), src.Tang300)
	copyTo(filepath.Join(td, "songci300.json"), src.Songci300)
	return root
}

func TestCorpusCommand(t *testing.T) {
	root := corpusFixtureRoot(t)
	out := filepath.Join(t.TempDir(), "v1")
	args := []string{"--src", root, "--out", out, "--facts", "6", "--heldout-facts", "2", "--heldout-phrasing", "3",
		"--poems", "5", "--identity-repeat", "2", "--general", "4", "--no-tokens", "--json"}
	var stdout, stderr bytes.Buffer
	if code := runCorpus(args, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	var m corpus.Manifest
	if err := json.Unmarshal(stdout.Bytes(), &m); err != nil {
		t.Fatalf("--json output: %v\n%s", err, stdout.String())
	}
	if m.Options.Facts != 6 || m.Splits[corpus.TrainFile].Samples == 0 || len(m.Sources) != 3 || m.Sources[0].Files[0].SHA256 == "" {
		t.Errorf("manifest %+v", m)
	}
	for _, f := range []string{corpus.TrainFile, corpus.HeldoutPhrasingFile, corpus.HeldoutFactsFile, corpus.GeneralFile, corpus.ManifestFile} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Error(err)
		}
	}
	for _, tc := range []struct {
		args []string
		want string
		code int
	}{
		{[]string{"--src", root, "--facts", "0"}, "--facts must be ≥ 1", 2},
		{[]string{"--src", filepath.Join(root, "nope")}, "fetch.sh", 1},
		{[]string{"--src", root, "--out", out, "--facts", "500", "--no-tokens"}, "eligible", 1},
	} {
		stderr.Reset()
		if code := runCorpus(tc.args, &stdout, &stderr); code != tc.code || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q", tc.args, code, stderr.String(), tc.code, tc.want)
		}
	}
}
