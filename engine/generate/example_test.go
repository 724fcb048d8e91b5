package generate_test

import (
	"context"
	"fmt"
	"strings"

	"github.com/qwengo/qwengo/engine/generate"
)

// counter is a toy LM over the vocabulary "0".."9" plus a token 10 (a stop token, or ";"
// in the chat example): it predicts the last token + 1, 10 after 9 and 0 after 10. A real model adapts its forward pass and KV cache the
// same way (Append = forward over ids at the cache's position, logits of the last one).
type counter struct{ seq []int }

func (c *counter) Append(_ context.Context, ids []int) ([]float32, error) {
	c.seq = append(c.seq, ids...)
	l := make([]float32, 11)
	l[(c.seq[len(c.seq)-1]+1)%11] = 1
	return l, nil
}
func (c *counter) Pos() int               { return len(c.seq) }
func (c *counter) Truncate(pos int) error { c.seq = c.seq[:pos]; return nil }
func (c *counter) Reset()                 { c.seq = nil }

func ExampleRun() {
	res, err := generate.Run(context.Background(), &counter{}, []int{3}, generate.Options{
		MaxTokens: 20,
		Stop:      []int{10},
		OnToken:   func(id int) error { fmt.Print(id, " "); return nil }, // streaming
	})
	if err != nil {
		panic(err)
	}
	fmt.Println("|", res.StopReason, res.IDs)
	// Output: 4 5 6 7 8 9 | stop [4 5 6 7 8 9]
}

func ExampleChat() {
	// A codec over the counter's vocabulary: one digit per token, each turn rendered as its
	// content and ";" — a real codec wraps the tokenizer and the Qwen chat template.
	codec := generate.ChatCodec{
		Render: func(msgs []generate.Message, gen bool) string {
			var b strings.Builder
			for _, m := range msgs {
				b.WriteString(m.Content + ";")
			}
			return b.String()
		},
		Encode: func(s string) []int {
			var ids []int
			for _, r := range s {
				if r >= '0' && r <= '9' {
					ids = append(ids, int(r-'0'))
				} else {
					ids = append(ids, 10)
				}
			}
			return ids
		},
		NewDecoder: func() (func(int) string, func() string) {
			return func(id int) string { return fmt.Sprint(id) }, func() string { return "" }
		},
		Stop: []int{10},
	}
	lm := &counter{}
	chat := generate.NewChat(lm, codec)
	for _, user := range []string{"5", "7"} {
		res, reply, err := chat.Send(context.Background(), user, generate.Options{MaxTokens: 3}, nil)
		if err != nil {
			panic(err)
		}
		fmt.Printf("%s -> %s (prefilled %d, cache %d)\n", user, reply, res.PrefillTokens, chat.Cached())
	}
	// Output:
	// 5 -> 012 (prefilled 2, cache 6)
	// 7 -> 012 (prefilled 2, cache 12)
}
