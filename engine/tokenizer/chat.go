package tokenizer

import "strings"

// Message is one chat turn.
type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// Special token strings of the Qwen chat format.
const (
	ImStart   = "<|im_start|>"
	ImEnd     = "<|im_end|>"
	EndOfText = "<|endoftext|>"
)

// RenderChat renders messages with the Qwen3-2507 Instruct chat template (no default system
// prompt, no think block): an optional leading system turn, then every turn as
// "<|im_start|>{role}\n{content}<|im_end|>\n"; tool results are wrapped in <tool_response> inside
// a user turn as the template does. addGenerationPrompt appends "<|im_start|>assistant\n".
// Training and inference both use this function, so their prompts cannot drift apart.
func RenderChat(msgs []Message, addGenerationPrompt bool) string {
	var b strings.Builder
	for i, m := range msgs {
		switch {
		case m.Role == "tool":
			if i == 0 || msgs[i-1].Role != "tool" {
				b.WriteString(ImStart + "user")
			}
			b.WriteString("\n<tool_response>\n" + m.Content + "\n</tool_response>")
			if i == len(msgs)-1 || msgs[i+1].Role != "tool" {
				b.WriteString(ImEnd + "\n")
			}
		default:
			b.WriteString(ImStart + m.Role + "\n" + m.Content + ImEnd + "\n")
		}
	}
	if addGenerationPrompt {
		b.WriteString(ImStart + "assistant\n")
	}
	return b.String()
}
