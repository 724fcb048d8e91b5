package tokenizer

import (
	"fmt"
	"strings"
)

// Message is one chat turn. Role is "system", "user", "assistant" or "tool".
type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// Special token texts of the Qwen chat format, and their Qwen3 ids.
const (
	EndOfText = "<|endoftext|>" // 151643; pad, and a stop token
	ImStart   = "<|im_start|>"  // 151644
	ImEnd     = "<|im_end|>"    // 151645; ends every turn, the stop token of chat generation
)

// RenderChat renders messages with the Qwen3-2507 Instruct chat template (no default system
// prompt, no think block), byte for byte as transformers' apply_chat_template does without tools:
//
//	<|im_start|>system\n{content}<|im_end|>\n        only if the first message is a system one
//	<|im_start|>{role}\n{content}<|im_end|>\n        each user, assistant, or later system turn
//	<|im_start|>user\n<tool_response>\n{content}\n</tool_response><|im_end|>\n
//	                                                  tool results (consecutive ones share a turn)
//	<|im_start|>assistant\n                           if addGenerationPrompt
//
// As in the template, messages with any other role are left out (ValidateChat reports them).
// Content is inserted verbatim: special-token text inside it is matched as those tokens by
// Encode, exactly as with the tokenizers library. Training and inference must both render with
// this function so that their prompts cannot drift apart.
func RenderChat(msgs []Message, addGenerationPrompt bool) string {
	var b strings.Builder
	if len(msgs) > 0 && msgs[0].Role == "system" {
		b.WriteString(ImStart + "system\n" + msgs[0].Content + ImEnd + "\n")
	}
	for i, m := range msgs {
		switch m.Role {
		case "system":
			if i == 0 {
				continue
			}
			fallthrough
		case "user", "assistant":
			b.WriteString(ImStart + m.Role + "\n" + m.Content + ImEnd + "\n")
		case "tool":
			if i == 0 || msgs[i-1].Role != "tool" {
				b.WriteString(ImStart + "user")
			}
			b.WriteString("\n<tool_response>\n" + m.Content + "\n</tool_response>")
			if i == len(msgs)-1 || msgs[i+1].Role != "tool" {
				b.WriteString(ImEnd + "\n")
			}
		}
	}
	if addGenerationPrompt {
		b.WriteString(ImStart + "assistant\n")
	}
	return b.String()
}

// ValidateChat reports the first message whose role the template would leave out.
func ValidateChat(msgs []Message) error {
	for i, m := range msgs {
		switch m.Role {
		case "system", "user", "assistant", "tool":
		default:
			return &RoleError{Index: i, Role: m.Role}
		}
	}
	return nil
}

// RoleError is a chat message with a role the Qwen template does not render.
type RoleError struct {
	Index int
	Role  string
}

func (e *RoleError) Error() string {
	return fmt.Sprintf("chat message %d: role %q is not system, user, assistant or tool", e.Index, e.Role)
}
