// Package data turns training files into token sequences with loss masks.
//
// Readers accept the formats the seed project's users already have — `prompt<TAB>target` TSV
// (comments, header rows, BOM, CRLF), plain-text lines and JSONL chat — and report bad rows with
// file:line. Chat pairs are rendered with the same chat template as inference (the seed trained
// on `<|im_start|>user\n{p}\n<|im_end|>`, an extra newline its evaluation never saw) and the
// supervised targets are the reply tokens plus `<|im_end|>` (the seed omitted it, so its models
// never learned to stop). Mixtures sample datasets by ratio with a seeded RNG and report the
// realised share (the seed's "1 %" mix was 19 %).
package data

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Message is one chat turn.
type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// Example is one training example before tokenisation: either a conversation (Messages, the
// assistant turns are supervised) or plain text (Text, every token supervised).
type Example struct {
	Messages []Message
	Text     string
	Source   string // file:line, for error messages and reports
}

// IsChat reports whether the example is a conversation.
func (e Example) IsChat() bool { return len(e.Messages) > 0 }

// Format names a file format.
type Format string

// Supported formats.
const (
	TSV   Format = "tsv"
	Text  Format = "text"
	JSONL Format = "jsonl"
)

// FormatOf picks the format from a file's extension (.tsv, .txt/.text, .jsonl/.json).
func FormatOf(path string) (Format, error) {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".tsv":
		return TSV, nil
	case ".txt", ".text":
		return Text, nil
	case ".jsonl", ".json":
		return JSONL, nil
	}
	return "", fmt.Errorf("%s: cannot tell the data format from the extension (want .tsv, .txt or .jsonl)", path)
}

// RowError is a bad row in a data file.
type RowError struct {
	File string
	Line int
	Msg  string
}

func (e *RowError) Error() string { return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg) }

// ReadOptions controls reading.
type ReadOptions struct {
	// Format overrides detection by extension.
	Format Format
	// Lenient collects bad rows into Report.Skipped instead of failing on the first one.
	Lenient bool
	// System, when set, is prepended as a system turn to every chat example.
	System string
}

// Report says what a read kept and skipped.
type Report struct {
	Rows, Comments, Headers, Empty int
	Skipped                        []*RowError
}

// ReadFile reads a data file into examples.
func ReadFile(path string, opt ReadOptions) ([]Example, *Report, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	format := opt.Format
	if format == "" {
		if format, err = FormatOf(path); err != nil {
			return nil, nil, err
		}
	}
	return Read(f, path, format, opt)
}

// Read parses r (named name in errors) in the given format.
func Read(r io.Reader, name string, format Format, opt ReadOptions) ([]Example, *Report, error) {
	rep := &Report{}
	var out []Example
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 64*1024*1024)
	line := 0
	bad := func(msg string, args ...any) error {
		e := &RowError{File: name, Line: line, Msg: fmt.Sprintf(msg, args...)}
		if opt.Lenient {
			rep.Skipped = append(rep.Skipped, e)
			return nil
		}
		return e
	}
	for sc.Scan() {
		line++
		raw := sc.Bytes()
		if line == 1 {
			raw = bytes.TrimPrefix(raw, []byte("\xef\xbb\xbf"))
		}
		s := strings.TrimRight(string(raw), "\r")
		src := fmt.Sprintf("%s:%d", name, line)
		if strings.TrimSpace(s) == "" {
			rep.Empty++
			continue
		}
		switch format {
		case TSV:
			if strings.HasPrefix(strings.TrimSpace(s), "#") {
				rep.Comments++
				continue
			}
			prompt, target, ok := strings.Cut(s, "\t")
			if !ok {
				if err := bad("no tab: want prompt<TAB>target"); err != nil {
					return nil, rep, err
				}
				continue
			}
			if isHeader(prompt, target) {
				rep.Headers++
				continue
			}
			if strings.Contains(target, "\t") {
				if err := bad("more than one tab: want prompt<TAB>target"); err != nil {
					return nil, rep, err
				}
				continue
			}
			prompt, target = unescapeTSV(prompt), unescapeTSV(target)
			if strings.TrimSpace(prompt) == "" || strings.TrimSpace(target) == "" {
				if err := bad("empty prompt or target"); err != nil {
					return nil, rep, err
				}
				continue
			}
			out = append(out, Example{Messages: withSystem(opt.System, prompt, target), Source: src})
		case Text:
			out = append(out, Example{Text: s, Source: src})
		case JSONL:
			ex, err := parseJSONLine(s)
			if err != nil {
				if err := bad("%v", err); err != nil {
					return nil, rep, err
				}
				continue
			}
			if opt.System != "" && ex.Messages[0].Role != "system" {
				ex.Messages = append([]Message{{Role: "system", Content: opt.System}}, ex.Messages...)
			}
			ex.Source = src
			out = append(out, ex)
		default:
			return nil, rep, fmt.Errorf("%s: unknown data format %q", name, format)
		}
		rep.Rows++
	}
	if err := sc.Err(); err != nil {
		return nil, rep, fmt.Errorf("%s:%d: %w", name, line+1, err)
	}
	return out, rep, nil
}

