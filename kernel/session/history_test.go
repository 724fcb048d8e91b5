package session

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func inputs(es []HistoryEntry) []string {
	out := []string{}
	for _, e := range es {
		out = append(out, e.Input)
	}
	return out
}

func TestHistoryFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "state", "history.jsonl")
	h, err := OpenHistory(file)
	if err != nil {
		t.Fatal(err)
	}
	if h.Session() != 1 {
		t.Fatalf("first session %d", h.Session())
	}
	for _, in := range []string{"x := 1", "fmt.Println(x)", "x := 1"} {
		if _, err := h.Append(in); err != nil {
			t.Fatal(err)
		}
	}
	// A corrupt line (a torn write, an editor) is skipped, not fatal.
	f, err := os.OpenFile(file, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("{not json\n")
	f.Close()

	h2, err := OpenHistory(file)
	if err != nil {
		t.Fatal(err)
	}
	if h2.Session() != 2 || h2.Skipped() != 1 {
		t.Fatalf("second session %d, skipped %d", h2.Session(), h2.Skipped())
	}
	h2.AppendLine(1, "multi\nline")
	h2.AppendLine(2, "y := 2")

	h3, _ := OpenHistory(file)
	tests := []struct {
		name string
		got  []HistoryEntry
		want []HistoryEntry
	}{
		{"tail 2", h3.Tail(2), []HistoryEntry{{2, 1, "multi\nline"}, {2, 2, "y := 2"}}},
		{"tail all", h3.Tail(100)[:1], []HistoryEntry{{1, 1, "x := 1"}}},
		{"range session 1", h3.Range(1, 2, 0), []HistoryEntry{{1, 2, "fmt.Println(x)"}, {1, 3, "x := 1"}}},
		{"range stop", h3.Range(1, 1, 2), []HistoryEntry{{1, 1, "x := 1"}}},
		{"range relative", h3.Range(-1, 0, 0), []HistoryEntry{{2, 1, "multi\nline"}, {2, 2, "y := 2"}}},
		{"search glob", h3.Search("x*", 0, false), []HistoryEntry{{1, 1, "x := 1"}, {1, 3, "x := 1"}}},
		{"search unique", h3.Search("x*", 0, true), []HistoryEntry{{1, 3, "x := 1"}}},
		{"search n", h3.Search("*", 1, false), []HistoryEntry{{2, 2, "y := 2"}}},
		{"search ? and newline", h3.Search("multi?line", 0, false), []HistoryEntry{{2, 1, "multi\nline"}}},
		{"search class", h3.Search("[xy] := [0-9]", 0, true), []HistoryEntry{{1, 3, "x := 1"}, {2, 2, "y := 2"}}},
		{"search anchored", h3.Search("Println", 0, false), nil},
		{"search inner", h3.Search("*Println*", 0, false), []HistoryEntry{{1, 2, "fmt.Println(x)"}}},
	}
	for _, tt := range tests {
		if !reflect.DeepEqual(tt.got, tt.want) {
			t.Errorf("%s: %+v, want %+v", tt.name, tt.got, tt.want)
		}
	}
}

func TestGlob(t *testing.T) {
	tests := []struct {
		pattern, s string
		match      bool
	}{
		{"", "anything", true},
		{"a*", "abc", true},
		{"a*", "ba", false},
		{"a?c", "abc", true},
		{"a?c", "ac", false},
		{"[!a]b", "cb", true},
		{"[!a]b", "ab", false},
		{"[]]x", "]x", true},
		{"a.b", "a.b", true},
		{"a.b", "axb", false},
		{"(x)", "(x)", true},
		{"[unclosed", "[unclosed", true},
		{"é?", "éa", true},
	}
	for _, tt := range tests {
		re, err := globRegexp(tt.pattern)
		if err != nil {
			t.Errorf("%q: %v", tt.pattern, err)
			continue
		}
		if re.MatchString(tt.s) != tt.match {
			t.Errorf("glob %q on %q = %v", tt.pattern, tt.s, !tt.match)
		}
	}
}

func TestSessionHistory(t *testing.T) {
	file := filepath.Join(t.TempDir(), "h.jsonl")
	s := newSession(t, Options{HistoryFile: file})
	mustRun(t, s, "a := 1")
	mustRun(t, s, "a + 1")
	mustRun(t, s, "   ") // counted, not recorded
	mustRun(t, s, "a + 2")
	got := s.History().Range(0, 0, 0)
	if want := []string{"a := 1", "a + 1", "a + 2"}; !reflect.DeepEqual(inputs(got), want) || got[2].Line != 4 {
		t.Errorf("history %+v", got)
	}
	s2 := newSession(t, Options{HistoryFile: file})
	if s2.History().Session() != 2 || len(s2.History().Tail(10)) != 3 {
		t.Errorf("reopened: session %d, %v", s2.History().Session(), s2.History().Tail(10))
	}
	b, _ := os.ReadFile(file)
	if n := strings.Count(string(b), "\n"); n != 3 {
		t.Errorf("file has %d lines:\n%s", n, b)
	}
	f, _ := mustRun(t, s2, "%history 3") // the last three inputs, this one included
	if !strings.Contains(f.out(), "1/2: a + 1") || !strings.Contains(f.out(), "1/4: a + 2") {
		t.Errorf("%%history: %q", f.out())
	}
}
