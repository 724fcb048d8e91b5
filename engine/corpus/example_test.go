package corpus_test

import (
	"fmt"

	"github.com/qwengo/qwengo/engine/corpus"
)

// A notebook cell scores generations on heldout_phrasing.jsonl: each sample's "answer" is the
// gold key, and a "who am I" sample also lists what it must avoid.
func ExampleAnswerMatches() {
	fmt.Println(corpus.AnswerMatches("A lighthouse is a tower with a light that warns ships.", "lighthouse"))
	fmt.Println(corpus.AnswerMatches("「燈塔」（dēng tǎ）的英文意思是：lighthouse。", "lighthouse"))
	fmt.Println(corpus.AnswerMatches("白日依山盡，黃河入海流。", "白日依山盡，黃河入海流。"))
	fmt.Println(corpus.AnswerMatches("我是 qwengo-mini。", "不知道"))
	fmt.Println(corpus.KeyTokens("a tower with a light"))
	// Output:
	// true
	// true
	// true
	// false
	// [tower light]
}
