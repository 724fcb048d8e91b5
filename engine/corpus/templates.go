package corpus

import "strings"

// template is a question form with {w} (word), {aw} (word with article), {m} (English meaning),
// {t} (title) and {a} (author) slots.
type template struct{ id, text string }

func (t template) fill(v map[string]string) string {
	s := t.text
	for k, x := range v {
		s = strings.ReplaceAll(s, "{"+k+"}", x)
	}
	return s
}

// templateSet is the trained question forms of a kind and its held-out one, which appears only in
// heldout_phrasing.jsonl.
type templateSet struct {
	train   []template
	heldout template
}

// enTemplates ask for an English word's definition, by WordNet part of speech.
var enTemplates = map[string]templateSet{
	"n": {train: []template{
		{"en_what_is", "What is {aw}?"},
		{"en_word_mean", `What does the word "{w}" mean?`},
		{"en_define", `Define "{w}".`},
		{"en_meaning_of", `What is the meaning of "{w}"?`},
	}, heldout: template{"en_tell_me_heldout", `Can you tell me what "{w}" means?`}},
	"v": {train: []template{
		{"en_mean_to", "What does it mean to {w}?"},
		{"en_verb_mean", `What does the verb "{w}" mean?`},
		{"en_define_verb", `Define the verb "{w}".`},
		{"en_meaning_of", `What is the meaning of "{w}"?`},
	}, heldout: template{"en_tell_me_heldout", `Can you tell me what "{w}" means?`}},
	"a": {train: []template{
		{"en_mean", `What does "{w}" mean?`},
		{"en_adj_mean", `What does the adjective "{w}" mean?`},
		{"en_define", `Define "{w}".`},
		{"en_meaning_of", `What is the meaning of "{w}"?`},
	}, heldout: template{"en_tell_me_heldout", `Can you tell me what "{w}" means?`}},
}

// zhTemplates ask for a Chinese word's meaning in Chinese, by script.
var zhTemplates = map[string]templateSet{
	"zh-Hant": {train: []template{
		{"zh_quoted_mean", "「{w}」是什麼意思？"},
		{"zh_mean", "{w}是什麼意思？"},
		{"zh_english", "「{w}」的英文是什麼？"},
		{"zh_explain", "請解釋「{w}」。"},
	}, heldout: template{"zh_this_word_heldout", "「{w}」這個詞是什麼意思？"}},
	"zh-Hans": {train: []template{
		{"zh_quoted_mean", "「{w}」是什么意思？"},
		{"zh_mean", "{w}是什么意思？"},
		{"zh_english", "「{w}」的英文是什么？"},
		{"zh_explain", "请解释「{w}」。"},
	}, heldout: template{"zh_this_word_heldout", "「{w}」这个词是什么意思？"}},
}

// zhEnTemplates ask for a Chinese word's meaning in English.
var zhEnTemplates = templateSet{train: []template{
	{"zhen_mean", "What does {w} mean?"},
	{"zhen_meaning_of", "What is the meaning of {w}?"},
	{"zhen_translate", "Translate {w} into English."},
}, heldout: template{"zhen_chinese_word_heldout", "What does the Chinese word {w} mean in English?"}}

// enToZhTemplates ask for the Chinese word of an English meaning.
var enToZhTemplates = templateSet{train: []template{
	{"enzh_say", `How do you say "{m}" in Chinese?`},
	{"enzh_in_chinese", `What is "{m}" in Chinese?`},
}, heldout: template{"enzh_word_for_heldout", `What is the Chinese word for "{m}"?`}}

// poemTemplates ask for a poem's first lines, by language of the question.
var poemTemplates = map[string]templateSet{
	"en": {train: []template{
		{"poem_recite", "Recite the first lines of 《{t}》 by {a}."},
		{"poem_begin", "How does 《{t}》 by {a} begin?"},
	}, heldout: template{"poem_opening_heldout", "What are the opening lines of {a}'s 《{t}》?"}},
	"zh-Hant": {train: []template{
		{"poem_recite", "請背誦{a}的《{t}》的開頭。"},
		{"poem_begin", "{a}的《{t}》是怎麼開頭的？"},
	}, heldout: template{"poem_opening_heldout", "《{t}》（{a}）的前兩句是什麼？"}},
	"zh-Hans": {train: []template{
		{"poem_recite", "请背诵{a}的《{t}》的开头。"},
		{"poem_begin", "{a}的《{t}》是怎么开头的？"},
	}, heldout: template{"poem_opening_heldout", "《{t}》（{a}）的前两句是什么？"}},
}

// HeldoutTemplates lists the held-out question forms by kind (for the manifest and reports).
func HeldoutTemplates() map[string][]string {
	return map[string][]string{
		"en_def":    {enTemplates["n"].heldout.text},
		"zh_def":    {zhTemplates["zh-Hant"].heldout.text, zhTemplates["zh-Hans"].heldout.text},
		"zh_def_en": {zhEnTemplates.heldout.text},
		"en_to_zh":  {enToZhTemplates.heldout.text},
		"poem":      {poemTemplates["en"].heldout.text, poemTemplates["zh-Hant"].heldout.text, poemTemplates["zh-Hans"].heldout.text},
		"identity":  heldoutIdentity(false),
		"whoami":    heldoutIdentity(true),
	}
}

func heldoutIdentity(whoami bool) []string {
	var out []string
	for _, q := range identityPrompts {
		if q.heldout && q.whoami == whoami {
			out = append(out, q.text)
		}
	}
	return out
}
