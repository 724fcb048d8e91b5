// Package generate runs autoregressive generation and multi-turn chat on any language model
// that can append tokens to its cache and return the last logits (the LM interface), so it
// does not depend on the model or tokenizer packages.
//
// Chat keeps the KV cache across turns and prefills only what is new: after a reply it appends
// the end-of-turn tokens the template would render (generation stops on <|im_end|>, which is
// therefore not in the cache yet), and before each turn it compares the tokens of the rendered
// conversation with the tokens in the cache, truncating to their longest common prefix — so a
// changed system prompt or an edited history is re-prefilled from the first difference, never
// silently ignored.
package generate

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/qwengo/qwengo/engine/sample"
)

// LM is a model with a cache.
type LM interface {
	// Append feeds ids at the current position and returns the logits of the last one.
	Append(ctx context.Context, ids []int) ([]float32, error)
	// Pos is the number of cached positions.
	Pos() int
	// Truncate drops cached positions >= pos.
	Truncate(pos int) error
	// Reset empties the cache.
	Reset()
}

// Options control one generation.
type Options struct {
	Sample    sample.Params
	MaxTokens int   // 0 = 256
	Stop      []int // stop token ids; not emitted
	// NoKVCache recomputes the whole sequence for every token: the slow reference path used to
	// check the cache (the seed had no way to tell its two paths apart).
	NoKVCache bool
	// OnToken is called with each generated id; an error stops generation and is returned.
	OnToken func(id int) error
}

// Result describes a finished generation.
type Result struct {
	Prompt, IDs                 []int
	StopReason                  string // "stop", "length", "cancelled"
	PrefillTokens, DecodeTokens int
	PrefillTime, DecodeTime     time.Duration
	PrefillTPS, DecodeTPS       float64
	StoppedOn                   int // the stop token id, -1 if none
}

func (r *Result) finish() {
	if s := r.PrefillTime.Seconds(); s > 0 {
		r.PrefillTPS = float64(r.PrefillTokens) / s
	}
	if s := r.DecodeTime.Seconds(); s > 0 {
		r.DecodeTPS = float64(r.DecodeTokens) / s
	}
}

// Run generates from prompt, appended at the LM's current position (so a chat can continue
// a cached conversation). On cancellation it returns the partial result and ctx's error.
func Run(ctx context.Context, lm LM, prompt []int, opt Options) (*Result, error) {
	smp, err := sample.New(opt.Sample)
	if err != nil {
		return nil, err
	}
	maxTok := opt.MaxTokens
	if maxTok <= 0 {
		maxTok = 256
	}
	if len(prompt) == 0 {
		return nil, fmt.Errorf("generate: empty prompt")
	}
	stop := map[int]bool{}
	for _, s := range opt.Stop {
		stop[s] = true
	}
	res := &Result{Prompt: prompt, StoppedOn: -1}
	defer res.finish()
	start := lm.Pos()
	history := append([]int(nil), prompt...)
	t0 := time.Now()
	logits, err := lm.Append(ctx, prompt)
	res.PrefillTime = time.Since(t0)
	res.PrefillTokens = len(prompt)
	if err != nil {
		return cancelled(res, err)
	}
	t1 := time.Now()
	defer func() { res.DecodeTime = time.Since(t1) }()
	for len(res.IDs) < maxTok {
		if err := ctx.Err(); err != nil {
			return cancelled(res, err)
		}
		id := smp.Sample(logits, history)
		if stop[id] {
			res.StopReason, res.StoppedOn = "stop", id
			return res, nil
		}
		res.IDs = append(res.IDs, id)
		history = append(history, id)
		if opt.OnToken != nil {
			if err := opt.OnToken(id); err != nil {
				res.StopReason = "error"
				return res, err
			}
		}
		if len(res.IDs) == maxTok {
			break
		}
		if opt.NoKVCache {
			if err := lm.Truncate(start); err != nil {
				return res, err
			}
			logits, err = lm.Append(ctx, history)
		} else {
			logits, err = lm.Append(ctx, []int{id})
		}
		res.DecodeTokens++
		if err != nil {
			return cancelled(res, err)
		}
	}
	res.StopReason = "length"
	return res, nil
}

