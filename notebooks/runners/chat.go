//go:build ignore

// chat.go — the seed's chat runner: multi-turn chat, interactive or scripted, with timing and an
// optional logits check (top-5 next tokens of the first turn's prompt).
//
//	qwenrepl run notebooks/runners/chat.go [--model M] [--turns "你是誰|我是誰"] [--max-tokens 64] [--check-logits]
//
// With no --turns it reads messages from stdin until EOF (one per line).
import (
	"bufio"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/qwengo/qwengo/engine"
	"github.com/qwengo/qwengo/kernel/cli"
)

f := cli.New("chat.go")
model := f.String("model", "qwengo-mini", "model: a HF directory, NVFP4 safetensors, a seed .dat, or qwengo-mini")
turns := f.String("turns", "", "messages separated by | (default: read stdin, one per line)")
maxTok := f.Int("max-tokens", 64, "tokens per reply at most")
checkLogits := f.Bool("check-logits", false, "print the top-5 next tokens after the first prompt")
f.MustParse()

m, err := engine.Load(*model)
if err != nil {
	fmt.Fprintln(os.Stderr, "chat.go:", err)
	cli.Exit(cli.ExitError)
}
chat, err := m.NewChat()
if err != nil {
	fmt.Fprintln(os.Stderr, "chat.go:", err)
	cli.Exit(cli.ExitError)
}
chat.Options.MaxTokens = *maxTok
chat.Options.Stream = func(s string) { fmt.Print(s) }

var msgs []string
if *turns != "" {
	msgs = strings.Split(*turns, "|")
} else {
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		if t := strings.TrimSpace(sc.Text()); t != "" {
			msgs = append(msgs, t)
		}
	}
}
// (variables assigned inside blocks are declared here: written when the interpreter did not accept
// `a, b := f()` inside a block of a script's top level)
var lg []float32
var lerr error
if *checkLogits && len(msgs) > 0 {
	lg, lerr = m.Logits(msgs[0])
	if lerr != nil {
		fmt.Fprintln(os.Stderr, "chat.go:", lerr)
		cli.Exit(cli.ExitError)
	}
	idx := make([]int, len(lg))
	for i := range idx {
		idx[i] = i
	}
	sort.Slice(idx, func(a, b int) bool { return lg[idx[a]] > lg[idx[b]] })
	var tok string
	for _, id := range idx[:5] {
		tok, _ = m.Detokenize([]int{id})
		fmt.Printf("logit %8.3f  id %6d  %q\n", lg[id], id, tok)
	}
}
var sendErr error
for _, q := range msgs {
	fmt.Printf("> %s\n", q)
	_, sendErr = chat.Send(q)
	if sendErr != nil {
		fmt.Fprintln(os.Stderr, "chat.go:", sendErr)
		cli.Exit(cli.ExitError)
	}
	r := chat.Last()
	fmt.Printf("\n  [%d prompt tokens in %v, %d generated in %v, stop: %s]\n", r.PrefillTokens, r.PrefillTime, len(r.IDs), r.DecodeTime, r.StopReason)
}
chat.Close()
m.Close()
