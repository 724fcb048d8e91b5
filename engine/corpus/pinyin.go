package corpus

import (
	"strings"
)

// toneMarks maps a vowel to its forms with tones 1-4.
var toneMarks = map[rune][4]rune{
	'a': {'ā', 'á', 'ǎ', 'à'}, 'e': {'ē', 'é', 'ě', 'è'}, 'i': {'ī', 'í', 'ǐ', 'ì'},
	'o': {'ō', 'ó', 'ǒ', 'ò'}, 'u': {'ū', 'ú', 'ǔ', 'ù'}, 'ü': {'ǖ', 'ǘ', 'ǚ', 'ǜ'},
	'A': {'Ā', 'Á', 'Ǎ', 'À'}, 'E': {'Ē', 'É', 'Ě', 'È'}, 'O': {'Ō', 'Ó', 'Ǒ', 'Ò'},
}

// PinyinMarks turns CC-CEDICT's numbered pinyin ("deng1 ta3", "lu:4", "nu:3 er2") into tone
// marks ("dēng tǎ", "lǜ", "nǚ ér"). Tone 5 (neutral) drops the digit. The mark goes on a or e
// when present, on the o of "ou", else on the last vowel. Syllables it does not recognise (letters,
// punctuation) are kept as they are.
func PinyinMarks(numbered string) string {
	words := strings.Fields(numbered)
	for i, w := range words {
		words[i] = syllableMarks(w)
	}
	return strings.Join(words, " ")
}

func syllableMarks(w string) string {
	w = strings.ReplaceAll(strings.ReplaceAll(w, "u:", "ü"), "U:", "Ü")
	w = strings.ReplaceAll(w, "v", "ü")
	if w == "" {
		return w
	}
	last := w[len(w)-1]
	if last < '1' || last > '5' {
		return w
	}
	body := []rune(w[:len(w)-1])
	tone := int(last - '0')
	if tone == 5 {
		return string(body)
	}
	at := -1
	lower := strings.ToLower(string(body))
	lr := []rune(lower)
	switch {
	case strings.ContainsRune(lower, 'a'):
		at = indexRune(lr, 'a')
	case strings.ContainsRune(lower, 'e'):
		at = indexRune(lr, 'e')
	case strings.Contains(lower, "ou"):
		at = indexRune(lr, 'o')
	default:
		for j := len(lr) - 1; j >= 0; j-- {
			if strings.ContainsRune("aeiouü", lr[j]) {
				at = j
				break
			}
		}
	}
	if at < 0 {
		return w // no vowel: "r5", "m2" and the like
	}
	marks, ok := toneMarks[body[at]]
	if !ok {
		if m, ok2 := toneMarks[lr[at]]; ok2 {
			marks, ok = m, true
		}
	}
	if !ok {
		return w
	}
	body[at] = marks[tone-1]
	return string(body)
}

func indexRune(r []rune, c rune) int {
	for i, x := range r {
		if x == c {
			return i
		}
	}
	return -1
}
