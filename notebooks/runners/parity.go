//go:build ignore

// parity.go — compare two numeric paths layer by layer (the seed compared its two inference
// paths by eye): backend, weight precision, QAT, KV cache; prints the first diverging layer.
//
//	qwenrepl run notebooks/runners/parity.go [--model M] [--a cpu:nvfp4:kv] [--b cpu:bf16] [--prompt 你是誰]
import (
	"fmt"
	"os"

	"github.com/qwengo/qwengo/engine"
	"github.com/qwengo/qwengo/kernel/cli"
)

f := cli.New("parity.go")
model := f.String("model", "qwengo-mini", "model")
a := f.String("a", "cpu:nvfp4:kv", "first path: backend:precision[:qat][:kv][:scalebug=N]")
b := f.String("b", "cpu:bf16", "second path")
prompt := f.String("prompt", "你是誰", "prompt")
f.MustParse()

m, err := engine.Load(*model)
if err != nil {
	fmt.Fprintln(os.Stderr, "parity.go:", err)
	cli.Exit(cli.ExitError)
}
r, err := m.Compare(*a, *b, *prompt)
if err != nil {
	fmt.Fprintln(os.Stderr, "parity.go:", err)
	cli.Exit(cli.ExitError)
}
fmt.Println(r)
m.Close()
