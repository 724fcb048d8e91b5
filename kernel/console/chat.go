package console

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
)

// Chatter is what chat mode needs from a loaded model: a conversation whose
// KV cache persists across turns (only the new turn is prefilled).
type Chatter interface {
	// Send adds a user turn and generates the reply, passing text to
	// onText as it is generated. It stops early when ctx is cancelled.
	// stats is a short summary of the turn (tokens, tokens/s).
	Send(ctx context.Context, text string, onText func(string)) (stats string, err error)
	// SetSystem sets the system prompt ("" removes it).
	SetSystem(text string)
	// Reset forgets the conversation (the system prompt stays).
	Reset()
	// SetParam sets a generation parameter. The console validates values
	// and uses these names: "temp" (float ≥ 0; 0 is greedy), "top_p"
	// (float in (0, 1]), "max_tokens" (int ≥ 1).
	SetParam(name, value string) error
	// Stats describes the last turn (tokens/s) and memory in use.
	Stats() string
}

// ChatProvider returns the Chatter for `:chat ARG` (ARG may be empty: use
// the model already loaded). Its error is shown to the user as is.
type ChatProvider func(arg string) (Chatter, error)

// ErrNoChat is the answer of `:chat` when no ChatProvider is registered.
var ErrNoChat = errors.New("chat needs a loaded model: engine cannot generate yet")

var chatHook struct {
	mu sync.Mutex
	p  ChatProvider
}

// RegisterChat installs the provider `:chat` uses when Options.Chat is nil
// (the engine side registers one at start-up).
func RegisterChat(p ChatProvider) {
	chatHook.mu.Lock()
	chatHook.p = p
	chatHook.mu.Unlock()
}

func registeredChat() ChatProvider {
	chatHook.mu.Lock()
	defer chatHook.mu.Unlock()
	return chatHook.p
}

// ChatHelp lists the chat-mode commands.
const ChatHelp = `chat mode: type a message and press Enter; the reply streams as it is generated.
  /reset          forget the conversation (the KV cache is cleared)
  /system TEXT    set the system prompt (/system alone removes it)
  /temp X         sampling temperature (0 = greedy)
  /topp X         nucleus sampling threshold, 0 < X ≤ 1
  /max N          maximum tokens per reply
  /stats          tokens/s of the last reply and memory in use
  /help           this list
  :go             back to Go input (the conversation is kept)
  //text          send text that starts with "/"
Ctrl-C stops a reply; Ctrl-D leaves the console.`

// ChatCommand runs one slash command of chat mode against c and returns
// the line to show. line must start with "/". Errors name the command and
// what is wrong with its argument.
func ChatCommand(c Chatter, line string) (string, error) {
	cmd, arg, _ := strings.Cut(strings.TrimSpace(line), " ")
	arg = strings.TrimSpace(arg)
	noArg := func() error {
		if arg != "" {
			return fmt.Errorf("%s takes no argument (got %q)", cmd, arg)
		}
		return nil
	}
	switch cmd {
	case "/reset":
		if err := noArg(); err != nil {
			return "", err
		}
		c.Reset()
		return "conversation reset", nil
	case "/system":
		c.SetSystem(arg)
		if arg == "" {
			return "system prompt removed", nil
		}
		return "system prompt set", nil
	case "/temp", "/topp":
		if arg == "" {
			return "", fmt.Errorf("%s needs a number", cmd)
		}
		x, err := strconv.ParseFloat(arg, 64)
		name := "temp"
		switch {
		case err != nil:
			return "", fmt.Errorf("%s %q: not a number", cmd, arg)
		case cmd == "/temp" && (x < 0 || x != x || x > 100):
			return "", fmt.Errorf("/temp %s: want a temperature from 0 (greedy) to 100", arg)
		case cmd == "/topp":
			name = "top_p"
			if !(x > 0 && x <= 1) {
				return "", fmt.Errorf("/topp %s: want 0 < top-p ≤ 1", arg)
			}
		}
		v := strconv.FormatFloat(x, 'g', -1, 64)
		if err := c.SetParam(name, v); err != nil {
			return "", fmt.Errorf("%s %s: %w", cmd, arg, err)
		}
		return fmt.Sprintf("%s = %s", name, v), nil
	case "/max":
		if arg == "" {
			return "", errors.New("/max needs a token count")
		}
		n, err := strconv.Atoi(arg)
		if err != nil || n < 1 {
			return "", fmt.Errorf("/max %q: want a whole number of tokens ≥ 1", arg)
		}
		if err := c.SetParam("max_tokens", strconv.Itoa(n)); err != nil {
			return "", fmt.Errorf("/max %s: %w", arg, err)
		}
		return fmt.Sprintf("max_tokens = %d", n), nil
	case "/stats":
		if err := noArg(); err != nil {
			return "", err
		}
		return c.Stats(), nil
	case "/help", "/?":
		return ChatHelp, nil
	}
	return "", fmt.Errorf("unknown chat command %s (/help lists them; //text sends text starting with /)", cmd)
}

// chatTurn sends one message, streaming the reply to out.
func chatTurn(ctx context.Context, c Chatter, text string, out io.Writer) (string, error) {
	wroteNL := true
	stats, err := c.Send(ctx, text, func(s string) {
		if s == "" {
			return
		}
		io.WriteString(out, s)
		wroteNL = strings.HasSuffix(s, "\n")
	})
	if !wroteNL {
		io.WriteString(out, "\n")
	}
	return stats, err
}
