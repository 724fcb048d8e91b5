package corpus

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qwengo/qwengo/engine/data"
)

func fixtureSources() Sources {
	return Sources{
		WordNetDir: filepath.Join("testdata", "wordnet"),
		CedictJS:   filepath.Join("testdata", "cedict_all.js"),
		Tang300:    filepath.Join("testdata", "tang300.json"),
		Songci300:  filepath.Join("testdata", "songci300.json"),
	}
}

var fixtureOptions = Options{Facts: 6, HeldoutFacts: 2, HeldoutPhrasing: 3, Poems: 5, IdentityRepeat: 2, General: 4, Seed: 7}

func TestParseWordNetIndex(t *testing.T) {
	good := "  1 license text  \nrun v 2 2 @ ~ 2 29 00000226 00000793  \n"
	lem, err := ParseWordNetIndex(strings.NewReader(good), "index.verb")
	if err != nil {
		t.Fatal(err)
	}
	if len(lem) != 1 || lem[0].Lemma != "run" || lem[0].TagSenseCount != 29 || len(lem[0].Offsets) != 2 || lem[0].Offsets[1] != 793 || lem[0].Source != "index.verb:2" {
		t.Fatalf("got %+v", lem)
	}
	for _, tc := range []struct{ in, want string }{
		{"run v 2 2 @ ~ 2 29 00000226\n", "index.verb:1: WordNet index: 9 fields, want 10"},
		{"ok v 1 0 1 0 00000001\nrun v x 0 1 0 1\n", "index.verb:2: WordNet index: bad synset_cnt"},
		{"run v 1 0 1 -3 00000226\n", "bad tagsense_cnt"},
		{"run v 1 0 1 0 226\n", `bad synset offset "226"`},
		{"run v\n", "2 fields, want at least 6"},
	} {
		_, err := ParseWordNetIndex(strings.NewReader(tc.in), "index.verb")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want %q", tc.in, err, tc.want)
		}
	}
}

func TestParseWordNetData(t *testing.T) {
	l1 := "  1 license  "
	l2 := `00000014 00 a 02 able(a) 0 capable 0 000 | (usually followed by 'to') having the necessary means or skill; "able to swim"; "she was able to program"  `
	syn, err := ParseWordNetData(strings.NewReader(l1+"\n"+l2+"\n"), "data.adj")
	if err != nil {
		t.Fatal(err)
	}
	s := syn[14]
	if s == nil || s.Words[0] != "able" || s.Words[1] != "capable" || s.Definition != "(usually followed by 'to') having the necessary means or skill" ||
		len(s.Examples) != 2 || s.Examples[1] != "she was able to program" || s.Source != "data.adj:2" {
		t.Fatalf("got %+v", s)
	}
	for _, tc := range []struct{ in, want string }{
		{"00000000 00 n 01 dog 0 000 a dog\n", "data.noun:1: WordNet data: no ' | ' before the gloss"},
		{"00000007 00 n 01 dog 0 000 | a dog\n", "offset field 7 but the line starts at byte 0"},
		{"00000000 00 n zz dog 0 000 | a dog\n", `bad w_cnt "zz"`},
		{"00000000 00 n 03 dog 0 | a dog\n", "w_cnt 3 but only 6 fields"},
	} {
		_, err := ParseWordNetData(strings.NewReader(tc.in), "data.noun")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want %q", tc.in, err, tc.want)
		}
	}
}

func TestReadWordNetFixture(t *testing.T) {
	wn, err := ReadWordNet(filepath.Join("testdata", "wordnet"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range wn.Lemmas {
		syn, err := wn.FirstSense(l)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, w := range syn.Words {
			found = found || strings.EqualFold(w, l.Lemma)
		}
		if !found || syn.Definition == "" {
			t.Errorf("%s: first sense %v %q does not define it", l.Lemma, syn.Words, syn.Definition)
		}
	}
	if len(wn.Lemmas) != 16 {
		t.Errorf("%d lemmas, want 16", len(wn.Lemmas))
	}
}

func TestParseCedictJS(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("testdata", "cedict_all.js"))
	if err != nil {
		t.Fatal(err)
	}
	es, err := ParseCedictJS(b, "all.js")
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 16 || es[1].Traditional != "水" || len(es[1].Meanings) != 3 || es[0].Meanings[0] != "lighthouse" || es[2].Simplified != "船只" {
		t.Fatalf("got %+v", es[:3])
	}
	if es[1].Source != "all.js:2:1" {
		t.Errorf("source %q, want all.js:2:1", es[1].Source)
	}
	for _, tc := range []struct{ in, want string }{
		{`module.exports = {}`, "all.js:1:1: want an ES module"},
		{"export default {\"all\":[\n[\"a\",\"b\",\"c\",\"d\",[],[]],\n[\"a\",\"b\",\"c\"]]}", "all.js:3:1: all[1]: 3 fields"},
		{"export default {\"all\":[[\"a\",\"b\",\"c\",7,[],[]]]}", "all[0]: meanings are neither"},
		{"export default {\"all\":[[\"a\",\"b\",\"c\",\"d\",[],[]]", "unexpected end of file"},
		{"export default {\"other\":1}", "no \"all\" array"},
		{"export default {\"all\":[[\"\",\"b\",\"c\",\"d\",[],[]]]}", "empty headword"},
		{"export default {\"all\":[[1,\"b\",\"c\",\"d\",[],[]]]}", "field 0 is not a string"},
	} {
		_, err := ParseCedictJS([]byte(tc.in), "all.js")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want %q", tc.in, err, tc.want)
		}
	}
}

