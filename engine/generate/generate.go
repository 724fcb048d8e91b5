// Package generate runs autoregressive generation and multi-turn chat on any language model
// that can append tokens to its cache and return the last position's logits (the LM
// interface), so it depends on neither the model nor the tokenizer package.
//
// Run prefills the prompt in one Append, then samples and feeds one token at a time. The
// context is checked between tokens (and passed to every Append, which may check it inside);
// cancellation returns the partial Result with StopReason "cancelled". Options.NoKVCache
// recomputes the whole sequence for every token, the slow reference path against which the
// cached path can be checked.
//
// Chat keeps the KV cache across turns and prefills only what is new. It tracks the token
// ids that are in the cache; before each turn it renders and encodes the conversation and
// truncates the cache to the longest common prefix with it, so a changed system prompt or an
// edited history is re-prefilled from the first difference, never silently ignored. After a
// reply it brings the cache to exactly what the template renders for the history (the reply
// plus <|im_end|>\n: generation stopped on <|im_end|>, which was therefore never fed, and a
// reply re-encoded from its text may tokenize differently from how it was sampled — then the
// cache is truncated to the common prefix and the rest appended).
package generate

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/qwengo/qwengo/engine/sample"
)

// LM is a language model with a cache of positions.
//
// Append must either append all ids or leave the position unchanged when it fails.
type LM interface {
	// Append feeds ids at the current position (a prefill or one decode token) and returns
	// the logits of the last position (len = vocab). It advances the position by len(ids).
	Append(ctx context.Context, ids []int) ([]float32, error)
	// Pos is the number of cached positions.
	Pos() int
	// Truncate drops cached positions >= pos.
	Truncate(pos int) error
	// Reset empties the cache.
	Reset()
}

// GreedyLM is an LM that can also return only the most likely next token (on a GPU: picked on
// the device, so a step downloads one id instead of the vocabulary's logits). Run uses it for
// greedy decoding without penalties and with the KV cache; AppendGreedy must return what
// sample.Argmax of Append's logits would (the first largest; rows with no value above -Inf,
// which no real model produces, may differ).
type GreedyLM interface {
	LM
	// AppendGreedy is Append returning the argmax of the last position's logits.
	AppendGreedy(ctx context.Context, ids []int) (int, error)
}

// DefaultMaxTokens is the generation limit used when Options.MaxTokens is 0.
const DefaultMaxTokens = 256

// Options control one generation.
type Options struct {
	// Sample selects greedy decoding or sampling, and the penalties.
	Sample sample.Params
	// MaxTokens is the most tokens generated (stop tokens excluded); 0 = DefaultMaxTokens.
	MaxTokens int
	// Stop holds ids that end generation; the stop token is neither emitted nor fed.
	Stop []int
	// NoKVCache recomputes the whole sequence for every token (truncating the cache back to
	// where Run started): the slow debugging path that the cached path must agree with.
	NoKVCache bool
	// OnToken, when set, receives each emitted id in order, before the next forward pass;
	// an error from it stops generation and is returned.
	OnToken func(id int) error
}

// Stop reasons.
const (
	StopToken     = "stop"      // a stop token was sampled
	StopLength    = "length"    // MaxTokens were generated
	StopCancelled = "cancelled" // the context was cancelled or timed out
	StopError     = "error"     // the LM or OnToken failed
)

// Result describes a generation, finished or partial.
type Result struct {
	// Prompt is what was prefilled; IDs are the emitted tokens (no stop token).
	Prompt, IDs []int
	// StopReason is "stop", "length", "cancelled" or "error".
	StopReason string
	// StoppedOn is the stop token that ended generation, -1 if none.
	StoppedOn int
	// PrefillTokens is len(Prompt); DecodeTokens counts the forward passes after the prefill
	// (one per emitted token except the last).
	PrefillTokens, DecodeTokens int
	// PrefillTime is the prompt's forward pass; DecodeTime the later forward passes plus all
	// sampling (OnToken callbacks excluded).
	PrefillTime, DecodeTime time.Duration
	// PrefillTPS and DecodeTPS are tokens per second (0 when nothing was timed).
	PrefillTPS, DecodeTPS float64
}

func (r *Result) finish() {
	if s := r.PrefillTime.Seconds(); s > 0 {
		r.PrefillTPS = float64(r.PrefillTokens) / s
	}
	if s := r.DecodeTime.Seconds(); s > 0 {
		r.DecodeTPS = float64(r.DecodeTokens) / s
	}
}

