package data

import (
	"fmt"
	"strings"
)

// Chat is what tokenising needs from a tokenizer: encoding, the chat template used at inference,
// and the end-of-turn token. Keeping it a struct of functions lets the engine pass its tokenizer
// without this package importing it, and tests pass a fake.
type Chat struct {
	Encode    func(text string) []int
	Render    func(msgs []Message, addGenerationPrompt bool) string
	EndOfTurn int // <|im_end|>
	Pad       int // padding id for batches (masked out)
}

// Sample is a tokenised example. Mask[j] reports whether IDs[j] is a target: the loss predicts
// IDs[j] from the logits at position j-1, so Mask[0] is always false.
type Sample struct {
	IDs    []int
	Mask   []bool
	Source string
	// PromptCut and AnswerCut count tokens dropped by truncation to the sequence length.
	PromptCut, AnswerCut int
}

// Targets is the number of supervised tokens.
func (s *Sample) Targets() int {
	n := 0
	for _, m := range s.Mask {
		if m {
			n++
		}
	}
	return n
}

type segKind uint8

const (
	segFixed  segKind = iota // template scaffolding and earlier turns
	segPrompt                // content of the last user turn: cut from the left first
	segReply                 // supervised reply tokens (+ end of turn)
)

type segment struct {
	ids  []int
	kind segKind
}

// Tokenize renders ex with the chat template (or takes its text) and builds the sample, truncated
// to seqLen tokens (0 = no limit) so that the answer is kept: the last prompt is cut from the
// left first, then earlier context, and only then the answer's tail.
func (c *Chat) Tokenize(ex Example, seqLen int) (*Sample, error) {
	if c.Encode == nil {
		return nil, fmt.Errorf("data: Chat.Encode is nil")
	}
	var segs []segment
	if !ex.IsChat() {
		if ex.Text == "" {
			return nil, fmt.Errorf("%s: empty example", ex.Source)
		}
		ids := c.Encode(ex.Text)
		s := &Sample{IDs: ids, Mask: make([]bool, len(ids)), Source: ex.Source}
		for j := 1; j < len(ids); j++ {
			s.Mask[j] = true
		}
		if seqLen > 0 && len(ids) > seqLen {
			s.AnswerCut = len(ids) - seqLen
			s.IDs, s.Mask = s.IDs[:seqLen], s.Mask[:seqLen]
		}
		return s, nil
	}
	if c.Render == nil {
		return nil, fmt.Errorf("data: Chat.Render is nil")
	}
	lastUser := -1
	for i, m := range ex.Messages {
		if m.Role == "user" {
			lastUser = i
		}
	}
	done := "" // rendered text already turned into segments
	emit := func(text string, kind segKind) error {
		if !strings.HasPrefix(text, done) {
			return fmt.Errorf("%s: chat template is not incremental (turn rendering does not extend the previous one)", ex.Source)
		}
		if rest := text[len(done):]; rest != "" {
			segs = append(segs, segment{c.Encode(rest), kind})
		}
		done = text
		return nil
	}
	for i, m := range ex.Messages {
		switch {
		case m.Role == "assistant":
			if err := emit(c.Render(ex.Messages[:i], true), segFixed); err != nil {
				return nil, err
			}
			full := c.Render(ex.Messages[:i+1], false)
			head := done + m.Content
			if !strings.HasPrefix(full, head) {
				return nil, fmt.Errorf("%s: chat template does not place the reply after the generation prompt", ex.Source)
			}
			reply := append(c.Encode(m.Content), c.EndOfTurn)
			segs = append(segs, segment{reply, segReply})
			// The end-of-turn token is rendered as text; skip past it, keep what follows (the
			// newline between turns) as unsupervised context.
			tail := full[len(head):]
			const eot = "<|im_end|>"
			if !strings.HasPrefix(tail, eot) {
				return nil, fmt.Errorf("%s: chat template does not end the reply with %s", ex.Source, eot)
			}
			done = head + eot
			if i+1 < len(ex.Messages) {
				if err := emit(full, segFixed); err != nil {
					return nil, err
				}
			}
		case i == lastUser:
			// Split the last user turn so its content can be cut from the left.
			before := c.Render(ex.Messages[:i], false)
			if err := emit(before, segFixed); err != nil {
				return nil, err
			}
			full := c.Render(ex.Messages[:i+1], false)
			idx := strings.Index(full[len(before):], m.Content)
			if idx < 0 {
				return nil, fmt.Errorf("%s: chat template does not contain the user message verbatim", ex.Source)
			}
			if err := emit(full[:len(before)+idx], segFixed); err != nil {
				return nil, err
			}
			if err := emit(full[:len(before)+idx+len(m.Content)], segPrompt); err != nil {
				return nil, err
			}
		}
	}
	if !hasReply(segs) {
		return nil, fmt.Errorf("%s: no assistant turn to train on", ex.Source)
	}
	s := &Sample{Source: ex.Source}
	if seqLen > 0 {
		s.PromptCut, s.AnswerCut = truncate(segs, seqLen)
	}
	for _, sg := range segs {
		for _, id := range sg.ids {
			s.IDs = append(s.IDs, id)
			s.Mask = append(s.Mask, sg.kind == segReply)
		}
	}
	if len(s.Mask) > 0 {
		s.Mask[0] = false
	}
	return s, nil
}

func hasReply(segs []segment) bool {
	for _, s := range segs {
		if s.kind == segReply {
			return true
		}
	}
	return false
}

func total(segs []segment) int {
	n := 0
	for _, s := range segs {
		n += len(s.ids)
	}
	return n
}

// truncate shortens segs in place to at most n tokens and returns how many prompt and answer
// tokens it dropped.
func truncate(segs []segment, n int) (promptCut, answerCut int) {
	over := total(segs) - n
	if over <= 0 {
		return 0, 0
	}
	// 1. the last user message, from the left
	for i := len(segs) - 1; i >= 0 && over > 0; i-- {
		if segs[i].kind == segPrompt {
			k := min(over, len(segs[i].ids))
			segs[i].ids = segs[i].ids[k:]
			over -= k
			promptCut += k
			break
		}
	}
	// 2. earlier context, from the very beginning, up to the last user turn's template head
	lastPrompt := -1
	for i, s := range segs {
		if s.kind == segPrompt {
			lastPrompt = i
		}
	}
	headEnd := lastPrompt - 1 // the "<|im_start|>user\n" segment just before the content
	for i := 0; i < headEnd && over > 0; i++ {
		k := min(over, len(segs[i].ids))
		if segs[i].kind == segReply {
			answerCut += k
		} else {
			promptCut += k
		}
		segs[i].ids = segs[i].ids[k:]
		over -= k
	}
	// 3. the answer's tail, then anything else from the end
	for i := len(segs) - 1; i >= 0 && over > 0; i-- {
		k := min(over, len(segs[i].ids))
		if segs[i].kind == segReply {
			answerCut += k
		} else {
			promptCut += k
		}
		segs[i].ids = segs[i].ids[:len(segs[i].ids)-k]
		over -= k
	}
	return promptCut, answerCut
}
