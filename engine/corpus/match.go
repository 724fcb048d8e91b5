package corpus

import (
	"strings"
	"unicode"

	"golang.org/x/text/unicode/norm"
)

// AnswerMatches reports whether a generated answer pred contains the key words of the gold
// answer gold: normalised containment, the held-out accuracy metric of the corpus.
//
// Both texts are normalised (NFKC, so full-width letters and digits fold to ASCII; lower case;
// "’" as "'") and cut into key tokens:
//   - a run of letters, digits and inner apostrophes is a word; English stop words ("a", "the",
//     "of", "to", "is", ...) are dropped and a plural "-s"/"-es" is removed, so "ships" matches
//     "ship" (negations such as "not" and "don't" are kept: they carry meaning);
//   - a run of Han characters becomes its character bigrams ("燈塔" → {燈塔}, "白日依山" →
//     {白日, 日依, 依山}), a lone character is its own token; so order inside a run matters
//     locally, and punctuation between runs does not.
//
// pred matches when it contains at least ceil(3/4 × n) of the n distinct key tokens of gold:
// all of them for n ≤ 3, so a short gold ("lighthouse", "燈塔", "qwengo-mini") must appear
// whole, while a long gold (a WordNet definition, a poem's first lines) tolerates a missing or
// reworded word in four. A gold without key tokens never matches (it cannot tell anything).
// Traditional and simplified characters are different tokens: gold and pred are expected in the
// script the question asked in.
func AnswerMatches(pred, gold string) bool {
	want := keyTokens(gold)
	if len(want) == 0 {
		return false
	}
	have := map[string]bool{}
	for _, t := range keyTokens(pred) {
		have[t] = true
	}
	hit := 0
	for _, t := range want {
		if have[t] {
			hit++
		}
	}
	need := (3*len(want) + 3) / 4 // ceil(3n/4)
	return hit >= need
}

// KeyTokens returns the distinct key tokens AnswerMatches compares, in order of appearance (for
// reports: which words of the gold answer a prediction missed).
func KeyTokens(s string) []string { return keyTokens(s) }

func keyTokens(s string) []string {
	s = strings.ToLower(norm.NFKC.String(s))
	s = strings.NewReplacer("’", "'", "‘", "'").Replace(s)
	seen := map[string]bool{}
	var out []string
	add := func(t string) {
		if t != "" && !seen[t] {
			seen[t] = true
			out = append(out, t)
		}
	}
	rs := []rune(s)
	for i := 0; i < len(rs); {
		r := rs[i]
		switch {
		case unicode.Is(unicode.Han, r):
			j := i
			for j < len(rs) && unicode.Is(unicode.Han, rs[j]) {
				j++
			}
			if j-i == 1 {
				add(string(rs[i]))
			}
			for k := i; k+1 < j; k++ {
				add(string(rs[k : k+2]))
			}
			i = j
		case unicode.IsLetter(r) || unicode.IsDigit(r):
			j := i
			for j < len(rs) && (isWordRune(rs[j]) || (rs[j] == '\'' && j+1 < len(rs) && isWordRune(rs[j+1]) && j > i)) {
				j++
			}
			w := string(rs[i:j])
			if !stopWords[w] {
				add(stem(w))
			}
			i = j
		default:
			i++
		}
	}
	return out
}

func isWordRune(r rune) bool {
	return (unicode.IsLetter(r) || unicode.IsDigit(r)) && !unicode.Is(unicode.Han, r)
}

// stem removes a plural or possessive ending: "ships" → "ship", "boxes" → "box", "ship's" → "ship".
func stem(w string) string {
	w = strings.TrimSuffix(w, "'s")
	switch {
	case len(w) > 4 && (strings.HasSuffix(w, "sses") || strings.HasSuffix(w, "xes") || strings.HasSuffix(w, "ches") || strings.HasSuffix(w, "shes")):
		return w[:len(w)-2]
	case len(w) > 3 && strings.HasSuffix(w, "s") && !strings.HasSuffix(w, "ss") && !strings.HasSuffix(w, "us") && !strings.HasSuffix(w, "is"):
		return w[:len(w)-1]
	}
	return w
}

// stopWords are English function words that carry no answer content. Negations are not here.
var stopWords = func() map[string]bool {
	m := map[string]bool{}
	for _, w := range strings.Fields(`a an the of to in on at by for from with and or as is are was were be been
		being it its this that these those which who whom what whose used e g i e etc sb sth one's
		someone something someone's oneself he she they them his her their you your i me my we our
		us do does did has have had into onto than then so such very can could may might will would
		shall should also any some`) {
		m[w] = true
	}
	return m
}()
