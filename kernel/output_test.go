package kernel

import (
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/qwengo/qwengo/kernel/wire"
)

func TestIncompleteTail(t *testing.T) {
	euro := "€" // E2 82 AC
	tests := []struct {
		in   string
		want int
	}{
		{"", 0},
		{"abc", 0},
		{"a" + euro, 0},
		{"a" + euro[:1], 1},
		{"a" + euro[:2], 2},
		{"😀"[:3], 3},
		{"😀", 0},
		{"é"[:1], 1},
		{"\x80\x80\x80", 0}, // invalid continuation bytes are passed on
		{"a\xff", 0},
	}
	for _, tt := range tests {
		if got := incompleteTail([]byte(tt.in)); got != tt.want {
			t.Errorf("incompleteTail(%q) = %d, want %d", tt.in, got, tt.want)
		}
	}
}

type sent struct {
	parent *wire.Message
	name   string
	text   string
}

func recordStreams(interval time.Duration) (*streams, func() []sent) {
	var mu sync.Mutex
	var out []sent
	s := newStreams(interval, func(p *wire.Message, name, text string) {
		mu.Lock()
		out = append(out, sent{p, name, text})
		mu.Unlock()
	})
	return s, func() []sent {
		mu.Lock()
		defer mu.Unlock()
		return append([]sent(nil), out...)
	}
}

func TestStreamsCoalesceInOrder(t *testing.T) {
	a, b := &wire.Message{}, &wire.Message{}
	s, got := recordStreams(time.Hour)
	s.write(a, "stdout", []byte("1"))
	s.write(a, "stdout", []byte("2"))
	s.write(a, "stderr", []byte("e"))
	s.write(a, "stdout", []byte("3"))
	s.write(b, "stdout", []byte("4"))
	s.write(b, "bogus", []byte("5")) // unknown names go to stdout
	if len(got()) != 0 {
		t.Fatal("sent before interval or flush")
	}
	s.flush()
	want := []sent{{a, "stdout", "12"}, {a, "stderr", "e"}, {a, "stdout", "3"}, {b, "stdout", "45"}}
	g := got()
	if len(g) != len(want) {
		t.Fatalf("got %v", g)
	}
	for i := range want {
		if g[i] != want[i] {
			t.Errorf("message %d = %+v, want %+v", i, g[i], want[i])
		}
	}
}

func TestStreamsTimerAndSplitRunes(t *testing.T) {
	s, got := recordStreams(10 * time.Millisecond)
	text := "héllo €uro 😀\n"
	for i := 0; i < len(text); i++ { // one byte at a time
		s.write(nil, "stdout", []byte{text[i]})
	}
	deadline := time.Now().Add(2 * time.Second)
	for len(got()) == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	s.flush()
	var all strings.Builder
	for _, m := range got() {
		if !utf8.ValidString(m.text) {
			t.Errorf("message split a rune: %q", m.text)
		}
		all.WriteString(m.text)
	}
	if all.String() != text {
		t.Fatalf("got %q", all.String())
	}
	// A truncated rune at the very end is still delivered on flush.
	s.write(nil, "stdout", []byte("€")[:2])
	s.flush()
	if g := got(); g[len(g)-1].text != "€"[:2] {
		t.Errorf("held bytes lost: %q", g[len(g)-1].text)
	}
}

func TestStreamsLargeOutputSentEarly(t *testing.T) {
	s, got := recordStreams(time.Hour)
	s.write(nil, "stdout", []byte(strings.Repeat("x", maxPending+1)))
	if len(got()) != 1 {
		t.Fatal("a megabyte of pending output was not sent at once")
	}
}
