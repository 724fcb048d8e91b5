package tokenizer_test

import (
	"fmt"
	"os"

	"github.com/qwengo/qwengo/engine/tokenizer"
)

// A notebook cell loads the tokenizer once (make tokenizer fetches the file), renders a chat
// prompt, encodes it, and streams generated ids back to text.
func ExampleLoad() {
	tk, err := tokenizer.Load(os.ExpandEnv("$QWENGO_CACHE/tokenizer/qwen3/tokenizer.json"))
	if err != nil {
		fmt.Println(err)
		return
	}
	prompt := tokenizer.RenderChat([]tokenizer.Message{{Role: "user", Content: "你是誰"}}, true)
	ids := tk.Encode(prompt) // <|im_start|> and <|im_end|> become 151644 and 151645
	fmt.Println(len(ids), tk.Decode(ids) == prompt)

	imEnd, _ := tk.TokenID(tokenizer.ImEnd)
	d := tk.NewDecoder()
	for _, id := range []int{104198, 31935, 64559, 99320, 56007, 151645} { // "我是通义千问<|im_end|>"
		if id == imEnd {
			break // the stop token is not printed
		}
		fmt.Print(d.Push(id)) // only whole characters are printed
	}
	fmt.Println(d.Flush())
}

func ExampleRenderChat() {
	msgs := []tokenizer.Message{
		{Role: "system", Content: "You are a helpful assistant."},
		{Role: "user", Content: "你是誰"},
	}
	fmt.Printf("%q\n", tokenizer.RenderChat(msgs, true))
	// Output:
	// "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n你是誰<|im_end|>\n<|im_start|>assistant\n"
}
