package generate

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/qwengo/qwengo/engine/sample"
)

// Token ids of the fake tokenizer (vocab 50): 0 <|im_start|>, 1 <|im_end|>, 2 "\n", 3 " ",
// 4..29 'a'..'z', 30..39 '0'..'9', and 40..49 two-letter tokens ("ab", "cd", ...) that
// Decode knows but Encode never produces — a sampled one re-encodes differently.
const (
	vocab    = 50
	imStart  = 0
	imEnd    = 1
	newline  = 2
	multiMin = 40
)

func tokenText(id int) string {
	switch {
	case id == imStart:
		return "⟨"
	case id == imEnd:
		return "⟩"
	case id == newline:
		return "\n"
	case id == 3:
		return " "
	case id >= 4 && id < 30:
		return string(rune('a' + id - 4))
	case id >= 30 && id < 40:
		return string(rune('0' + id - 30))
	case id >= multiMin && id < vocab:
		k := id - multiMin
		return string([]rune{rune('a' + 2*k), rune('a' + 2*k + 1)})
	}
	return "?"
}

func encode(s string) []int {
	var ids []int
	for _, r := range s {
		switch {
		case r == '⟨':
			ids = append(ids, imStart)
		case r == '⟩':
			ids = append(ids, imEnd)
		case r == '\n':
			ids = append(ids, newline)
		case r >= 'a' && r <= 'z':
			ids = append(ids, 4+int(r-'a'))
		case r >= '0' && r <= '9':
			ids = append(ids, 30+int(r-'0'))
		default:
			ids = append(ids, 3)
		}
	}
	return ids
}

func decode(ids []int) string {
	var b strings.Builder
	for _, id := range ids {
		b.WriteString(tokenText(id))
	}
	return b.String()
}

func render(msgs []Message, gen bool) string {
	var b strings.Builder
	for _, m := range msgs {
		fmt.Fprintf(&b, "⟨%s\n%s⟩\n", m.Role, m.Content)
	}
	if gen {
		b.WriteString("⟨assistant\n")
	}
	return b.String()
}

var codec = ChatCodec{
	Render: render,
	Encode: encode,
	NewDecoder: func() (func(int) string, func() string) {
		return func(id int) string { return tokenText(id) }, func() string { return "" }
	},
	Stop: []int{imEnd},
}

// fakeLM computes logits from a hash of the whole cached sequence, so any difference in the
// cache changes the output. It records every Append.
type fakeLM struct {
	seq     []int
	appends [][]int
	// replyLen > 0 forces <|im_end|> once replyLen tokens follow the last newline, and keeps
	// the special tokens and the newline out of replies otherwise.
	replyLen int
	// multi allows the two-letter tokens 40..49; force[pos] = id makes id the top token of
	// the logits computed at sequence length pos.
	multi bool
	force map[int]int
	delay time.Duration
	// failAt > 0 makes an Append that would cover position failAt-1 fail.
	failAt int
}