// String summarises the result on one line.
func (r *Result) String() string {
	return fmt.Sprintf("%s after %d tokens; prefill %d tokens in %v (%.1f tok/s), decode %d in %v (%.1f tok/s)",
		r.StopReason, len(r.IDs), r.PrefillTokens, r.PrefillTime.Round(time.Microsecond), r.PrefillTPS,
		r.DecodeTokens, r.DecodeTime.Round(time.Microsecond), r.DecodeTPS)
}

// Run generates from prompt, which is appended at the LM's current position (so generation
// can continue a cached context; Run does not reset the LM). The penalties see prompt and
// generated ids. On return the LM holds a prefix of prompt+IDs: the last emitted token and
// the stop token are not fed. On cancellation Run returns the partial Result (StopReason
// "cancelled") and ctx.Err(); on other failures a partial Result (StopReason "error") and
// the error.
func Run(ctx context.Context, lm LM, prompt []int, opt Options) (*Result, error) {
	return run(ctx, lm, nil, prompt, opt)
}

func checkOptions(opt Options) error {
	if err := opt.Sample.Validate(); err != nil {
		return fmt.Errorf("generate: %w", err)
	}
	if opt.MaxTokens < 0 {
		return fmt.Errorf("generate: MaxTokens = %d: must be >= 0 (0 = %d)", opt.MaxTokens, DefaultMaxTokens)
	}
	return nil
}

// run is Run with context ids known to precede the prompt in the cache; they count for the
// penalties, as the whole conversation does in transformers' generate.
func run(ctx context.Context, lm LM, context []int, prompt []int, opt Options) (*Result, error) {
	if lm == nil {
		return nil, errors.New("generate: nil LM")
	}
	if err := checkOptions(opt); err != nil {
		return nil, err
	}
	if len(prompt) == 0 {
		return nil, errors.New("generate: empty prompt: at least one token is needed to produce logits")
	}
	maxTok := opt.MaxTokens
	if maxTok == 0 {
		maxTok = DefaultMaxTokens
	}
	res := &Result{Prompt: slices.Clone(prompt), StoppedOn: -1, PrefillTokens: len(prompt)}
	defer res.finish()
	if err := ctx.Err(); err != nil {
		res.StopReason = StopCancelled
		return res, err
	}
	start := lm.Pos()
	history := make([]int, 0, len(context)+len(prompt)+maxTok)
	history = append(append(history, context...), prompt...)
	seq := history[len(context):] // prompt + generated, for the recompute path

	// feed appends ids and leaves the next token's choice in logits, or (greedy fast path) the
	// token itself in next.
	greedyLM, fast := lm.(GreedyLM)
	fast = fast && opt.Sample.Greedy() && !opt.Sample.Penalties() && !opt.NoKVCache
	var logits []float32
	next := -1
	feed := func(ids []int) error {
		if fast {
			id, err := greedyLM.AppendGreedy(ctx, ids)
			next = id
			return err
		}
		l, err := lm.Append(ctx, ids)
		if err == nil && len(l) == 0 {
			return errNoLogits
		}
		logits = l
		return err
	}

	t0 := time.Now()
	err := feed(prompt)
	res.PrefillTime = time.Since(t0)
	if errors.Is(err, errNoLogits) {
		res.StopReason = StopError
		return res, fmt.Errorf("generate: the LM returned no logits after the prefill at position %d", start)
	}
	if err != nil {
		return failed(ctx, res, fmt.Errorf("generate: prefill of %d tokens at position %d: %w", len(prompt), start, err))
	}
	var smp *sample.Sampler
	if !fast {
		if smp, err = sample.New(opt.Sample, len(logits)); err != nil {
			res.StopReason = StopError
			return res, fmt.Errorf("generate: %w", err)
		}
	}
	t1 := time.Now()
	var callbacks time.Duration
	defer func() { res.DecodeTime = time.Since(t1) - callbacks }()
	for {
		if err := ctx.Err(); err != nil {
			res.StopReason = StopCancelled
			return res, err
		}
		id := next
		if !fast {
			id = smp.Sample(logits, history)
		}
		if slices.Contains(opt.Stop, id) {
			res.StopReason, res.StoppedOn = StopToken, id
			return res, nil
		}
		res.IDs = append(res.IDs, id)
		history = append(history, id)
		seq = history[len(context):]
		if opt.OnToken != nil {
			tc := time.Now()
			err := opt.OnToken(id)
			callbacks += time.Since(tc)
			if err != nil {
				res.StopReason = StopError
				return res, fmt.Errorf("generate: OnToken(%d): %w", id, err)
			}
		}
		if len(res.IDs) >= maxTok {
			res.StopReason = StopLength
			return res, nil
		}
		if err := ctx.Err(); err != nil {
			res.StopReason = StopCancelled
			return res, err
		}
		if opt.NoKVCache {
			if err := lm.Truncate(start); err != nil {
				res.StopReason = StopError
				return res, fmt.Errorf("generate: no-cache path: truncate to %d: %w", start, err)
			}
			err = feed(seq)
		} else {
			err = feed([]int{id})
		}
		res.DecodeTokens++
		if errors.Is(err, errNoLogits) {
			res.StopReason = StopError
			return res, fmt.Errorf("generate: the LM returned no logits at position %d", start+len(seq)-1)
		}
		if err != nil {
			return failed(ctx, res, fmt.Errorf("generate: decode at position %d: %w", start+len(seq)-1, err))
		}
	}
}

