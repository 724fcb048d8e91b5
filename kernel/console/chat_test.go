package console

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

// fakeChat records what chat mode asks of it and "generates" by echoing.
type fakeChat struct {
	system  string
	resets  int
	params  map[string]string
	sent    []string
	block   chan struct{} // when set, Send streams one piece then waits for ctx
	started chan struct{}
}

func (f *fakeChat) Send(ctx context.Context, text string, onText func(string)) (string, error) {
	f.sent = append(f.sent, text)
	if f.block != nil {
		onText("thinking")
		f.started <- struct{}{}
		<-ctx.Done()
		return "", ctx.Err()
	}
	if text == "fail" {
		return "", errors.New("out of memory: KV cache full")
	}
	for _, w := range strings.Fields("you said: " + text) {
		onText(w + " ")
	}
	return fmt.Sprintf("%d tokens", len(strings.Fields(text))+2), nil
}
func (f *fakeChat) SetSystem(s string) { f.system = s }
func (f *fakeChat) Reset()             { f.resets++ }
func (f *fakeChat) SetParam(name, value string) error {
	if f.params == nil {
		f.params = map[string]string{}
	}
	if name == "max_tokens" && value == "99999" {
		return errors.New("larger than the KV cache (4096)")
	}
	f.params[name] = value
	return nil
}
func (f *fakeChat) Stats() string { return "last reply: 12.5 tok/s; memory 1.2 GB" }

func TestChatCommand(t *testing.T) {
	cases := []struct {
		line    string
		want    string // output, or error substring when errWant
		errWant bool
		check   func(f *fakeChat) bool
	}{
		{"/reset", "conversation reset", false, func(f *fakeChat) bool { return f.resets == 1 }},
		{"/reset now", "/reset takes no argument", true, func(f *fakeChat) bool { return f.resets == 0 }},
		{"/system You are terse.", "system prompt set", false, func(f *fakeChat) bool { return f.system == "You are terse." }},
		{"/system", "system prompt removed", false, func(f *fakeChat) bool { return f.system == "" }},
		{"/temp 0.7", "temp = 0.7", false, func(f *fakeChat) bool { return f.params["temp"] == "0.7" }},
		{"/temp 0", "temp = 0", false, func(f *fakeChat) bool { return f.params["temp"] == "0" }},
		{"/temp", "/temp needs a number", true, nil},
		{"/temp hot", `/temp "hot": not a number`, true, nil},
		{"/temp -1", "want a temperature from 0", true, func(f *fakeChat) bool { return f.params == nil }},
		{"/temp NaN", "want a temperature", true, nil},
		{"/topp 0.9", "top_p = 0.9", false, func(f *fakeChat) bool { return f.params["top_p"] == "0.9" }},
		{"/topp 0", "want 0 < top-p ≤ 1", true, nil},
		{"/topp 1.5", "want 0 < top-p ≤ 1", true, nil},
		{"/max 64", "max_tokens = 64", false, func(f *fakeChat) bool { return f.params["max_tokens"] == "64" }},
		{"/max 0", "want a whole number of tokens ≥ 1", true, nil},
		{"/max 2.5", "want a whole number", true, nil},
		{"/max", "/max needs a token count", true, nil},
		{"/max 99999", "/max 99999: larger than the KV cache", true, nil},
		{"/stats", "last reply: 12.5 tok/s; memory 1.2 GB", false, nil},
		{"/help", "/system TEXT", false, nil},
		{"/bogus", "unknown chat command /bogus", true, nil},
	}
	for _, c := range cases {
		f := &fakeChat{}
		got, err := ChatCommand(f, c.line)
		if c.errWant {
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%q: err %v, want %q", c.line, err, c.want)
			}
		} else if err != nil || !strings.Contains(got, c.want) {
			t.Errorf("%q: %q, %v; want %q", c.line, got, err, c.want)
		}
		if c.check != nil && !c.check(f) {
			t.Errorf("%q: chatter state %+v", c.line, f)
		}
	}
}

func TestChatMode(t *testing.T) {
	fc := &fakeChat{}
	var gotArg []string
	prov := func(arg string) (Chatter, error) {
		gotArg = append(gotArg, arg)
		if arg == "missing.dat" {
			return nil, errors.New("engine: load missing.dat: no such file")
		}
		return fc, nil
	}
	in := lines(":chat missing.dat", ":chat", "hello there", "/temp 0.2", "/temp x", "//etc/passwd?", "fail",
		":go", "1", ":chat", "again", ":quit")
	c, fl, fi, out, errb := newTest(in, Options{Chat: prov})
	if err := c.Run(); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(gotArg, []string{"missing.dat", ""}) {
		t.Errorf("provider args %q (a second :chat reuses the conversation)", gotArg)
	}
	if !reflect.DeepEqual(fc.sent, []string{"hello there", "/etc/passwd?", "fail", "again"}) {
		t.Errorf("sent %q", fc.sent)
	}
	if fc.params["temp"] != "0.2" {
		t.Errorf("params %v", fc.params)
	}
	if got := fi.cells(); !reflect.DeepEqual(got, []string{"1"}) {
		t.Errorf("Go cells %q", got)
	}
	o, e := out.String(), errb.String()
	for _, s := range []string{"you said: hello there \n", "temp = 0.2", "Out[1]: 1"} {
		if !strings.Contains(o, s) {
			t.Errorf("stdout lacks %q:\n%s", s, o)
		}
	}
	for _, s := range []string{"engine: load missing.dat: no such file", `/temp "x": not a number`, "chat: out of memory: KV cache full"} {
		if !strings.Contains(e, s) {
			t.Errorf("stderr lacks %q:\n%s", s, e)
		}
	}
	chatPrompts := 0
	for _, p := range fl.prompts {
		if p == "chat> " {
			chatPrompts++
		}
	}
	if chatPrompts != 8 {
		t.Errorf("chat prompts %d, prompts %q", chatPrompts, fl.prompts)
	}
}

func TestChatRegisteredProviderAndInterrupt(t *testing.T) {
	fc := &fakeChat{block: make(chan struct{}), started: make(chan struct{}, 1)}
	RegisterChat(func(string) (Chatter, error) { return fc, nil })
	defer RegisterChat(nil)
	c, _, _, out, errb := newTest(lines(":chat", "long answer please", "/stats"), Options{})
	done := make(chan error, 1)
	go func() { done <- c.Run() }()
	select {
	case <-fc.started:
	case <-time.After(5 * time.Second):
		t.Fatal("chat turn did not start")
	}
	c.Interrupt()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("console stuck after interrupting a reply")
	}
	if !strings.Contains(out.String(), "thinking\n") || !strings.Contains(errb.String(), "(reply interrupted)") ||
		!strings.Contains(out.String(), "12.5 tok/s") {
		t.Errorf("stdout %q stderr %q", out.String(), errb.String())
	}
}
