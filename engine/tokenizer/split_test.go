package tokenizer

import (
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/dlclark/regexp2"
)

func pieces(s string) []string {
	out := []string{}
	for i := 0; i < len(s); {
		j := nextPiece(s, i)
		out = append(out, s[i:j])
		i = j
	}
	return out
}

func TestSplit(t *testing.T) {
	cases := []struct {
		in   string
		want []string
	}{
		{"Hello world", []string{"Hello", " world"}},
		{"it's I'LL we'Re you'VE he'd I'm can't", []string{"it", "'s", " I", "'LL", " we", "'Re", " you", "'VE", " he", "'d", " I", "'m", " can", "'t"}},
		{"'sa 'x 'l", []string{"'s", "a", " '", "x", " '", "l"}},
		{"''s", []string{"''", "s"}}, // the punctuation run takes both apostrophes
		{"'ſa", []string{"'ſ", "a"}}, // Oniguruma folds ſ to s under (?i)
		{"123 4", []string{"1", "2", "3", " ", "4"}},
		{"٣½Ⅻ", []string{"٣", "½", "Ⅻ"}}, // \p{N}: Nd, No, Nl one by one
		{"a  b", []string{"a", " ", " b"}},
		{"end   ", []string{"end", "   "}},
		{"x \n\n y", []string{"x", " \n\n", " y"}},
		{"a\r\n\r\nb", []string{"a", "\r\n\r\n", "b"}},
		{"a \n \n  g", []string{"a", " \n \n", " ", " g"}},
		{" !!\n\nz", []string{" !!\n\n", "z"}},
		{"!?x", []string{"!?", "x"}}, // a prefix takes one character, the run wins first
		{"!x", []string{"!x"}},
		{"  !", []string{" ", " !"}},
		{"\t!", []string{"\t", "!"}},
		{"\tfoo", []string{"\tfoo"}},
		{"\u3000日本", []string{"\u3000日本"}},
		{"你是誰？", []string{"你是誰", "？"}},
		{"x\u00a0\u3000y", []string{"x", "\u00a0", "\u3000y"}},
		{"a\u0085b", []string{"a", "\u0085b"}},
		{"a\x1cb", []string{"a", "\x1cb"}}, // U+001C is not White_Space
		{"e\u0301x", []string{"e", "\u0301x"}},
		{"1\n", []string{"1", "\n"}},
		{"\n", []string{"\n"}},
		{"🦀!\n", []string{"🦀!\n"}},
		{"x\xffy", []string{"x", "\xffy"}}, // invalid UTF-8 counts as a symbol
	}
	for _, c := range cases {
		if got := pieces(c.in); !reflect.DeepEqual(got, c.want) {
			t.Errorf("split(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// qwenRegexp2 compiles the pattern with a backtracking engine that has lookahead. regexp2 folds
// case with simple lowercasing, so unlike Oniguruma it does not take "'ſ" as a contraction;
// random tests leave ſ out of their alphabet.
func qwenRegexp2(tb testing.TB) *regexp2.Regexp {
	re, err := regexp2.Compile(QwenPattern, regexp2.None)
	if err != nil {
		tb.Fatal(err)
	}
	return re
}

func regexpPieces(tb testing.TB, re *regexp2.Regexp, s string) []string {
	out := []string{}
	m, err := re.FindStringMatch(s)
	for ; m != nil && err == nil; m, err = re.FindNextMatch(m) {
		out = append(out, m.String())
	}
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

// trickyAlphabet covers every class and every alternative of the pattern.
var trickyAlphabet = []string{
	"a", "Z", "é", "ß", "你", "ア", "\u0301", "\u0332", "1", "٣", "½", "Ⅻ",
	" ", "  ", "\t", "\n", "\r", "\r\n", "\u00a0", "\u3000", "\u2028", "\u0085", "\v", "\f", "\x1c",
	"'", "s", "t", "l", "e", "v", "r", "m", "d", "S", "L", "E", "'s", "'ll", "'VE",
	"!", "?", ".", "-", "_", "$", "🦀", "👍🏽", "\u200d", "\x00", "\x7f", "（", "。",
}

func randomText(rng *rand.Rand, n int) string {
	var b strings.Builder
	for range n {
		b.WriteString(trickyAlphabet[rng.IntN(len(trickyAlphabet))])
	}
	return b.String()
}

func TestSplitMatchesRegexp2(t *testing.T) {
	re := qwenRegexp2(t)
	rng := rand.New(rand.NewPCG(7, 11))
	n := 20000
	if testing.Short() {
		n = 2000
	}
	for range n {
		s := randomText(rng, rng.IntN(24))
		if got, want := pieces(s), regexpPieces(t, re, s); !reflect.DeepEqual(got, want) {
			t.Fatalf("split(%q) = %q, regexp2 %q", s, got, want)
		}
	}
}

func FuzzSplit(f *testing.F) {
	re := qwenRegexp2(f)
	for _, s := range []string{"it's  ok\n\n x", "a \n \n  g   \n\n\n   h\r\n\r\nend   ", "你是誰？ 123", "'ll'VE!!\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := pieces(s)
		if strings.Join(got, "") != s {
			t.Fatalf("pieces of %q do not cover it: %q", s, got)
		}
		if !utf8.ValidString(s) || strings.Contains(s, "ſ") {
			return
		}
		if want := regexpPieces(t, re, s); !reflect.DeepEqual(got, want) {
			t.Fatalf("split(%q) = %q, regexp2 %q", s, got, want)
		}
	})
}
