package tokenizer

import (
	"errors"
	"testing"
)

// Expected strings are what the Qwen3-2507 Instruct template (tokenizer_config.json chat_template)
// produces, worked through by hand for the branches the HF reference file does not cover.
func TestRenderChat(t *testing.T) {
	cases := []struct {
		name string
		msgs []Message
		gen  bool
		want string
	}{
		{"no messages", nil, true, "<|im_start|>assistant\n"},
		{"single user, prompt", []Message{{"user", "你是誰"}}, true,
			"<|im_start|>user\n你是誰<|im_end|>\n<|im_start|>assistant\n"},
		{"conversation", []Message{{"system", "S"}, {"user", "你是誰"}, {"assistant", "我是 F# 之神"}, {"user", "我是誰"}}, true,
			"<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n你是誰<|im_end|>\n<|im_start|>assistant\n我是 F# 之神<|im_end|>\n<|im_start|>user\n我是誰<|im_end|>\n<|im_start|>assistant\n"},
		{"training pair, no prompt", []Message{{"user", "q"}, {"assistant", "a"}}, false,
			"<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\na<|im_end|>\n"},
		{"later system turn renders like a user turn", []Message{{"user", "u"}, {"system", "s2"}}, false,
			"<|im_start|>user\nu<|im_end|>\n<|im_start|>system\ns2<|im_end|>\n"},
		{"empty system content still renders", []Message{{"system", ""}, {"user", "u"}}, false,
			"<|im_start|>system\n<|im_end|>\n<|im_start|>user\nu<|im_end|>\n"},
		{"consecutive tool results share one user turn", []Message{{"user", "u"}, {"assistant", "a"}, {"tool", "r1"}, {"tool", "r2"}, {"assistant", "b"}}, false,
			"<|im_start|>user\nu<|im_end|>\n<|im_start|>assistant\na<|im_end|>\n<|im_start|>user\n<tool_response>\nr1\n</tool_response>\n<tool_response>\nr2\n</tool_response><|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n"},
		{"tool first and last", []Message{{"tool", "r"}}, true,
			"<|im_start|>user\n<tool_response>\nr\n</tool_response><|im_end|>\n<|im_start|>assistant\n"},
		{"unknown roles are left out", []Message{{"developer", "x"}, {"user", "u"}}, false,
			"<|im_start|>user\nu<|im_end|>\n"},
		{"think text in an assistant turn is kept verbatim", []Message{{"assistant", "<think>\nx\n</think>\n\ny"}}, false,
			"<|im_start|>assistant\n<think>\nx\n</think>\n\ny<|im_end|>\n"},
	}
	for _, c := range cases {
		if got := RenderChat(c.msgs, c.gen); got != c.want {
			t.Errorf("%s:\n got %q\nwant %q", c.name, got, c.want)
		}
	}
}

func TestValidateChat(t *testing.T) {
	if err := ValidateChat([]Message{{"system", ""}, {"user", ""}, {"assistant", ""}, {"tool", ""}}); err != nil {
		t.Fatal(err)
	}
	err := ValidateChat([]Message{{"user", ""}, {"developer", ""}})
	var re *RoleError
	if !errors.As(err, &re) || re.Index != 1 || re.Role != "developer" {
		t.Fatalf("ValidateChat: %v", err)
	}
	if err.Error() != `chat message 1: role "developer" is not system, user, assistant or tool` {
		t.Fatalf("message: %v", err)
	}
}