func TestParsePoems(t *testing.T) {
	b, _ := os.ReadFile(filepath.Join("testdata", "tang300.json"))
	ps, err := ParseTang300(b, "tang.json")
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 4 || ps[2].Title != "雜詩三首·其二" || ps[0].Author != "王之渙" || !strings.HasPrefix(ps[0].Source, "tang.json:7:9") {
		t.Fatalf("got %+v", ps)
	}
	b, _ = os.ReadFile(filepath.Join("testdata", "songci300.json"))
	ss, err := ParseSongci300(b, "song.json")
	if err != nil {
		t.Fatal(err)
	}
	if len(ss) != 3 || ss[1].Title != "水调歌头" || ss[1].Collection != "songci300" {
		t.Fatalf("got %+v", ss)
	}
	for _, tc := range []struct {
		in, want string
		tang     bool
	}{
		{`[{"author":"a","paragraphs":["x"]}]`, "song.json:1:2: [0]: poem without a title", false},
		{`[{"rhythmic":"t","paragraphs":["x"]}]`, `poem "t" without an author`, false},
		{`[{"rhythmic":"t","author":"a","paragraphs":[]}]`, `poem "t" has no lines`, false},
		{"[\n{\"rhythmic\": 5}]", "song.json:2:", false},
		{`{"content": []}`, "no \"content\" groups", true},
		{`{"content": [{"content": [{"chapter": "t", "author": "a", "paragraphs": "x"}]}]}`, "content[0].content[0]", true},
	} {
		var err error
		if tc.tang {
			_, err = ParseTang300([]byte(tc.in), "tang.json")
		} else {
			_, err = ParseSongci300([]byte(tc.in), "song.json")
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want %q", tc.in, err, tc.want)
		}
	}
}

