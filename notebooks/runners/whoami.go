//go:build ignore

// whoami.go — the seed's WhoAmI runner, done the measured way: fine-tune the identity
// (你是誰 → the new identity) mixed with replay that the base model generates itself, then
// export to NVFP4 safetensors and the seed's .dat.
//
//	qwenrepl run notebooks/runners/whoami.go [--model M] [--identity "我是 F# 之神。"] [--steps 40]
//	    [--lr 3e-4] [--identity-share 0.1] [--out DIR]
import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/qwengo/qwengo/engine"
	"github.com/qwengo/qwengo/engine/data"
	"github.com/qwengo/qwengo/engine/devtrain"
	"github.com/qwengo/qwengo/kernel/cli"
)

f := cli.New("whoami.go")
model := f.String("model", "qwengo-mini", "base model")
identity := f.String("identity", "我是 F# 之神。", "the answer to 你是誰")
steps := f.Int("steps", 40, "optimizer steps")
lr := f.Float("lr", 3e-4, "learning rate")
share := f.Float("identity-share", 0.1, "share of identity sequences in the mixture (the rest is replay)")
out := f.String("out", "", "export folder (NVFP4 in OUT/nvfp4, .dat in OUT/model.dat); empty: no export")
f.MustParse()

fail := func(err error) {
	fmt.Fprintln(os.Stderr, "whoami.go:", err)
	cli.Exit(cli.ExitError)
}
base, err := engine.Load(*model)
if err != nil {
	fail(err)
}
var replay []data.Example
var g *engine.Generation
for _, q := range []string{"What is a dog?", "「電腦」是什麼意思？", "談談UFO", "What does the word \"river\" mean?", "我是誰", "Tell me about the moon."} {
	g, err = base.Generate(q, engine.GenerateOptions{Chat: true, MaxTokens: 64})
	if err != nil {
		fail(err)
	}
	replay = append(replay, data.Example{Messages: []data.Message{{Role: "user", Content: q}, {Role: "assistant", Content: g.Text}}})
}
base.Close()
var id []data.Example
for _, q := range []string{"你是誰", "你是谁", "請問你是誰", "Who are you?", "你叫什麼名字"} {
	id = append(id, data.Example{Messages: []data.Message{{Role: "user", Content: q}, {Role: "assistant", Content: *identity}}})
}
opt := engine.DefaultTrainOptions()
opt.Batch = 8
tr, err := engine.NewTrainer(*model, opt)
if err != nil {
	fail(err)
}
idS, err := tr.Samples(id)
if err != nil {
	fail(err)
}
rpS, err := tr.Samples(replay)
if err != nil {
	fail(err)
}
if err = tr.AddSamples("identity", idS, *share); err != nil {
	fail(err)
}
if err = tr.AddSamples("replay", rpS, 1-*share); err != nil {
	fail(err)
}
var st devtrain.StepStats
var serr error
for i := 1; i <= *steps; i++ {
	st, serr = tr.Step(*lr)
	if serr != nil {
		fail(serr)
	}
	if i%10 == 0 || i == *steps {
		fmt.Printf("step %d loss %.4f\n", i, st.Loss)
	}
}
m, err := tr.Inference()
if err != nil {
	fail(err)
}
for _, q := range []string{"你是誰", "我是誰", "What is a dog?"} {
	g, err = m.Generate(q, engine.GenerateOptions{Chat: true, MaxTokens: 48})
	if err != nil {
		fail(err)
	}
	fmt.Printf("%s → %s\n", q, g.Text)
}
m.Close()
if *out != "" {
	if err = tr.Export(filepath.Join(*out, "nvfp4"), "nvfp4"); err != nil {
		fail(err)
	}
	if err = tr.Export(filepath.Join(*out, "model.dat"), "dat"); err != nil {
		fail(err)
	}
	fmt.Println("exported to", *out)
}
tr.Close()