func cancelled(res *Result, err error) (*Result, error) {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		res.StopReason = "cancelled"
	} else {
		res.StopReason = "error"
	}
	return res, err
}

// Message is one chat turn.
type Message struct{ Role, Content string }

// ChatCodec is what Chat needs from a tokenizer and template.
type ChatCodec struct {
	Render func(msgs []Message, addGenerationPrompt bool) string
	Encode func(string) []int
	// NewDecoder returns an incremental decoder: push an id and get the text that is complete;
	// flush returns what is held back at the end of a reply.
	NewDecoder func() (push func(id int) string, flush func() string)
	Stop       []int // ids that end a reply (<|im_end|>, <|endoftext|>)
}

// Chat is a multi-turn conversation on a persistent cache.
type Chat struct {
	lm       LM
	codec    ChatCodec
	System   string
	Messages []Message
	cached   []int // the ids in the LM's cache, in order
	// Last is the most recent turn's result.
	Last *Result
}

// NewChat starts a conversation. The LM's cache is reset.
func NewChat(lm LM, codec ChatCodec) *Chat {
	lm.Reset()
	return &Chat{lm: lm, codec: codec}
}

// SetSystem sets (or clears) the system prompt; the next turn re-prefills from the change.
func (c *Chat) SetSystem(s string) { c.System = s }

// Reset forgets the conversation and empties the cache.
func (c *Chat) Reset() {
	c.Messages, c.cached, c.Last = nil, nil, nil
	c.lm.Reset()
}

func (c *Chat) all() []Message {
	var msgs []Message
	if c.System != "" {
		msgs = append(msgs, Message{"system", c.System})
	}
	return append(msgs, c.Messages...)
}

// Send adds a user turn, generates the reply (streamed to onText) and keeps both.
func (c *Chat) Send(ctx context.Context, user string, opt Options, onText func(string)) (string, *Result, error) {
	msgs := append(c.all(), Message{"user", user})
	ids := c.codec.Encode(c.codec.Render(msgs, true))
	// Reuse the cache up to the longest common prefix with what it holds.
	common := 0
	for common < len(ids) && common < len(c.cached) && ids[common] == c.cached[common] {
		common++
	}
	if common == len(ids) { // the prompt must feed at least one token to produce logits
		common--
	}
	if err := c.lm.Truncate(common); err != nil {
		c.lm.Reset()
		common = 0
	}
	c.cached = c.cached[:common]
	dec, flush := c.codec.NewDecoder()
	var reply []byte
	o := opt
	o.Stop = append(append([]int(nil), opt.Stop...), c.codec.Stop...)
	userOn := opt.OnToken
	o.OnToken = func(id int) error {
		if s := dec(id); s != "" {
			reply = append(reply, s...)
			if onText != nil {
				onText(s)
			}
		}
		if userOn != nil {
			return userOn(id)
		}
		return nil
	}
	res, err := Run(ctx, c.lm, ids[common:], o)
	c.Last = res
	if s := flush(); s != "" {
		reply = append(reply, s...)
		if onText != nil {
			onText(s)
		}
	}
	if res != nil {
		c.cached = append(c.cached, ids[common:]...)
		c.cached = append(c.cached, res.IDs...)
	}
	// The last sampled token is never fed back, and a failed append may have stopped early:
	// the cache holds exactly lm.Pos() of these ids.
	c.cached = c.cached[:min(len(c.cached), c.lm.Pos())]
	if err != nil {
		// Keep the turn out of the history; the cache may hold part of it, which the next
		// turn's common-prefix check truncates away.
		return string(reply), res, err
	}
	text := string(reply)
	c.Messages = append(c.Messages, Message{"user", user}, Message{"assistant", text})
	return text, res, nil
}

// Cached returns the number of tokens in the cache that the next turn can reuse.
func (c *Chat) Cached() int { return len(c.cached) }
