package engine

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/qwengo/qwengo/engine/generate"
	"github.com/qwengo/qwengo/engine/qwen3"
	"github.com/qwengo/qwengo/engine/sample"
	"github.com/qwengo/qwengo/engine/tokenizer"
)

// GenerateBatch generates from several text prompts at once: each prompt is prefilled into its
// own rows of one batch KV cache, then every step feeds one token to each unfinished sequence
// in one batched forward (the weights are read once for all of them): qwen3.ForwardBatch while
// every sequence goes on (one launch per op for the whole batch on a GPU), qwen3.DecodeBatch
// on the remaining sequences' caches once some have stopped. Each
// sequence samples with its own sampler seeded as Generate's would be, so a prompt's tokens
// are those Generate gives it alone (bit for bit on the CPU). Options apply to every prompt;
// Stream and NoKVCache are not supported here. DecodeTPS of each result is the aggregate rate
// of the batch.
func (m *Model) GenerateBatch(prompts []string, opt GenerateOptions) ([]*Generation, error) {
	if m.Tokenizer == nil {
		return nil, ErrNoTokenizer
	}
	ids := make([][]int, len(prompts))
	for i, p := range prompts {
		text := p
		if opt.Chat || opt.System != "" {
			var msgs []tokenizer.Message
			if opt.System != "" {
				msgs = append(msgs, tokenizer.Message{Role: "system", Content: opt.System})
			}
			text = tokenizer.RenderChat(append(msgs, tokenizer.Message{Role: "user", Content: p}), true)
		}
		ids[i] = m.Tokenizer.Encode(text)
	}
	return m.GenerateBatchIDs(ids, opt)
}

// GenerateBatchIDs is GenerateBatch from token ids.
func (m *Model) GenerateBatchIDs(prompts [][]int, opt GenerateOptions) (_ []*Generation, err error) {
	switch {
	case len(prompts) == 0:
		return nil, errors.New("generate batch: no prompts")
	case opt.Stream != nil:
		return nil, errors.New("generate batch: Stream is not supported (one stream per prompt would interleave); use Generate")
	case opt.NoKVCache:
		return nil, errors.New("generate batch: NoKVCache is not supported; use Generate for the recompute path")
	}
	for i, p := range prompts {
		if len(p) == 0 {
			return nil, fmt.Errorf("generate batch: prompt %d is empty", i)
		}
	}
	maxTok := opt.MaxTokens
	if maxTok == 0 {
		maxTok = generate.DefaultMaxTokens
	}
	params := opt.params()
	if err := params.Validate(); err != nil {
		return nil, fmt.Errorf("generate batch: %w", err)
	}
	greedy := params.Greedy() && !params.Penalties()
	mode := qwen3.LogitsLast
	if greedy {
		mode = qwen3.LogitsGreedy // picked on the device: no logits download
	}
	stop := m.stopIDs(opt.StopIDs)

	m.mu.Lock()
	defer m.mu.Unlock()
	ctx, end := call()
	defer func() { err = end(err) }()

	longest := 0
	for _, p := range prompts {
		longest = max(longest, len(p))
	}
	batch, err := m.Net.NewBatchKVCache(len(prompts), longest+maxTok)
	if err != nil {
		return nil, fmt.Errorf("generate batch: %w", err)
	}
	defer batch.Free()
	type seq struct {
		cache   *qwen3.KVCache // the sequence's rows of batch
		smp     *sample.Sampler
		history []int
		dec     *tokenizer.Decoder
		text    strings.Builder
		gen     *Generation
		next    int
		done    bool
	}
	seqs := make([]*seq, len(prompts))
	// pick chooses sequence s's next token from its logits row (or the device's greedy pick)
	// and records it; it reports whether the sequence goes on.
	pick := func(s *seq, row []float32, greedyID int) bool {
		id := greedyID
		if !greedy {
			id = s.smp.Sample(row, s.history)
		}
		if slices.Contains(stop, id) {
			s.gen.StopReason, s.done = generate.StopToken, true
			return false
		}
		s.gen.IDs = append(s.gen.IDs, id)
		s.history = append(s.history, id)
		if str := s.dec.Push(id); str != "" {
			s.text.WriteString(str)
		}
		if len(s.gen.IDs) >= maxTok {
			s.gen.StopReason, s.done = generate.StopLength, true
			return false
		}
		s.next = id
		return true
	}

	t0 := time.Now()
	prefillTokens := 0
	for i, p := range prompts {
		s := &seq{history: slices.Clone(p), dec: m.Tokenizer.NewDecoder(), gen: &Generation{PromptIDs: slices.Clone(p), PrefillTokens: len(p)}}
		seqs[i] = s
		s.cache = batch.Seq(i)
		if !greedy {
			if s.smp, err = sample.New(params, m.Net.LMHead.Out()); err != nil {
				return nil, fmt.Errorf("generate batch: %w", err)
			}
		}
		lg, err := m.Net.Forward(ctx, p, s.cache, mode)
		if err != nil {
			return nil, fmt.Errorf("generate batch: prefill of prompt %d (%d tokens): %w", i, len(p), err)
		}
		prefillTokens += len(p)
		if greedy {
			pick(s, nil, lg.Greedy)
		} else {
			pick(s, lg.Row(0), 0)
		}
	}
	prefill := time.Since(t0)

	t1 := time.Now()
	decoded := 0
	for {
		var active []*seq
		for _, s := range seqs {
			if !s.done {
				active = append(active, s)
			}
		}
		if len(active) == 0 {
			break
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		next := make([]int, len(active))
		caches := make([]*qwen3.KVCache, len(active))
		for i, s := range active {
			next[i], caches[i] = s.next, s.cache
		}
		var lg *qwen3.BatchLogits
		if len(active) == len(seqs) {
			lg, err = m.Net.ForwardBatch(ctx, next, batch, mode)
		} else {
			lg, err = m.Net.DecodeBatch(ctx, next, caches, mode)
		}
		if err != nil {
			return nil, fmt.Errorf("generate batch: decode step of %d sequences: %w", len(active), err)
		}
		decoded += len(active)
		for i, s := range active {
			s.gen.DecodeTokens++
			if greedy {
				pick(s, nil, lg.Greedy[i])
			} else {
				pick(s, lg.Row(i), 0)
			}
		}
	}
	decode := time.Since(t1)

	out := make([]*Generation, len(seqs))
	for i, s := range seqs {
		if str := s.dec.Flush(); str != "" {
			s.text.WriteString(str)
		}
		g := s.gen
		g.Text = s.text.String()
		g.PrefillMs, g.DecodeMs = float64(prefill.Microseconds())/1e3, float64(decode.Microseconds())/1e3
		if prefill > 0 {
			g.PrefillTPS = float64(prefillTokens) / prefill.Seconds()
		}
		if decode > 0 {
			g.DecodeTPS = float64(decoded) / decode.Seconds()
		}
		out[i] = g
	}
	return out, nil
}