// errNoLogits marks an Append that returned an empty row.
var errNoLogits = errors.New("no logits")

func failed(ctx context.Context, res *Result, err error) (*Result, error) {
	if cerr := ctx.Err(); cerr != nil {
		res.StopReason = StopCancelled
		return res, cerr
	}
	res.StopReason = StopError
	return res, err
}

// Message is one chat turn; Role is "system", "user" or "assistant".
type Message struct{ Role, Content string }

// ChatCodec is what Chat needs from a tokenizer and chat template.
type ChatCodec struct {
	// Render renders messages with the chat template, with the generation prompt
	// (<|im_start|>assistant\n) appended when addGenerationPrompt is set.
	Render func(msgs []Message, addGenerationPrompt bool) string
	// Encode turns rendered text into ids (special tokens recognised).
	Encode func(text string) []int
	// NewDecoder starts an incremental decoder: push takes one id and returns the text it
	// completes (possibly ""), flush returns what is held back at the end of a reply.
	NewDecoder func() (push func(id int) string, flush func() string)
	// Stop holds the ids that end a reply (<|im_end|>, <|endoftext|>), added to Options.Stop.
	Stop []int
}

func (c ChatCodec) check() error {
	var missing []string
	if c.Render == nil {
		missing = append(missing, "Render")
	}
	if c.Encode == nil {
		missing = append(missing, "Encode")
	}
	if c.NewDecoder == nil {
		missing = append(missing, "NewDecoder")
	}
	if len(missing) > 0 {
		return fmt.Errorf("chat: ChatCodec.%s not set", strings.Join(missing, ", ChatCodec."))
	}
	return nil
}

// Chat is a multi-turn conversation on an LM whose cache persists across turns. It is not
// safe for concurrent use, and expects to be the only user of the LM's cache (if the cache
// was changed behind its back, the next Send re-prefills the whole conversation).
type Chat struct {
	// System is the system prompt ("" = none). Changing it (or calling SetSystem) makes the
	// next Send re-prefill from the first token that differs.
	System string
	// Messages are the user and assistant turns so far. They may be edited: the next Send
	// re-prefills from the first token that differs.
	Messages []Message
	// Last is the most recent turn's generation result.
	Last *Result

	lm    LM
	codec ChatCodec
	ids   []int // the ids in the LM's cache, position by position
}

// NewChat starts a conversation on lm, whose cache it empties.
func NewChat(lm LM, codec ChatCodec) *Chat {
	if lm != nil {
		lm.Reset()
	}
	return &Chat{lm: lm, codec: codec}
}

// SetSystem sets, replaces or (with "") removes the system prompt; the next Send
// re-prefills from the first token that changed.
func (c *Chat) SetSystem(s string) { c.System = s }

// Reset forgets the turns (the system prompt stays) and empties the cache.
func (c *Chat) Reset() {
	c.Messages, c.ids, c.Last = nil, nil, nil
	if c.lm != nil {
		c.lm.Reset()
	}
}

// Cached returns how many tokens the cache holds for this conversation.
func (c *Chat) Cached() int { return len(c.ids) }

// CachedIDs returns a copy of the ids the cache holds, position by position.
func (c *Chat) CachedIDs() []int { return slices.Clone(c.ids) }

// all returns the system message (if any) followed by the turns.
func (c *Chat) all(extra ...Message) []Message {
	msgs := make([]Message, 0, len(c.Messages)+1+len(extra))
	if c.System != "" {
		msgs = append(msgs, Message{"system", c.System})
	}
	return append(append(msgs, c.Messages...), extra...)
}