// isHeader recognises header rows such as "prompt<TAB>target" (no '#').
func isHeader(prompt, target string) bool {
	p := strings.ToLower(strings.TrimSpace(prompt))
	t := strings.ToLower(strings.TrimSpace(target))
	switch p {
	case "prompt", "input", "question", "instruction", "user":
	default:
		return false
	}
	switch t {
	case "target", "output", "answer", "response", "completion", "assistant":
		return true
	}
	return false
}

// unescapeTSV turns the two-character sequences \n, \t and \\ into their characters, so a TSV row
// can carry multi-line text.
func unescapeTSV(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			switch s[i+1] {
			case 'n':
				b.WriteByte('\n')
				i++
				continue
			case 't':
				b.WriteByte('\t')
				i++
				continue
			case '\\':
				b.WriteByte('\\')
				i++
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func withSystem(system, prompt, target string) []Message {
	var m []Message
	if system != "" {
		m = append(m, Message{Role: "system", Content: system})
	}
	return append(m, Message{Role: "user", Content: prompt}, Message{Role: "assistant", Content: target})
}

func parseJSONLine(s string) (Example, error) {
	var row struct {
		Messages   []Message `json:"messages"`
		Prompt     *string   `json:"prompt"`
		Response   *string   `json:"response"`
		Completion *string   `json:"completion"`
		Text       *string   `json:"text"`
	}
	dec := json.NewDecoder(strings.NewReader(s))
	if err := dec.Decode(&row); err != nil {
		return Example{}, fmt.Errorf("invalid JSON: %v", err)
	}
	switch {
	case len(row.Messages) > 0:
		hasAssistant := false
		for i, m := range row.Messages {
			switch m.Role {
			case "system", "user", "assistant":
			default:
				return Example{}, fmt.Errorf("messages[%d]: unknown role %q (want system, user or assistant)", i, m.Role)
			}
			if m.Role == "system" && i != 0 {
				return Example{}, fmt.Errorf("messages[%d]: a system turn must come first", i)
			}
			hasAssistant = hasAssistant || m.Role == "assistant"
		}
		if !hasAssistant {
			return Example{}, fmt.Errorf("messages: no assistant turn to train on")
		}
		return Example{Messages: row.Messages}, nil
	case row.Prompt != nil:
		reply := row.Response
		if reply == nil {
			reply = row.Completion
		}
		if reply == nil {
			return Example{}, fmt.Errorf(`"prompt" without "response" or "completion"`)
		}
		if *row.Prompt == "" || *reply == "" {
			return Example{}, fmt.Errorf("empty prompt or reply")
		}
		return Example{Messages: withSystem("", *row.Prompt, *reply)}, nil
	case row.Text != nil:
		if *row.Text == "" {
			return Example{}, fmt.Errorf(`empty "text"`)
		}
		return Example{Text: *row.Text}, nil
	}
	return Example{}, fmt.Errorf(`want {"messages": [...]}, {"prompt", "response"|"completion"} or {"text"}`)
}
