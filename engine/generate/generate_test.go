package generate

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/qwengo/qwengo/engine/sample"
)

// fakeLM predicts (sum of the whole sequence + 1) mod vocab, so the next token depends on the
// full history: a cache bug changes the output. It counts prefilled tokens.
type fakeLM struct {
	seq      []int
	vocab    int
	appended int
	delay    time.Duration
}

func (f *fakeLM) Append(ctx context.Context, ids []int) ([]float32, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	time.Sleep(f.delay)
	f.seq = append(f.seq, ids...)
	f.appended += len(ids)
	sum := 0
	for _, id := range f.seq {
		sum += id
	}
	l := make([]float32, f.vocab)
	l[(sum+1)%f.vocab] = 10
	return l, nil
}
func (f *fakeLM) Pos() int { return len(f.seq) }
func (f *fakeLM) Truncate(p int) error {
	if p > len(f.seq) || p < 0 {
		return fmt.Errorf("truncate %d of %d", p, len(f.seq))
	}
	f.seq = f.seq[:p]
	return nil
}
func (f *fakeLM) Reset() { f.seq = nil }

func TestRunStopsAndLength(t *testing.T) {
	lm := &fakeLM{vocab: 50}
	var streamed []int
	res, err := Run(context.Background(), lm, []int{1, 2}, Options{MaxTokens: 5, OnToken: func(id int) error { streamed = append(streamed, id); return nil }})
	if err != nil || res.StopReason != "length" || len(res.IDs) != 5 || fmt.Sprint(streamed) != fmt.Sprint(res.IDs) {
		t.Fatalf("%+v %v", res, err)
	}
	// the same with the recompute path
	lm2 := &fakeLM{vocab: 50}
	res2, _ := Run(context.Background(), lm2, []int{1, 2}, Options{MaxTokens: 5, NoKVCache: true})
	if fmt.Sprint(res2.IDs) != fmt.Sprint(res.IDs) {
		t.Fatalf("no-cache %v vs cache %v", res2.IDs, res.IDs)
	}
	if lm2.appended <= lm.appended {
		t.Fatalf("no-cache path prefilled %d tokens, cached %d", lm2.appended, lm.appended)
	}
	stop := res.IDs[2]
	res, _ = Run(context.Background(), &fakeLM{vocab: 50}, []int{1, 2}, Options{MaxTokens: 5, Stop: []int{stop}})
	if res.StopReason != "stop" || len(res.IDs) != 2 || res.StoppedOn != stop {
		t.Fatalf("stop: %+v", res)
	}
	boom := errors.New("boom")
	_, err = Run(context.Background(), &fakeLM{vocab: 50}, []int{1}, Options{OnToken: func(int) error { return boom }})
	if !errors.Is(err, boom) {
		t.Fatalf("callback error: %v", err)
	}
	if _, err := Run(context.Background(), &fakeLM{vocab: 5}, []int{1}, Options{Sample: sample.Params{TopP: 3}}); err == nil {
		t.Fatal("bad params accepted")
	}
}

func TestRunCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	lm := &fakeLM{vocab: 50, delay: 5 * time.Millisecond}
	time.AfterFunc(30*time.Millisecond, cancel)
	t0 := time.Now()
	res, err := Run(ctx, lm, []int{1}, Options{MaxTokens: 10000})
	if !errors.Is(err, context.Canceled) || res.StopReason != "cancelled" || len(res.IDs) == 0 || time.Since(t0) > time.Second {
		t.Fatalf("%v %+v after %v", err, res.StopReason, time.Since(t0))
	}
}

func codec() ChatCodec {
	return ChatCodec{
		Render: func(msgs []Message, gen bool) string {
			var b strings.Builder
			for _, m := range msgs {
				b.WriteString("<" + m.Role + ">" + m.Content + "|")
			}
			if gen {
				b.WriteString("<assistant>")
			}
			return b.String()
		},
		Encode: func(s string) []int {
			var ids []int
			for _, r := range s {
				ids = append(ids, int(r)%40+2)
			}
			return ids
		},
		NewDecoder: func() (func(int) string, func() string) {
			return func(id int) string { return string(rune('a' + id%26)) }, func() string { return "" }
		},
		Stop: []int{1},
	}
}

func TestChatPrefillsOnlyNewTurn(t *testing.T) {
	lm := &fakeLM{vocab: 50}
	c := NewChat(lm, codec())
	opt := Options{MaxTokens: 4}
	var streamed strings.Builder
	r1, _, err := c.Send(context.Background(), "hi", opt, func(s string) { streamed.WriteString(s) })
	if err != nil || r1 == "" || streamed.String() != r1 {
		t.Fatalf("%q %v", r1, err)
	}
	before := lm.appended
	_, res, _ := c.Send(context.Background(), "again", opt, nil)
	full := len(codec().Encode(codec().Render(c.all()[:3], true)))
	if res.PrefillTokens >= full || lm.appended-before >= full+4 {
		t.Fatalf("second turn prefilled %d of %d tokens", res.PrefillTokens, full)
	}
	// The cache equals a fresh encode of the conversation so far, up to what is cached.
	if got := c.Cached(); got != lm.Pos() {
		t.Fatalf("cached %d, lm %d", got, lm.Pos())
	}
	// Changing the system prompt re-prefills from the start.
	c.SetSystem("be brief")
	_, res, _ = c.Send(context.Background(), "third", opt, nil)
	// Only the leading "<" is shared by "<system>…" and the old "<user>…".
	if want := len(codec().Encode(codec().Render(c.all()[:len(c.all())-2], false) + "<user>third|<assistant>")); res.PrefillTokens != want-1 {
		t.Fatalf("after system change prefilled %d, want all but the shared first token of %d", res.PrefillTokens, want)
	}
	if len(c.Messages) != 6 {
		t.Fatalf("%d messages", len(c.Messages))
	}
	c.Reset()
	if lm.Pos() != 0 || len(c.Messages) != 0 {
		t.Fatal("reset kept state")
	}
}

func TestChatMatchesFreshRun(t *testing.T) {
	// Two turns through the chat must equal generating turn 2 from scratch.
	lm := &fakeLM{vocab: 50}
	c := NewChat(lm, codec())
	opt := Options{MaxTokens: 3}
	c.Send(context.Background(), "a", opt, nil)
	r2, _, _ := c.Send(context.Background(), "b", opt, nil)
	fresh := &fakeLM{vocab: 50}
	c2 := NewChat(fresh, codec())
	c2.Messages = append(c2.Messages, c.Messages[:2]...)
	r2b, _, _ := c2.Send(context.Background(), "b", opt, nil)
	if r2 != r2b {
		t.Fatalf("cached chat %q, fresh %q", r2, r2b)
	}
}
