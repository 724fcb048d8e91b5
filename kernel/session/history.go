package session

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"
)

// HistoryEntry is one input: session number, line number (the execution count) and source.
type HistoryEntry struct {
	Session int
	Line    int
	Input   string
}

// History is the input history of this and earlier sessions. With a file, earlier sessions are
// read at open and each new entry is appended to the file as one JSON line with a single
// write (O_APPEND), so concurrent writers never interleave within an entry.
type History struct {
	mu      sync.Mutex
	file    string
	session int
	entries []HistoryEntry
	skipped int // unreadable lines in the file
}

type historyLine struct {
	Session int    `json:"session"`
	Line    int    `json:"line"`
	Time    string `json:"time,omitempty"`
	Input   string `json:"input"`
}

// OpenHistory reads a history file (missing is fine) and starts a new session numbered one
// past the highest in it. file "" keeps the history in memory only.
func OpenHistory(file string) (*History, error) {
	h := &History{file: file, session: 1}
	if file == "" {
		return h, nil
	}
	f, err := os.Open(file)
	if os.IsNotExist(err) {
		return h, nil
	}
	if err != nil {
		return nil, fmt.Errorf("history: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	for sc.Scan() {
		var l historyLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil || l.Session <= 0 {
			h.skipped++
			continue
		}
		h.entries = append(h.entries, HistoryEntry{Session: l.Session, Line: l.Line, Input: l.Input})
		if l.Session >= h.session {
			h.session = l.Session + 1
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("history %s: %w", file, err)
	}
	return h, nil
}

// Session is this session's number.
func (h *History) Session() int { return h.session }

// Skipped is the number of unreadable lines found in the file.
func (h *History) Skipped() int { return h.skipped }

// Append records input as the next line of this session and returns the entry.
func (h *History) Append(input string) (HistoryEntry, error) {
	h.mu.Lock()
	line := 1
	for i := len(h.entries) - 1; i >= 0; i-- {
		if h.entries[i].Session == h.session {
			line = h.entries[i].Line + 1
			break
		}
	}
	h.mu.Unlock()
	e := HistoryEntry{Session: h.session, Line: line, Input: input}
	return e, h.AppendLine(line, input)
}

// AppendLine records input as the given line of this session (the session uses the execution
// count).
func (h *History) AppendLine(line int, input string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.entries = append(h.entries, HistoryEntry{Session: h.session, Line: line, Input: input})
	if h.file == "" {
		return nil
	}
	b, err := json.Marshal(historyLine{Session: h.session, Line: line, Time: time.Now().UTC().Format(time.RFC3339), Input: input})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(h.file), 0o755); err != nil {
		return fmt.Errorf("history: %w", err)
	}
	f, err := os.OpenFile(h.file, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("history: %w", err)
	}
	_, werr := f.Write(append(b, '\n'))
	cerr := f.Close()
	if werr != nil {
		return fmt.Errorf("history %s: %w", h.file, werr)
	}
	if cerr != nil {
		return fmt.Errorf("history %s: %w", h.file, cerr)
	}
	return nil
}

// Tail returns the last n entries (all sessions), oldest first; n <= 0 gives none.
func (h *History) Tail(n int) []HistoryEntry {
	h.mu.Lock()
	defer h.mu.Unlock()
	if n <= 0 {
		return nil
	}
	if n > len(h.entries) {
		n = len(h.entries)
	}
	return append([]HistoryEntry(nil), h.entries[len(h.entries)-n:]...)
}

// Range returns the entries of a session with start <= line < stop (stop <= 0: to the end).
// session <= 0 counts back from this one: 0 is this session, -1 the one before.
func (h *History) Range(session, start, stop int) []HistoryEntry {
	h.mu.Lock()
	defer h.mu.Unlock()
	if session <= 0 {
		session += h.session
	}
	var out []HistoryEntry
	for _, e := range h.entries {
		if e.Session == session && e.Line >= start && (stop <= 0 || e.Line < stop) {
			out = append(out, e)
		}
	}
	return out
}

// Search returns the entries whose whole input matches the glob pattern (* any text, ?
// one character, [...] a class; "" matches everything), oldest first, at most the last n
// (n <= 0: all); with unique, each input appears once (its latest entry).
func (h *History) Search(pattern string, n int, unique bool) []HistoryEntry {
	re, err := globRegexp(pattern)
	if err != nil {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []HistoryEntry
	seen := map[string]bool{}
	for i := len(h.entries) - 1; i >= 0; i-- {
		e := h.entries[i]
		if !re.MatchString(e.Input) {
			continue
		}
		if unique {
			if seen[e.Input] {
				continue
			}
			seen[e.Input] = true
		}
		out = append(out, e)
		if n > 0 && len(out) == n {
			break
		}
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

// globRegexp translates a glob to an anchored regexp (sqlite GLOB semantics, as IPython's
// history search).
func globRegexp(pattern string) (*regexp.Regexp, error) {
	if pattern == "" {
		pattern = "*"
	}
	var b strings.Builder
	b.WriteString(`(?s)^`)
	for i := 0; i < len(pattern); i++ {
		switch ch := pattern[i]; ch {
		case '*':
			b.WriteString(".*")
		case '?':
			b.WriteString(".")
		case '[':
			j := strings.IndexByte(pattern[i+1:], ']')
			if j < 0 {
				b.WriteString(`\[`)
				continue
			}
			class := pattern[i+1 : i+1+j]
			if j == 0 { // "[]...]": ] first is literal
				k := strings.IndexByte(pattern[i+2:], ']')
				if k < 0 {
					b.WriteString(`\[`)
					continue
				}
				class = pattern[i+1 : i+2+k]
				j = k + 1
			}
			neg := strings.HasPrefix(class, "^") || strings.HasPrefix(class, "!")
			if neg {
				class = class[1:]
			}
			b.WriteString("[")
			if neg {
				b.WriteString("^")
			}
			b.WriteString(strings.NewReplacer(`\`, `\\`, `[`, `\[`, `]`, `\]`).Replace(class))
			b.WriteString("]")
			i += j + 1
		default:
			b.WriteString(regexp.QuoteMeta(pattern[i : i+1])) // bytes of a UTF-8 sequence pass through
		}
	}
	b.WriteString("$")
	return regexp.Compile(b.String())
}