func (f *fakeLM) Append(ctx context.Context, ids []int) ([]float32, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if f.delay > 0 {
		select {
		case <-time.After(f.delay):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if f.failAt > 0 && len(f.seq)+len(ids) >= f.failAt {
		return nil, fmt.Errorf("fake LM failure at position %d", len(f.seq))
	}
	f.appends = append(f.appends, slices.Clone(ids))
	f.seq = append(f.seq, ids...)
	h := fnv.New64a()
	for _, id := range f.seq {
		fmt.Fprint(h, id, ",")
	}
	r := rand.New(rand.NewPCG(h.Sum64(), 1))
	l := make([]float32, vocab)
	for i := range l {
		l[i] = float32(r.NormFloat64())
	}
	if !f.multi {
		for i := multiMin; i < vocab; i++ {
			l[i] = -30
		}
	}
	if f.replyLen > 0 {
		l[imStart], l[imEnd], l[newline] = -30, -30, -30
		last := -1
		for i, id := range f.seq {
			if id == newline {
				last = i
			}
		}
		if len(f.seq)-1-last >= f.replyLen {
			l[imEnd] = 30
		}
	}
	if id, ok := f.force[len(f.seq)]; ok {
		l[id] = 40
	}
	return l, nil
}

func (f *fakeLM) Pos() int { return len(f.seq) }

func (f *fakeLM) Truncate(p int) error {
	if p > len(f.seq) || p < 0 {
		return fmt.Errorf("fake LM: truncate to %d of %d", p, len(f.seq))
	}
	f.seq = f.seq[:p]
	return nil
}

func (f *fakeLM) Reset() { f.seq = f.seq[:0] }

func (f *fakeLM) fed() int {
	n := 0
	for _, a := range f.appends {
		n += len(a)
	}
	return n
}

var bg = context.Background()

func TestRunLengthAndStreaming(t *testing.T) {
	lm := &fakeLM{}
	var streamed []int
	prompt := []int{5, 6, 7}
	res, err := Run(bg, lm, prompt, Options{MaxTokens: 5, OnToken: func(id int) error {
		streamed = append(streamed, id)
		if lm.Pos() != len(prompt)+len(streamed)-1 {
			t.Errorf("OnToken(%d) called after the token was fed", id)
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	if res.StopReason != StopLength || len(res.IDs) != 5 || !slices.Equal(streamed, res.IDs) {
		t.Fatalf("result %+v, streamed %v", res, streamed)
	}
	if res.PrefillTokens != 3 || res.DecodeTokens != 4 || res.StoppedOn != -1 || !slices.Equal(res.Prompt, prompt) {
		t.Fatalf("counts: %+v", res)
	}
	// One prefill of the prompt, then one token per step; the last token is not fed.
	if want := [][]int{prompt, res.IDs[:1], res.IDs[1:2], res.IDs[2:3], res.IDs[3:4]}; fmt.Sprint(lm.appends) != fmt.Sprint(want) {
		t.Fatalf("appends %v, want %v", lm.appends, want)
	}
	if res.PrefillTime <= 0 || res.PrefillTPS <= 0 || res.DecodeTPS <= 0 || !strings.Contains(res.String(), "length after 5 tokens") {
		t.Fatalf("timings: %v", res)
	}
	// MaxTokens 0 is the default.
	res, err = Run(bg, &fakeLM{}, prompt, Options{})
	if err != nil || len(res.IDs) != DefaultMaxTokens {
		t.Fatalf("default MaxTokens: %d ids, %v", len(res.IDs), err)
	}
}

func TestRunStopTokens(t *testing.T) {
	prompt := []int{9, 8}
	base, _ := Run(bg, &fakeLM{}, prompt, Options{MaxTokens: 12})
	// Stop on the first token not seen before position 3 or later.
	i := 3
	for slices.Contains(base.IDs[:i], base.IDs[i]) {
		i++
	}
	for _, stop := range [][]int{{base.IDs[i]}, {49, base.IDs[i], 48}} {
		lm := &fakeLM{}
		var streamed []int
		res, err := Run(bg, lm, prompt, Options{MaxTokens: 12, Stop: stop, OnToken: func(id int) error { streamed = append(streamed, id); return nil }})
		if err != nil || res.StopReason != StopToken || res.StoppedOn != base.IDs[i] {
			t.Fatalf("stop %v: %+v %v", stop, res, err)
		}
		if !slices.Equal(res.IDs, base.IDs[:i]) || !slices.Equal(streamed, res.IDs) {
			t.Fatalf("stop %v: ids %v streamed %v, want %v", stop, res.IDs, streamed, base.IDs[:i])
		}
		if !slices.Equal(lm.seq, append(slices.Clone(prompt), res.IDs...)) {
			t.Fatalf("cache %v: the stop token must not be fed", lm.seq)
		}
	}
}

func TestRunCallbackError(t *testing.T) {
	boom := errors.New("boom")
	lm := &fakeLM{}
	n := 0
	res, err := Run(bg, lm, []int{1, 2}, Options{MaxTokens: 10, OnToken: func(int) error {
		if n++; n == 3 {
			return boom
		}
		return nil
	}})
	if !errors.Is(err, boom) || res.StopReason != StopError || len(res.IDs) != 3 {
		t.Fatalf("%+v %v", res, err)
	}
	if lm.Pos() != 2+2 {
		t.Fatalf("cache holds %d positions after the callback failed on the 3rd token, want 4", lm.Pos())
	}
}

func TestRunCancellation(t *testing.T) {
	// Cancelled between tokens by the callback: nothing more is fed.
	ctx, cancel := context.WithCancel(bg)
	lm := &fakeLM{}
	res, err := Run(ctx, lm, []int{1, 2}, Options{MaxTokens: 100, OnToken: func(int) error {
		if lm.Pos() == 4 {
			cancel()
		}
		return nil
	}})
	if err != context.Canceled || res.StopReason != StopCancelled || len(res.IDs) != 3 || lm.Pos() != 4 {
		t.Fatalf("%+v %v (pos %d)", res, err, lm.Pos())
	}

	// A slow LM and a deadline: Run returns promptly with what it has.
	lm = &fakeLM{delay: 5 * time.Millisecond}
	ctx, cancel2 := context.WithTimeout(bg, 60*time.Millisecond)
	defer cancel2()
	t0 := time.Now()
	res, err = Run(ctx, lm, []int{1}, Options{MaxTokens: 100000})
	if took := time.Since(t0); took > 2*time.Second {
		t.Fatalf("took %v after a 60 ms deadline", took)
	}
	if err != context.DeadlineExceeded || res.StopReason != StopCancelled || len(res.IDs) == 0 || len(res.IDs) > 100 {
		t.Fatalf("deadline: %d ids, %q, %v", len(res.IDs), res.StopReason, err)
	}

	// Already cancelled: no forward pass at all.
	lm = &fakeLM{}
	ctx, cancel3 := context.WithCancel(bg)
	cancel3()
	res, err = Run(ctx, lm, []int{1}, Options{})
	if err != context.Canceled || res.StopReason != StopCancelled || len(lm.appends) != 0 {
		t.Fatalf("pre-cancelled: %+v %v, %d appends", res, err, len(lm.appends))
	}
}

func TestNoKVCacheMatchesCache(t *testing.T) {
	for _, p := range []sample.Params{
		{},
		{Temperature: 1, TopK: 10, Seed: 3},
		{Temperature: 0.8, TopP: 0.9, RepetitionPenalty: 1.3, FrequencyPenalty: 0.2, Seed: 5},
	} {
		for _, pre := range [][]int{nil, {7, 7, 8}} { // Run also continues a non-empty cache
			a, b := &fakeLM{seq: slices.Clone(pre)}, &fakeLM{seq: slices.Clone(pre)}
			prompt := []int{3, 4, 5, 6}
			ra, err := Run(bg, a, prompt, Options{Sample: p, MaxTokens: 20})
			if err != nil {
				t.Fatal(err)
			}
			rb, err := Run(bg, b, prompt, Options{Sample: p, MaxTokens: 20, NoKVCache: true})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(ra.IDs, rb.IDs) {
				t.Fatalf("%+v: cached %v, recomputed %v", p, ra.IDs, rb.IDs)
			}
			if !slices.Equal(a.seq, b.seq) {
				t.Fatalf("%+v: caches differ after the run: %v vs %v", p, a.seq, b.seq)
			}
			// The recompute path feeds prompt+generated every step.
			for i, ap := range b.appends {
				if len(ap) != len(prompt)+i {
					t.Fatalf("no-cache append %d fed %d tokens, want %d", i, len(ap), len(prompt)+i)
				}
			}
		}
	}
}

// greedyFake is a fakeLM that also picks greedily itself (GreedyLM), counting those calls.
type greedyFake struct {
	fakeLM
	greedyCalls int
}

func (g *greedyFake) AppendGreedy(ctx context.Context, ids []int) (int, error) {
	l, err := g.Append(ctx, ids)
	if err != nil {
		return 0, err
	}
	g.greedyCalls++
	return sample.Argmax(l), nil
}

// TestGreedyFastPath: with a GreedyLM, greedy decoding without penalties takes AppendGreedy for
// every step and emits what the logits path emits; sampling, penalties and the no-cache path
// keep using Append's logits.
func TestGreedyFastPath(t *testing.T) {
	prompt := []int{3, 4, 5, 6}
	for _, c := range []struct {
		name string
		opt  Options
		fast bool
	}{
		{"greedy", Options{MaxTokens: 12}, true},
		{"greedy, stop token", Options{MaxTokens: 40, Stop: []int{9}}, true},
		{"sampled", Options{MaxTokens: 12, Sample: sample.Params{Temperature: 1, Seed: 2}}, false},
		{"greedy with a penalty", Options{MaxTokens: 12, Sample: sample.Params{RepetitionPenalty: 1.3}}, false},
		{"greedy without the cache", Options{MaxTokens: 12, NoKVCache: true}, false},
	} {
		plain, fast := &fakeLM{}, &greedyFake{}
		want, err := Run(bg, plain, prompt, c.opt)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Run(bg, fast, prompt, c.opt)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got.IDs, want.IDs) || got.StopReason != want.StopReason || got.StoppedOn != want.StoppedOn {
			t.Errorf("%s: %v (%s, %d), want %v (%s, %d)", c.name, got.IDs, got.StopReason, got.StoppedOn, want.IDs, want.StopReason, want.StoppedOn)
		}
		if calls := len(fast.appends); c.fast && fast.greedyCalls != calls || !c.fast && fast.greedyCalls != 0 {
			t.Errorf("%s: %d of %d appends through AppendGreedy, want %v", c.name, fast.greedyCalls, calls, c.fast)
		}
	}
}

// A wrong cache must change the output, or the previous test proves nothing.
func TestFakeLMDependsOnWholeSequence(t *testing.T) {
	a, _ := Run(bg, &fakeLM{seq: []int{1}}, []int{3, 4}, Options{MaxTokens: 8})
	b, _ := Run(bg, &fakeLM{seq: []int{2}}, []int{3, 4}, Options{MaxTokens: 8})
	if slices.Equal(a.IDs, b.IDs) {
		t.Fatal("the fake LM ignores early positions")
	}
}

func TestRunErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		lm     LM
		prompt []int
		opt    Options
		want   string
	}{
		{"empty prompt", &fakeLM{}, nil, Options{}, "empty prompt"},
		{"bad params", &fakeLM{}, []int{1}, Options{Sample: sample.Params{TopP: 3}}, "TopP = 3"},
		{"bad max", &fakeLM{}, []int{1}, Options{MaxTokens: -1}, "MaxTokens = -1"},
		{"nil LM", nil, []int{1}, Options{}, "nil LM"},
	} {
		res, err := Run(bg, tc.lm, tc.prompt, tc.opt)
		if err == nil || !strings.Contains(err.Error(), tc.want) || res != nil {
			t.Errorf("%s: %v, %v (want %q)", tc.name, res, err, tc.want)
		}
	}
	// An LM failure mid-generation: partial result, StopReason "error", the position named.
	lm := &fakeLM{failAt: 6}
	res, err := Run(bg, lm, []int{1, 2, 3}, Options{MaxTokens: 10})
	if err == nil || res.StopReason != StopError || len(res.IDs) != 3 || !strings.Contains(err.Error(), "decode at position 5") {
		t.Fatalf("%+v %v", res, err)
	}
	res, err = Run(bg, &fakeLM{failAt: 1}, []int{1, 2, 3}, Options{MaxTokens: 10})
	if err == nil || res.StopReason != StopError || !strings.Contains(err.Error(), "prefill of 3 tokens at position 0") {
		t.Fatalf("%+v %v", res, err)
	}
}

// --- Chat ---

func newChat(lm *fakeLM) *Chat { return NewChat(lm, codec) }

func checkSynced(t *testing.T, c *Chat, lm *fakeLM) {
	t.Helper()
	want := encode(render(c.all(), false))
	if !slices.Equal(lm.seq, want) || !slices.Equal(c.CachedIDs(), want) {
		t.Fatalf("cache out of line with the rendered history:\n cache %v\n chat  %v\n want  %v", lm.seq, c.CachedIDs(), want)
	}
}

func TestChatPrefillsOnlyTheNewTurn(t *testing.T) {
	lm := &fakeLM{replyLen: 6}
	c := newChat(lm)
	var streamed strings.Builder
	res, reply, err := c.Send(bg, "hi there", Options{MaxTokens: 50}, func(s string) { streamed.WriteString(s) })
	if err != nil {
		t.Fatal(err)
	}
	if res.StopReason != StopToken || res.StoppedOn != imEnd || len(res.IDs) != 6 {
		t.Fatalf("turn 1: %+v", res)
	}
	if reply != decode(res.IDs) || streamed.String() != reply {
		t.Fatalf("reply %q, streamed %q, decoded %q", reply, streamed.String(), decode(res.IDs))
	}
	first := encode(render([]Message{{"user", "hi there"}}, true))
	if !slices.Equal(lm.appends[0], first) {
		t.Fatalf("turn 1 prefill %v, want %v", lm.appends[0], first)
	}
	// The stop token was not fed: the end of the turn is appended afterwards, exactly.
	if last := lm.appends[len(lm.appends)-1]; !slices.Equal(last, []int{imEnd, newline}) {
		t.Fatalf("end-of-turn append %v, want [im_end newline]", last)
	}
	checkSynced(t, c, lm)

	before := len(lm.appends)
	cached := c.Cached()
	res, _, err = c.Send(bg, "more", Options{MaxTokens: 50}, nil)
	if err != nil {
		t.Fatal(err)
	}
	newTurn := encode("⟨user\nmore⟩\n⟨assistant\n")
	if !slices.Equal(lm.appends[before], newTurn) || !slices.Equal(res.Prompt, newTurn) {
		t.Fatalf("turn 2 prefilled %v, want only %v", lm.appends[before], newTurn)
	}
	if lm.Pos() <= cached {
		t.Fatal("cache shrank")
	}
	checkSynced(t, c, lm)
	if len(c.Messages) != 4 || c.Messages[2] != (Message{"user", "more"}) || c.Messages[3].Role != "assistant" {
		t.Fatalf("history %+v", c.Messages)
	}
}

func TestChatLengthStopAppendsTheLastToken(t *testing.T) {
	lm := &fakeLM{replyLen: 6}
	c := newChat(lm)
	res, reply, err := c.Send(bg, "hello", Options{MaxTokens: 3}, nil)
	if err != nil || res.StopReason != StopLength || len(reply) != 3 {
		t.Fatalf("%+v %q %v", res, reply, err)
	}
	if last := lm.appends[len(lm.appends)-1]; !slices.Equal(last, []int{res.IDs[2], imEnd, newline}) {
		t.Fatalf("end-of-turn append %v, want [last-token im_end newline]", last)
	}
	checkSynced(t, c, lm)
}

// A sampled two-letter token re-encodes as two tokens: the cache is truncated to the common
// prefix and the rest appended, so it matches what the next turn renders.
func TestChatReencodeMismatch(t *testing.T) {
	lm := &fakeLM{replyLen: 4, multi: true}
	prompt := encode(render([]Message{{"user", "yo"}}, true))
	lm.force = map[int]int{len(prompt): 10, len(prompt) + 1: multiMin + 1} // reply "g", "cd", ...
	c := newChat(lm)
	res, reply, err := c.Send(bg, "yo", Options{MaxTokens: 20}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.IDs[1] != multiMin+1 || !strings.Contains(reply, "cd") {
		t.Fatalf("forcing failed: %v %q", res.IDs, reply)
	}
	full := encode(render(c.all(), false))
	diverge := len(prompt) + 1
	if commonPrefix(full, append(slices.Clone(prompt), res.IDs...)) != diverge {
		t.Fatal("test setup: the re-encoded reply should diverge at the two-letter token")
	}
	if last := lm.appends[len(lm.appends)-1]; !slices.Equal(last, full[diverge:]) {
		t.Fatalf("resync appended %v, want %v", last, full[diverge:])
	}
	checkSynced(t, c, lm)
	before := len(lm.appends)
	if _, _, err := c.Send(bg, "ok", Options{MaxTokens: 20}, nil); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(lm.appends[before], encode("⟨user\nok⟩\n⟨assistant\n")) {
		t.Fatalf("after a resync the next turn prefilled %v", lm.appends[before])
	}
	checkSynced(t, c, lm)
}

func TestChatSystemPromptChangeReprefills(t *testing.T) {
	lm := &fakeLM{replyLen: 5}
	c := newChat(lm)
	for _, u := range []string{"one", "two"} {
		if _, _, err := c.Send(bg, u, Options{}, nil); err != nil {
			t.Fatal(err)
		}
	}
	for _, sys := range []string{"be brief", "be kind", ""} {
		old := c.CachedIDs()
		c.SetSystem(sys)
		before := len(lm.appends)
		res, _, err := c.Send(bg, "three", Options{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		msgs := c.all()
		target := encode(render(msgs[:len(msgs)-1], true))
		common := commonPrefix(old, target)
		if common >= len(old) {
			t.Fatalf("system %q: the change should invalidate the cache", sys)
		}
		if !slices.Equal(lm.appends[before], target[common:]) || !slices.Equal(res.Prompt, target[common:]) {
			t.Fatalf("system %q: prefilled %d tokens, want the %d after the first difference", sys, len(lm.appends[before]), len(target)-common)
		}
		checkSynced(t, c, lm)
	}
}

func TestChatEditedHistoryAndReset(t *testing.T) {
	lm := &fakeLM{replyLen: 5}
	c := newChat(lm)
	c.SetSystem("sys")
	for _, u := range []string{"alpha", "beta"} {
		if _, _, err := c.Send(bg, u, Options{}, nil); err != nil {
			t.Fatal(err)
		}
	}
	// Edit the second user message: re-prefill from there.
	c.Messages[2].Content = "gamma"
	before := len(lm.appends)
	if _, _, err := c.Send(bg, "delta", Options{}, nil); err != nil {
		t.Fatal(err)
	}
	edited := encode(render(c.all()[:3], false))
	if got := len(lm.appends[before]); got >= len(encode(render(c.all()[:5], true))) || !slices.Equal(lm.seq[:len(edited)], edited) {
		t.Fatalf("edit: prefilled %d tokens; cache %v", got, lm.seq)
	}
	checkSynced(t, c, lm)

	c.Reset()
	if len(c.Messages) != 0 || c.Cached() != 0 || lm.Pos() != 0 || c.System != "sys" {
		t.Fatalf("after Reset: %d messages, %d cached, pos %d, system %q", len(c.Messages), c.Cached(), lm.Pos(), c.System)
	}
	before = len(lm.appends)
	if _, _, err := c.Send(bg, "again", Options{}, nil); err != nil {
		t.Fatal(err)
	}
	if want := encode(render([]Message{{"system", "sys"}, {"user", "again"}}, true)); !slices.Equal(lm.appends[before], want) {
		t.Fatalf("after Reset prefilled %v, want %v", lm.appends[before], want)
	}
	checkSynced(t, c, lm)
}

func TestChatNoKVCacheMatchesCache(t *testing.T) {
	for _, p := range []sample.Params{{}, {Temperature: 1.2, TopK: 20, RepetitionPenalty: 1.5, PresencePenalty: 0.5, Seed: 11}} {
		a, b := &fakeLM{replyLen: 7, multi: true}, &fakeLM{replyLen: 7, multi: true}
		ca, cb := newChat(a), newChat(b)
		ca.SetSystem("s")
		cb.SetSystem("s")
		for _, u := range []string{"one", "two", "three"} {
			ra, ta, err := ca.Send(bg, u, Options{Sample: p, MaxTokens: 30}, nil)
			if err != nil {
				t.Fatal(err)
			}
			rb, tb, err := cb.Send(bg, u, Options{Sample: p, MaxTokens: 30, NoKVCache: true}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(ra.IDs, rb.IDs) || ta != tb {
				t.Fatalf("%+v turn %q: cached %v, recomputed %v", p, u, ra.IDs, rb.IDs)
			}
			// The penalties saw the whole conversation in both paths, so the cached path
			// prefilled less but generated the same.
			if len(ra.Prompt) >= len(rb.Prompt) && u != "one" {
				t.Fatalf("turn %q: cached path prefilled %d, recompute %d", u, len(ra.Prompt), len(rb.Prompt))
			}
			checkSynced(t, ca, a)
			checkSynced(t, cb, b)
		}
	}
}

func TestChatCancellationKeepsPartialReply(t *testing.T) {
	lm := &fakeLM{replyLen: 20}
	c := newChat(lm)
	ctx, cancel := context.WithCancel(bg)
	n := 0
	res, reply, err := c.Send(ctx, "long story", Options{OnToken: func(int) error {
		if n++; n == 3 {
			cancel()
		}
		return nil
	}}, nil)
	if err != context.Canceled || res.StopReason != StopCancelled || len(res.IDs) != 3 || len(reply) != 3 {
		t.Fatalf("%+v %q %v", res, reply, err)
	}
	if len(c.Messages) != 2 || c.Messages[1].Content != reply {
		t.Fatalf("history %+v", c.Messages)
	}
	// The next turn brings the cache in line and prefills only what is missing.
	before := len(lm.appends)
	if _, _, err := c.Send(bg, "go on", Options{MaxTokens: 4}, nil); err != nil {
		t.Fatal(err)
	}
	want := append([]int{res.IDs[2], imEnd, newline}, encode("⟨user\ngo on⟩\n⟨assistant\n")...)
	if !slices.Equal(lm.appends[before], want) {
		t.Fatalf("after a cancelled turn prefilled %v, want %v", lm.appends[before], want)
	}
	checkSynced(t, c, lm)

	// A turn cancelled before any token is dropped.
	ctx, cancel = context.WithCancel(bg)
	cancel()
	if _, _, err := c.Send(ctx, "never", Options{}, nil); err != context.Canceled || len(c.Messages) != 4 {
		t.Fatalf("pre-cancelled turn: %v, %d messages", err, len(c.Messages))
	}
	if _, _, err := c.Send(bg, "fine", Options{MaxTokens: 4}, nil); err != nil {
		t.Fatal(err)
	}
	checkSynced(t, c, lm)
}

func TestChatErrorsAndOutsideChanges(t *testing.T) {
	lm := &fakeLM{replyLen: 5}
	c := newChat(lm)
	if _, _, err := c.Send(bg, "a", Options{}, nil); err != nil {
		t.Fatal(err)
	}
	// An LM failure drops the turn; the next Send recovers.
	lm.failAt = lm.Pos() + 12
	if _, _, err := c.Send(bg, "b", Options{}, nil); err == nil || len(c.Messages) != 2 {
		t.Fatalf("LM failure: %v, %d messages", err, len(c.Messages))
	}
	lm.failAt = 0
	if _, _, err := c.Send(bg, "c", Options{}, nil); err != nil {
		t.Fatal(err)
	}
	checkSynced(t, c, lm)
	if c.Messages[2].Content != "c" {
		t.Fatalf("history %+v", c.Messages)
	}

	// Someone else used the LM: the chat notices and re-prefills everything.
	lm.seq = append(lm.seq, 7, 7, 7)
	before := len(lm.appends)
	if _, _, err := c.Send(bg, "d", Options{}, nil); err != nil {
		t.Fatal(err)
	}
	if want := encode(render(c.all()[:5], true)); !slices.Equal(lm.appends[before], want) {
		t.Fatalf("after an outside change prefilled %d tokens, want all %d", len(lm.appends[before]), len(want))
	}
	checkSynced(t, c, lm)

	// An OnToken error keeps the partial reply, like a cancellation.
	boom := errors.New("boom")
	if _, reply, err := c.Send(bg, "e", Options{OnToken: func(int) error { return boom }}, nil); !errors.Is(err, boom) || len(reply) != 1 || len(c.Messages) != 8 {
		t.Fatalf("callback error: %v %q, %d messages", err, reply, len(c.Messages))
	}
	checkSynced(t, c, lm)

	// Bad input is rejected before anything changes.
	n := len(c.Messages)
	if _, _, err := c.Send(bg, "f", Options{Sample: sample.Params{Temperature: -1}}, nil); err == nil || !strings.Contains(err.Error(), "Temperature = -1") || len(c.Messages) != n {
		t.Fatalf("bad params: %v", err)
	}
	if _, _, err := NewChat(&fakeLM{}, ChatCodec{Encode: encode}).Send(bg, "x", Options{}, nil); err == nil || !strings.Contains(err.Error(), "ChatCodec.Render, ChatCodec.NewDecoder not set") {
		t.Fatalf("missing codec funcs: %v", err)
	}
}