// Send adds a user turn, generates the assistant's reply (streaming its text to onText when
// set) and keeps both in the history. Only the tokens that differ from the cache are
// prefilled. opt.Stop is extended with the codec's stop ids. After a cancellation or an
// OnToken error the partial reply is kept as the assistant's turn (a turn without any reply
// token is dropped); after an LM error the turn is dropped. Either way the result and the
// error are returned.
func (c *Chat) Send(ctx context.Context, user string, opt Options, onText func(string)) (*Result, string, error) {
	if c.lm == nil {
		return nil, "", errors.New("chat: nil LM")
	}
	if err := c.codec.check(); err != nil {
		return nil, "", err
	}
	if err := checkOptions(opt); err != nil {
		return nil, "", fmt.Errorf("chat: %w", err)
	}
	if c.lm.Pos() != len(c.ids) || opt.NoKVCache {
		// Changed behind our back (or the recompute path): start from an empty cache.
		c.lm.Reset()
		c.ids = c.ids[:0]
	}
	turn := Message{"user", user}
	target := c.codec.Encode(c.codec.Render(c.all(turn), true))
	if len(target) == 0 {
		return nil, "", errors.New("chat: the rendered conversation encodes to no tokens")
	}
	common := commonPrefix(c.ids, target)
	if common == len(target) {
		common-- // feed at least one token to get logits
	}
	if err := c.truncate(common); err != nil {
		common = 0
	}

	push, flush := c.codec.NewDecoder()
	var reply strings.Builder
	emit := func(s string) {
		if s != "" {
			reply.WriteString(s)
			if onText != nil {
				onText(s)
			}
		}
	}
	var cbErr error // set when the caller's OnToken stopped the turn
	o := opt
	o.Stop = append(slices.Clone(opt.Stop), c.codec.Stop...)
	o.OnToken = func(id int) error {
		emit(push(id))
		if opt.OnToken != nil {
			cbErr = opt.OnToken(id)
			return cbErr
		}
		return nil
	}
	prompt := target[common:]
	res, err := run(ctx, c.lm, c.ids[:common], prompt, o)
	c.Last = res
	if res == nil { // rejected before anything ran
		return nil, "", fmt.Errorf("chat: %w", err)
	}
	emit(flush())
	text := reply.String()

	// The cache now holds a prefix of prompt+IDs (see Run); anything else means the LM broke
	// its contract, and the next Send starts over.
	fed := c.lm.Pos() - common
	if fed < 0 || fed > len(prompt)+len(res.IDs) {
		c.lm.Reset()
		c.ids = c.ids[:0]
	} else {
		c.ids = append(c.ids[:common], prompt[:min(fed, len(prompt))]...)
		if fed > len(prompt) {
			c.ids = append(c.ids, res.IDs[:fed-len(prompt)]...)
		}
	}

	interrupted := res.StopReason == StopCancelled || cbErr != nil
	if err != nil && !(interrupted && len(res.IDs) > 0) {
		return res, text, err
	}
	c.Messages = append(c.Messages, turn, Message{"assistant", text})
	if ctx.Err() == nil { // after a cancellation the next Send brings the cache in line
		if serr := c.sync(ctx); serr != nil && err == nil {
			err = serr
		}
	}
	return res, text, err
}

// sync makes the cache hold exactly the rendered history (no generation prompt): it appends
// what the reply lacks (the last sampled token when generation hit its length limit,
// <|im_end|>, the newline) and, when re-encoding the reply text gives other tokens than the
// sampled ones, truncates to the longest common prefix and appends the rest.
func (c *Chat) sync(ctx context.Context) error {
	full := c.codec.Encode(c.codec.Render(c.all(), false))
	common := commonPrefix(c.ids, full)
	if err := c.truncate(common); err != nil {
		return err
	}
	if common == len(full) {
		return nil
	}
	if _, err := c.lm.Append(ctx, full[common:]); err != nil {
		if c.lm.Pos() != common { // the LM broke the all-or-nothing contract
			c.lm.Reset()
			c.ids = c.ids[:0]
		}
		return fmt.Errorf("chat: appending the end of the turn (%d tokens at position %d): %w", len(full)-common, common, err)
	}
	c.ids = append(c.ids, full[common:]...)
	return nil
}

// truncate cuts the cache (and c.ids) to n positions; on failure it empties both.
func (c *Chat) truncate(n int) error {
	if n == len(c.ids) && c.lm.Pos() == n {
		return nil
	}
	if err := c.lm.Truncate(n); err != nil {
		c.lm.Reset()
		c.ids = c.ids[:0]
		return fmt.Errorf("chat: truncating the cache to %d: %w", n, err)
	}
	c.ids = c.ids[:n]
	return nil
}

func commonPrefix(a, b []int) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}
