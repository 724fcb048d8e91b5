package tokenizer

import (
	"math/rand/v2"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestAppendLossy(t *testing.T) {
	// Expected values follow Unicode's "maximal subparts" practice, which Rust's from_utf8_lossy
	// and Python's decode(errors="replace") implement.
	const R = "\uFFFD"
	cases := []struct{ in, want string }{
		{"plain", "plain"},
		{"\xff", R},
		{"\xff\xfe", R + R},                     // two invalid bytes: two replacements
		{"a\xe4\xbdb", "a" + R + "b"},           // truncated 3-byte sequence: one
		{"\xe4\xbd\xe4\xbd", R + R},             // two truncated sequences
		{"\xf0\x9f\xa6", R},                     // truncated 4-byte sequence
		{"\xf0\x9f\xa6\x80\x80", "🦀" + R},       // stray continuation after a valid emoji
		{"\xe0\x80\xaf", R + R + R},             // overlong: E0 needs A0..BF next
		{"\xed\xa0\x80", R + R + R},             // surrogate: ED needs 80..9F next
		{"\xf4\x90\x80\x80", R + R + R + R},     // above U+10FFFF
		{"\xc0\xaf", R + R},                     // C0 never starts a sequence
		{"\xef\xbf\xbd", R},                     // an encoded U+FFFD is valid text
		{"\xe2\x82\xac\xe2\x82", "€" + R},       // valid then truncated
		{"\xf0\x90\x28\xbc", R + "(" + R},       // broken by ASCII
		{"\xf1\x80\x80\xe1\x80\xc2", R + R + R}, // three truncated sequences
	}
	for _, c := range cases {
		if got := string(appendLossy(nil, []byte(c.in))); got != c.want {
			t.Errorf("lossy(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestDecodeUnknownIDs(t *testing.T) {
	tk := tiny(t)
	ids := []int{'a', -1, 300, 407, 1 << 40, 'b'}
	if got := tk.Decode(ids); got != "a\uFFFD\uFFFD\uFFFD\uFFFDb" {
		t.Errorf("Decode(%v) = %q", ids, got)
	}
	if got := tk.Decode(nil); got != "" {
		t.Errorf("Decode(nil) = %q", got)
	}
	if got := tk.Decode([]int{400, 'x', 401}); got != "<|im_end|>x<think>" {
		t.Errorf("added tokens decode to %q", got)
	}
}

func TestIncrementalEmoji(t *testing.T) {
	tk := tiny(t)
	ids := tk.Encode("🦀")
	if len(ids) != 4 {
		t.Fatalf("the tiny tokenizer has no merges for the crab: want 4 byte tokens, got %v", ids)
	}
	d := tk.NewDecoder()
	for i, id := range ids[:3] {
		if got := d.Push(id); got != "" {
			t.Fatalf("Push of byte %d emitted %q before the character was complete", i, got)
		}
	}
	if d.Pending() != 3 {
		t.Fatalf("Pending %d, want 3", d.Pending())
	}
	if got := d.Push(ids[3]); got != "🦀" {
		t.Fatalf("last byte: %q", got)
	}
	if got := d.Flush(); got != "" {
		t.Fatalf("Flush after a complete character: %q", got)
	}
	// A generation cut inside a character: Flush shows the loss instead of dropping it.
	d.Push(ids[0])
	d.Push(ids[1])
	if got := d.Flush(); got != "\uFFFD" {
		t.Fatalf("Flush of a partial character: %q", got)
	}
	// Added tokens after a partial character end it.
	d.Push(ids[0])
	if got := d.Push(400); got != "\uFFFD<|im_end|>" {
		t.Fatalf("partial character then <|im_end|>: %q", got)
	}
}

// TestDecoderMatchesDecode: for any id sequence, what Push and Flush emit concatenates to Decode,
// and Push only ever emits valid UTF-8.
func TestDecoderMatchesDecode(t *testing.T) {
	tk := tiny(t)
	rng := rand.New(rand.NewPCG(3, 4))
	// Mostly bytes of real characters, some random bytes, unknown ids and added tokens.
	text := []byte("aé你🦀👍🏽€\u0301")
	for range 5000 {
		var ids []int
		for range rng.IntN(16) {
			switch k := rng.IntN(10); {
			case k < 6:
				ids = append(ids, int(text[rng.IntN(len(text))]))
			case k < 8:
				ids = append(ids, rng.IntN(256))
			case k < 9:
				ids = append(ids, 400+rng.IntN(7))
			default:
				ids = append(ids, []int{-5, 300, 999}[rng.IntN(3)])
			}
		}
		d := tk.NewDecoder()
		var b strings.Builder
		for _, id := range ids {
			p := d.Push(id)
			if !utf8.ValidString(p) {
				t.Fatalf("%v: Push emitted invalid %q", ids, p)
			}
			b.WriteString(p)
		}
		b.WriteString(d.Flush())
		if want := tk.Decode(ids); b.String() != want {
			t.Fatalf("%v: incremental %q, Decode %q", ids, b.String(), want)
		}
	}
}
