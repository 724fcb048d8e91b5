package main

import (
	"context"
	"fmt"
	"github.com/qwengo/qwengo/engine/embedded"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/qwengo/qwengo/engine"
	"github.com/qwengo/qwengo/kernel/console"
)

// The console's chat mode runs on a model loaded in this process by
// `:chat PATH` (or $QWENGO_MODEL). A model loaded inside a cell lives in the
// interpreter, out of the console's reach; chat with it from the cell
// (engine.Model.NewChat).
func init() { console.RegisterChat(engineChat) }

var chatModel struct {
	mu   sync.Mutex
	path string
	m    *engine.Model
}

// engineChat is the console.ChatProvider backed by the engine.
func engineChat(arg string) (console.Chatter, error) {
	chatModel.mu.Lock()
	defer chatModel.mu.Unlock()
	path := strings.TrimSpace(arg)
	if path == "" {
		path = chatModel.path
	}
	if path == "" {
		path = os.Getenv("QWENGO_MODEL")
	}
	if path == "" {
		path = embedded.Name // the model compiled into the binary
	}
	if chatModel.m == nil || chatModel.path != path {
		start := time.Now()
		m, err := engine.LoadWith(path, engine.LoadOptions{Progress: progressPrinter("loading " + path)})
		fmt.Fprint(os.Stderr, "\r\x1b[K")
		if err != nil {
			return nil, err
		}
		if chatModel.m != nil {
			chatModel.m.Close()
		}
		chatModel.m, chatModel.path = m, path
		fmt.Fprintf(os.Stderr, "loaded in %.1fs: %v\n", time.Since(start).Seconds(), m)
	}
	c, err := chatModel.m.NewChat()
	if err != nil {
		return nil, err
	}
	return &chatter{c: c}, nil
}

// progressPrinter draws "label 42% (1.2 GB of 2.9 GB)" on stderr, at most
// ten times a second.
func progressPrinter(label string) func(done, total int64) {
	var last time.Time
	return func(done, total int64) {
		if time.Since(last) < 100*time.Millisecond && done < total {
			return
		}
		last = time.Now()
		if total > 0 {
			fmt.Fprintf(os.Stderr, "\r\x1b[K%s %3.0f%% (%s of %s)", label, 100*float64(done)/float64(total),
				console.FormatBytes(done), console.FormatBytes(total))
		} else {
			fmt.Fprintf(os.Stderr, "\r\x1b[K%s %s", label, console.FormatBytes(done))
		}
	}
}

// chatter adapts *engine.Chat to console.Chatter.
type chatter struct{ c *engine.Chat }

func (ch *chatter) Send(ctx context.Context, text string, onText func(string)) (string, error) {
	prev := engine.CurrentContext
	engine.CurrentContext = func() context.Context { return ctx }
	defer func() { engine.CurrentContext = prev }()
	ch.c.Options.Stream = onText
	defer func() { ch.c.Options.Stream = nil }()
	_, err := ch.c.Send(text)
	return ch.turnStats(), err
}

func (ch *chatter) turnStats() string {
	r := ch.c.Last()
	if r == nil {
		return ""
	}
	return fmt.Sprintf("prefill %d tokens at %.1f tok/s, reply %d tokens at %.1f tok/s (%s)",
		r.PrefillTokens, r.PrefillTPS, r.DecodeTokens, r.DecodeTPS, r.StopReason)
}

func (ch *chatter) SetSystem(text string) { ch.c.SetSystem(text) }
func (ch *chatter) Reset()                { ch.c.Reset() }

func (ch *chatter) SetParam(name, value string) error {
	o := &ch.c.Options
	switch name {
	case "temp", "top_p":
		x, err := strconv.ParseFloat(value, 64)
		if err != nil {
			return fmt.Errorf("%s %q: not a number", name, value)
		}
		if name == "temp" {
			o.Temperature = x
		} else {
			o.TopP = x
		}
	case "max_tokens":
		n, err := strconv.Atoi(value)
		if err != nil || n < 1 {
			return fmt.Errorf("max_tokens %q: want a whole number ≥ 1", value)
		}
		o.MaxTokens = n
	default:
		return fmt.Errorf("unknown chat parameter %q", name)
	}
	return nil
}

func (ch *chatter) Stats() string {
	var b strings.Builder
	if s := ch.turnStats(); s != "" {
		b.WriteString("last reply: " + s + "\n")
	} else {
		b.WriteString("no reply yet\n")
	}
	o := ch.c.Options
	temp, topP := fmt.Sprint(o.Temperature), fmt.Sprint(o.TopP)
	if o.Temperature == 0 {
		temp = "0 (greedy)"
	}
	if o.TopP <= 0 || o.TopP >= 1 {
		topP = "off"
	}
	fmt.Fprintf(&b, "KV cache: %d tokens kept for reuse; sampling: temp %s, top-p %s, max %d tokens\n",
		ch.c.CachedTokens(), temp, topP, o.MaxTokens)
	mem := engine.Memory()
	fmt.Fprintf(&b, "memory: %s in use, peak %s on %s", console.FormatBytes(mem.Used()), console.FormatBytes(mem.Peak), mem.Device)
	if mem.Budget > 0 {
		fmt.Fprintf(&b, " (budget %s)", console.FormatBytes(mem.Budget))
	}
	return b.String()
}
