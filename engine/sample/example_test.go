package sample_test

import (
	"fmt"

	"github.com/qwengo/qwengo/engine/sample"
)

// Greedy decoding is the zero Params; penalties still apply to it.
func Example_greedy() {
	s, err := sample.New(sample.Params{RepetitionPenalty: 2}, 4)
	if err != nil {
		panic(err)
	}
	logits := []float32{4, 3, -1, 0}
	fmt.Println(s.Sample(logits, nil))      // the argmax
	fmt.Println(s.Sample(logits, []int{0})) // token 0 was seen: 4/2 = 2 < 3
	// Output:
	// 0
	// 1
}

// Qwen3's recommended non-thinking settings: temperature 0.7, top-k 20, top-p 0.8.
func Example_qwen() {
	p := sample.Params{Temperature: 0.7, TopK: 20, TopP: 0.8, Seed: 1}
	s, err := sample.New(p, 151936)
	if err != nil {
		panic(err)
	}
	logits := make([]float32, 151936)
	logits[42], logits[7] = 30, 10 // token 7 is e^-(20/0.7) times less likely: cut by top-p
	fmt.Println(s.Sample(logits, nil))
	// Output: 42
}

// Validate names the offending field.
func ExampleParams_Validate() {
	fmt.Println(sample.Params{TopP: 1.5}.Validate())
	// Output: sample: TopP = 1.5: must be in [0, 1] (0 or 1 = off)
}
