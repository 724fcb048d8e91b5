package data

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadTSV(t *testing.T) {
	in := "\xef\xbb\xbf# format: prompt<TAB>target\r\nprompt\ttarget\r\n你是誰\t我是 F# 之神\r\n\r\n  \nline\\nbreak\tok\\tdone\n"
	ex, rep, err := Read(strings.NewReader(in), "x.tsv", TSV, ReadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(ex) != 2 || rep.Comments != 1 || rep.Headers != 1 || rep.Empty != 2 {
		t.Fatalf("got %d examples, report %+v", len(ex), rep)
	}
	if ex[0].Messages[0].Content != "你是誰" || ex[0].Messages[1].Content != "我是 F# 之神" || ex[0].Source != "x.tsv:3" {
		t.Fatalf("row 1 = %+v", ex[0])
	}
	if ex[1].Messages[0].Content != "line\nbreak" || ex[1].Messages[1].Content != "ok\tdone" {
		t.Fatalf("escapes: %+v", ex[1])
	}
}

func TestReadErrors(t *testing.T) {
	cases := []struct {
		name, in string
		format   Format
		want     string
	}{
		{"no tab", "a\tb\nno tab here\n", TSV, "x:2: no tab"},
		{"empty target", "a\t \n", TSV, "x:1: empty prompt or target"},
		{"two tabs", "a\tb\tc\n", TSV, "x:1: more than one tab"},
		{"bad json", "{\"messages\": [\n", JSONL, "x:1: invalid JSON"},
		{"bad role", `{"messages":[{"role":"bot","content":"x"}]}`, JSONL, `unknown role "bot"`},
		{"no assistant", `{"messages":[{"role":"user","content":"x"}]}`, JSONL, "no assistant turn"},
		{"prompt only", `{"prompt":"x"}`, JSONL, `"prompt" without`},
		{"unknown shape", `{"foo":1}`, JSONL, "want {"},
	}
	for _, c := range cases {
		_, _, err := Read(strings.NewReader(c.in), "x", c.format, ReadOptions{})
		var re *RowError
		if err == nil || !strings.Contains(err.Error(), c.want) || !errors.As(err, &re) {
			t.Errorf("%s: err = %v, want %q", c.name, err, c.want)
		}
		_, rep, err := Read(strings.NewReader(c.in), "x", c.format, ReadOptions{Lenient: true})
		if err != nil || len(rep.Skipped) != 1 {
			t.Errorf("%s lenient: err %v, skipped %v", c.name, err, rep.Skipped)
		}
	}
}

func TestReadJSONLAndText(t *testing.T) {
	in := `{"messages":[{"role":"system","content":"S"},{"role":"user","content":"q"},{"role":"assistant","content":"a"}]}
{"prompt":"p","completion":"c"}
{"text":"plain"}
`
	ex, _, err := Read(strings.NewReader(in), "x.jsonl", JSONL, ReadOptions{})
	if err != nil || len(ex) != 3 {
		t.Fatal(ex, err)
	}
	if len(ex[0].Messages) != 3 || ex[1].Messages[1].Content != "c" || ex[2].Text != "plain" {
		t.Fatalf("%+v", ex)
	}
	ex, _, err = Read(strings.NewReader("one\r\ntwo\n"), "x.txt", Text, ReadOptions{})
	if err != nil || len(ex) != 2 || ex[0].Text != "one" {
		t.Fatal(ex, err)
	}
	if _, err := FormatOf("x.csv"); err == nil {
		t.Fatal("csv accepted")
	}
}

// fakeChat renders the Qwen template and "tokenises" one id per rune (special tokens one id each),
// which is enough to check masks, boundaries and truncation.
func fakeChat() *Chat {
	specials := map[string]int{"<|im_start|>": 1, "<|im_end|>": 2}
	return &Chat{
		EndOfTurn: 2,
		Pad:       0,
		Render: func(msgs []Message, gen bool) string {
			var b strings.Builder
			for _, m := range msgs {
				b.WriteString("<|im_start|>" + m.Role + "\n" + m.Content + "<|im_end|>\n")
			}
			if gen {
				b.WriteString("<|im_start|>assistant\n")
			}
			return b.String()
		},
		Encode: func(s string) []int {
			var ids []int
			for len(s) > 0 {
				matched := false
				for tok, id := range specials {
					if strings.HasPrefix(s, tok) {
						ids = append(ids, id)
						s = s[len(tok):]
						matched = true
						break
					}
				}
				if !matched {
					r := []rune(s)[0]
					ids = append(ids, 1000+int(r))
					s = s[len(string(r)):]
				}
			}
			return ids
		},
	}
}

func decode(ids []int) string {
	var b strings.Builder
	for _, id := range ids {
		switch id {
		case 1:
			b.WriteString("<|im_start|>")
		case 2:
			b.WriteString("<|im_end|>")
		case 0:
			b.WriteString("_")
		default:
			b.WriteRune(rune(id - 1000))
		}
	}
	return b.String()
}

func TestTokenizeChatMatchesInferenceTemplate(t *testing.T) {
	c := fakeChat()
	ex := Example{Messages: []Message{{"user", "你是誰"}, {"assistant", "我是 F# 之神"}}, Source: "t:1"}
	s, err := c.Tokenize(ex, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Training text = inference rendering of the pair, minus the newline after the final end of turn.
	want := strings.TrimSuffix(c.Render(ex.Messages, false), "\n")
	if got := decode(s.IDs); got != want {
		t.Fatalf("training text\n%q\nwant\n%q", got, want)
	}
	var sup []int
	for j, m := range s.Mask {
		if m {
			sup = append(sup, s.IDs[j])
		}
	}
	if got := decode(sup); got != "我是 F# 之神<|im_end|>" {
		t.Fatalf("supervised = %q, want the reply plus <|im_end|>", got)
	}
	// The prompt, as the model sees it at inference, is exactly the unsupervised prefix.
	prompt := c.Render(ex.Messages[:1], true)
	if got := decode(s.IDs[:len(s.IDs)-s.Targets()]); got != prompt {
		t.Fatalf("prompt part %q, want %q", got, prompt)
	}
}

func TestTokenizeMultiTurnAndSystem(t *testing.T) {
	c := fakeChat()
	ex := Example{Messages: []Message{{"system", "S"}, {"user", "a"}, {"assistant", "b"}, {"user", "c"}, {"assistant", "d"}}}
	s, err := c.Tokenize(ex, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := decode(s.IDs), strings.TrimSuffix(c.Render(ex.Messages, false), "\n"); got != want {
		t.Fatalf("got %q want %q", got, want)
	}
	if s.Targets() != 4 { // b, im_end, d, im_end
		t.Fatalf("targets = %d", s.Targets())
	}
}

func TestTruncateKeepsAnswer(t *testing.T) {
	c := fakeChat()
	long := strings.Repeat("長", 50)
	ex := Example{Messages: []Message{{"user", long}, {"assistant", "答"}}}
	full, _ := c.Tokenize(ex, 0)
	s, err := c.Tokenize(ex, 30)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.IDs) != 30 || s.AnswerCut != 0 || s.PromptCut != len(full.IDs)-30 {
		t.Fatalf("len %d promptCut %d answerCut %d", len(s.IDs), s.PromptCut, s.AnswerCut)
	}
	txt := decode(s.IDs)
	if !strings.HasPrefix(txt, "<|im_start|>user\n長") || !strings.HasSuffix(txt, "<|im_start|>assistant\n答<|im_end|>") {
		t.Fatalf("truncated text %q", txt)
	}
	// An answer longer than the budget keeps its head.
	ex = Example{Messages: []Message{{"user", "q"}, {"assistant", strings.Repeat("x", 40)}}}
	s, _ = c.Tokenize(ex, 20)
	if len(s.IDs) != 20 || s.AnswerCut == 0 {
		t.Fatalf("len %d answerCut %d", len(s.IDs), s.AnswerCut)
	}
}

func TestPlainText(t *testing.T) {
	s, err := fakeChat().Tokenize(Example{Text: "hello"}, 3)
	if err != nil || len(s.IDs) != 3 || s.Mask[0] || !s.Mask[1] || s.AnswerCut != 2 {
		t.Fatalf("%+v %v", s, err)
	}
}

func TestParseMix(t *testing.T) {
	cases := []struct {
		in   string
		want []float64
		err  string
	}{
		{"a.tsv:0.05,b.jsonl:0.95", []float64{0.05, 0.95}, ""},
		{"a.tsv:0.1,b.tsv", []float64{0.1, 0.9}, ""},
		{"a.tsv,b.tsv", []float64{0.5, 0.5}, ""},
		{"c:/x/a.tsv:0.5,b:0.5", []float64{0.5, 0.5}, ""},
		{"a:0.7,b:0.6", nil, "sum to"},
		{"a:0,b", nil, "not in (0, 1]"},
		{"a,,b", nil, "empty"},
		{"a:1,b", nil, "leave nothing"},
	}
	for _, c := range cases {
		got, err := ParseMix(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%q: err %v, want %q", c.in, err, c.err)
			}
			continue
		}
		if err != nil || len(got) != len(c.want) {
			t.Errorf("%q: %v %v", c.in, got, err)
			continue
		}
		for i := range got {
			if math.Abs(got[i].Ratio-c.want[i]) > 1e-12 {
				t.Errorf("%q: ratio %d = %v, want %v", c.in, i, got[i].Ratio, c.want[i])
			}
		}
	}
}

func samples(n int, tag int) []*Sample {
	out := make([]*Sample, n)
	for i := range out {
		out[i] = &Sample{IDs: []int{tag, i}, Mask: []bool{false, true}}
	}
	return out
}

func TestMixtureRatioAndResume(t *testing.T) {
	src := []Source{{"identity", samples(7, 1), 0.05}, {"replay", samples(50, 2), 0.95}}
	m, err := NewMixture(src, 42)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10000; i++ {
		m.Next()
	}
	share := m.Shares()["identity"]
	if math.Abs(share-0.05) > 0.01 {
		t.Fatalf("identity share %.4f, want 0.05 ± 0.01", share)
	}
	t.Logf("realised identity share over 10k draws: %.4f (asked 0.05)", share)

	a, _ := NewMixture(src, 7)
	for i := 0; i < 123; i++ {
		a.Next()
	}
	st, err := a.State()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := NewMixture(src, 7)
	if err := b.Restore(st); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 500; i++ {
		x, _ := a.Next()
		y, _ := b.Next()
		if x != y {
			t.Fatalf("draw %d after resume differs", i)
		}
	}
	if err := b.Restore(st[:3]); err == nil {
		t.Fatal("truncated state accepted")
	}
}

func TestMixtureEpochCoversAll(t *testing.T) {
	m, _ := NewMixture([]Source{{"a", samples(10, 1), 1}}, 1)
	seen := map[int]bool{}
	for i := 0; i < 10; i++ {
		s, _ := m.Next()
		seen[s.IDs[1]] = true
	}
	if len(seen) != 10 {
		t.Fatalf("one epoch visited %d of 10", len(seen))
	}
}

func TestBatchPadding(t *testing.T) {
	b := MakeBatch([]*Sample{{IDs: []int{5, 6, 7}, Mask: []bool{false, true, true}}, {IDs: []int{8}, Mask: []bool{false}}}, 0)
	if b.B != 2 || b.T != 3 || b.IDs[3] != 8 || b.IDs[4] != 0 || b.Mask[4] || b.Targets != 2 {
		t.Fatalf("%+v", b)
	}
}

func TestSplitStable(t *testing.T) {
	var ex []Example
	for i := 0; i < 1000; i++ {
		ex = append(ex, Example{Text: strings.Repeat("x", i%37) + string(rune('a'+i%26)) + string(rune(i))})
	}
	tr, he := Split(ex, 0.1, 3)
	if len(he) < 60 || len(he) > 140 || len(tr)+len(he) != 1000 {
		t.Fatalf("held %d", len(he))
	}
	// Reordering keeps each row on its side.
	rev := append([]Example(nil), ex...)
	for i, j := 0, len(rev)-1; i < j; i, j = i+1, j-1 {
		rev[i], rev[j] = rev[j], rev[i]
	}
	_, he2 := Split(rev, 0.1, 3)
	if len(he2) != len(he) {
		t.Fatal("split depends on order")
	}
}

func TestSeedFiles(t *testing.T) {
	dir := "/work/shared/data/seed/TrainData"
	files, _ := filepath.Glob(filepath.Join(dir, "*.tsv"))
	if len(files) == 0 {
		t.Skip("seed TrainData not present")
	}
	for _, f := range files {
		ex, rep, err := ReadFile(f, ReadOptions{})
		if err != nil {
			t.Errorf("%v", err)
			continue
		}
		t.Logf("%s: %d rows, %d comments, %d headers", filepath.Base(f), len(ex), rep.Comments, rep.Headers)
	}
	if _, err := os.Stat(filepath.Join(dir, "train-inputs.txt")); err == nil {
		ex, _, err := ReadFile(filepath.Join(dir, "train-inputs.txt"), ReadOptions{})
		if err != nil || len(ex) == 0 {
			t.Errorf("train-inputs.txt: %v", err)
		}
	}
}

func FuzzTSV(f *testing.F) {
	f.Add("# c\nprompt\ttarget\na\tb\n")
	f.Add("\xef\xbb\xbfx\ty\r\n\r\n")
	f.Add("a\\n\\t\\\\\tb\\")
	f.Fuzz(func(t *testing.T, in string) {
		ex, _, err := Read(strings.NewReader(in), "f.tsv", TSV, ReadOptions{Lenient: true})
		if err != nil {
			return
		}
		for _, e := range ex {
			if len(e.Messages) != 2 || e.Messages[0].Content == "" || e.Messages[1].Content == "" {
				t.Fatalf("bad example %+v", e)
			}
		}
	})
}