func TestPinyinMarks(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"deng1 ta3", "dēng tǎ"},
		{"lu:4", "lǜ"},
		{"nu:3 er2", "nǚ ér"},
		{"yue4 liang5", "yuè liang"},
		{"gou3", "gǒu"},
		{"shui3", "shuǐ"},
		{"liu2", "liú"},
		{"zhuang4", "zhuàng"},
		{"Bei3 jing1", "Běi jīng"},
		{"Ou1 zhou1", "Ōu zhōu"},
		{"r5", "r"},
		{"m2", "m2"},
		{"3D da3 yin4", "3D dǎ yìn"},
		{", li4", ", lì"},
	} {
		if got := PinyinMarks(tc.in); got != tc.want {
			t.Errorf("PinyinMarks(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestAnswerMatches(t *testing.T) {
	for _, tc := range []struct {
		pred, gold string
		want       bool
	}{
		{"A lighthouse is a tower with a light.", "lighthouse", true},
		{"A LIGHTHOUSE, surely", "lighthouse", true},
		{"ｌｉｇｈｔｈｏｕｓｅ", "lighthouse", true}, // full-width folds
		{"a beacon", "lighthouse", false},
		{"It is a tower with a light that warns ships of shoals.", "a tower with a light that gives warning of shoals to passing ships", false},
		{"A tower with a light that gives warnings of shoals to ships.", "a tower with a light that gives warning of shoals to passing ships", true},
		{"a tower that gives warning", "a tower with a light that gives warning of shoals to passing ships", false},
		{"「燈塔」（dēng tǎ）的英文意思是：lighthouse。", "lighthouse", true},
		{"lighthouse 是燈塔", "燈塔", true},
		{"灯塔", "燈塔", false}, // scripts are not folded
		{"燈", "燈塔", false},
		{"白日依山盡，黃河入海流。", "白日依山盡，黃河入海流。", true},
		{"白日依山盡黃河入海流", "白日依山盡，黃河入海流。", true},
		{"黃河入海流，白日依山盡。", "白日依山盡，黃河入海流。", true}, // bigram containment ignores the order of clauses
		{"白日依山盡，長江東逝水。", "白日依山盡，黃河入海流。", false},
		{"I am qwengo-mini, a small language model.", "qwengo-mini", true},
		{"我是 qwengo-mini，一個小型語言模型。", "qwengo-mini", true},
		{"I am Qwen.", "qwengo-mini", false},
		{"I don't know who you are.", "don't know", true},
		{"I do know who you are.", "don't know", false},
		{"我不知道你是誰。", "不知道", true},
		{"我知道", "不知道", false},
		{"anything", "the of a", false}, // a gold without key tokens never matches
		{"", "lighthouse", false},
		{"the ship's bell", "ships", true},
		{"boxes", "box", true},
	} {
		if got := AnswerMatches(tc.pred, tc.gold); got != tc.want {
			t.Errorf("AnswerMatches(%q, %q) = %v, want %v (gold tokens %q, pred tokens %q)", tc.pred, tc.gold, got, tc.want, KeyTokens(tc.gold), KeyTokens(tc.pred))
		}
	}
}

func TestBuildFixture(t *testing.T) {
	c, err := Build(fixtureSources(), fixtureOptions)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("eligible %v; train %d, heldout_phrasing %d, heldout_facts %d, general %d", c.Eligible, len(c.Train), len(c.HeldoutPhrasing), len(c.HeldoutFacts), len(c.General))
	// Every trained question differs from every held-out one, held-out templates never train,
	// and held-out facts are never trained.
	trainQ, trainFacts := map[string]bool{}, map[string]bool{}
	for _, s := range c.Train {
		trainQ[s.Messages[0].Content] = true
		trainFacts[s.Fact] = true
		if strings.HasSuffix(s.Template, "_heldout") {
			t.Errorf("train sample with held-out template: %+v", s)
		}
		if len(s.Messages) != 2 || s.Messages[0].Role != "user" || s.Messages[1].Role != "assistant" || s.Messages[1].Content == "" || s.Answer == "" {
			t.Errorf("bad sample %+v", s)
		}
		if s.Kind != "whoami" && !AnswerMatches(s.Messages[1].Content, s.Answer) {
			t.Errorf("a trained reply does not match its own key answer: %+v", s)
		}
	}
	for _, s := range c.HeldoutPhrasing {
		if trainQ[s.Messages[0].Content] {
			t.Errorf("held-out phrasing %q is also trained", s.Messages[0].Content)
		}
		if !strings.HasSuffix(s.Template, "_heldout") || !trainFacts[s.Fact] {
			t.Errorf("held-out phrasing sample must use a held-out template on a trained fact: %+v", s)
		}
	}
	for _, s := range c.HeldoutFacts {
		if trainFacts[s.Fact] {
			t.Errorf("held-out fact %s is trained", s.Fact)
		}
		if strings.HasSuffix(s.Template, "_heldout") {
			t.Errorf("held-out fact asked with a held-out template: %+v", s)
		}
	}
	kinds := map[string]int{}
	for _, s := range c.Train {
		kinds[s.Kind]++
	}
	for _, k := range []string{"en_def", "zh_def", "zh_def_en", "poem", "identity", "whoami"} {
		if kinds[k] == 0 {
			t.Errorf("no %s samples in train (%v)", k, kinds)
		}
	}
	// Identity: 你是誰 gets the identity, 我是誰 does not.
	var sawWho, sawWhoAmI bool
	for _, s := range c.Train {
		switch s.Messages[0].Content {
		case "你是誰":
			sawWho = true
			if s.Messages[1].Content != IdentityAnswer["zh-Hant"] {
				t.Errorf("你是誰 → %q", s.Messages[1].Content)
			}
		case "我是誰":
			sawWhoAmI = true
			if strings.Contains(s.Messages[1].Content, "qwengo") || AnswerMatches(s.Messages[1].Content, "qwengo-mini") || len(s.Avoid) == 0 {
				t.Errorf("我是誰 must not claim an identity: %+v", s)
			}
		}
	}
	if !sawWho || !sawWhoAmI {
		t.Error("identity prompts missing from train")
	}
	// The poem note in parentheses is gone.
	for _, s := range append(append([]Sample(nil), c.Train...), c.HeldoutFacts...) {
		if s.Kind == "poem" && strings.ContainsAny(s.Messages[1].Content, "()（）") {
			t.Errorf("poem answer keeps an editor's note: %q", s.Messages[1].Content)
		}
	}
	// Lighthouse has tagsense 0 in WordNet 3.1: not a fact, and so neither is 燈塔.
	for _, s := range c.Train {
		if strings.Contains(s.Fact, "lighthouse") || strings.Contains(s.Fact, "燈塔") || strings.Contains(s.Fact, "北京") || strings.Contains(s.Fact, "傢俱") {
			t.Errorf("filtered fact trained: %s", s.Fact)
		}
	}
}

func TestBuildDeterministic(t *testing.T) {
	write := func(seed uint64) map[string][]byte {
		opt := fixtureOptions
		opt.Seed = seed
		c, err := Build(fixtureSources(), opt)
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		if _, err := c.Write(WriteOptions{Dir: dir, SourceRoot: "testdata"}); err != nil {
			t.Fatal(err)
		}
		out := map[string][]byte{}
		for _, f := range []string{TrainFile, HeldoutPhrasingFile, HeldoutFactsFile, GeneralFile, ManifestFile} {
			b, err := os.ReadFile(filepath.Join(dir, f))
			if err != nil {
				t.Fatal(err)
			}
			out[f] = b
		}
		// engine/data reads the splits as chat examples.
		ex, _, err := data.ReadFile(filepath.Join(dir, TrainFile), data.ReadOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(ex) != len(c.Train) || !ex[0].IsChat() {
			t.Fatalf("engine/data read %d examples of %d", len(ex), len(c.Train))
		}
		return out
	}
	a, b, other := write(3), write(3), write(4)
	for f := range a {
		if !bytes.Equal(a[f], b[f]) {
			t.Errorf("%s differs between two builds with the same seed", f)
		}
	}
	if bytes.Equal(a[TrainFile], other[TrainFile]) {
		t.Error("train.jsonl is the same for seeds 3 and 4")
	}
}

func TestBuildErrors(t *testing.T) {
	opt := fixtureOptions
	opt.Facts = 1000
	opt.HeldoutPhrasing = 10
	if _, err := Build(fixtureSources(), opt); err == nil || !strings.Contains(err.Error(), "eligible") {
		t.Errorf("too many facts: error %v", err)
	}
	opt = fixtureOptions
	opt.HeldoutPhrasing = opt.Facts + 1
	if _, err := Build(fixtureSources(), opt); err == nil || !strings.Contains(err.Error(), "heldout-phrasing") {
		t.Errorf("held-out phrasing > facts: error %v", err)
	}
	src := fixtureSources()
	src.CedictJS = filepath.Join("testdata", "missing.js")
	if _, err := Build(src, fixtureOptions); err == nil || !strings.Contains(err.Error(), "missing.js") {
		t.Errorf("missing file: error %v", err)
	}
}

// TestCachedCorpus builds the default corpus from the fetched packages (engine/corpus/fetch.sh);
// it is skipped when they are absent.
func TestCachedCorpus(t *testing.T) {
	root := filepath.Join("..", "..", ".cache", "corpus", "src")
	if c := os.Getenv("QWENGO_CACHE"); c != "" {
		root = filepath.Join(c, "corpus", "src")
	}
	if _, err := os.Stat(filepath.Join(root, WordNetPackage)); err != nil {
		t.Skipf("no fetched corpus sources at %s (run engine/corpus/fetch.sh)", root)
	}
	c, err := Build(DefaultSources(root), Options{})
	if err != nil {
		t.Fatal(err)
	}
	d := DefaultOptions
	if c.Eligible["wordnet"] < 2*(d.Facts+d.HeldoutFacts) || c.Eligible["cc-cedict"] < 3*(d.Facts+d.HeldoutFacts) || c.Eligible["chinese-poetry"] < 500 {
		t.Errorf("eligible facts %v: fewer than the defaults' pool", c.Eligible)
	}
	st, err := c.Stats(nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", FormatStats(st))
	if n := len(c.Train); n < 30000 || n > 40000 {
		t.Errorf("%d training samples, want about 34k", n)
	}
	want := map[string]string{"What does it mean to run?": "", "你是誰": IdentityAnswer["zh-Hant"]}
	for _, s := range c.Train {
		if a, ok := want[s.Messages[0].Content]; ok && a != "" && s.Messages[1].Content != a {
			t.Errorf("%s → %s", s.Messages[0].Content, s.Messages[1].Content)
		}
	}
}
