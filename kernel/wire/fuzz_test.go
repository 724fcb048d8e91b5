package wire

import (
	"bytes"
	"testing"
)

// FuzzDecode feeds arbitrary frames (split on 0xFF 0x00) to the decoder with
// and without a key. Decode must never panic, must reject anything a signed
// session did not sign, and what it accepts must survive Encode/Decode.
func FuzzDecode(f *testing.F) {
	sep := []byte{0xFF, 0x00}
	s := NewSession("k")
	m, _ := s.NewMessage("execute_request", nil, map[string]any{"code": "1+1"}, nil)
	m.Identities = [][]byte{[]byte("id")}
	m.Buffers = [][]byte{{1, 2, 3}}
	f.Add(bytes.Join(s.Encode(m), sep), true)
	f.Add(bytes.Join(NewSession("").Encode(m), sep), false)
	f.Add([]byte(Delimiter), false)
	f.Add([]byte("<IDS|MSG>\xff\x00\xff\x00{}\xff\x00{}\xff\x00{}\xff\x00{}"), false)
	f.Add([]byte("<IDS|MSG>\xff\x00\xff\x00{\"msg_type\":\"x\"}\xff\x00[]\xff\x00{}\xff\x00{}"), false)
	f.Fuzz(func(t *testing.T, data []byte, signed bool) {
		key := ""
		if signed {
			key = "k"
		}
		sess := NewSession(key)
		frames := bytes.Split(data, sep)
		msg, err := sess.Decode(frames)
		if err != nil {
			if msg != nil {
				t.Fatal("message with error")
			}
			return
		}
		if msg.Header.MsgType == "" {
			t.Fatal("accepted empty msg_type")
		}
		if signed {
			// Anything accepted must carry the signature of its parts.
			d := len(msg.Identities)
			want := sess.Sign(frames[d+2], frames[d+3], frames[d+4], frames[d+5])
			if string(bytes.ToLower(frames[d+1])) != want {
				t.Fatalf("accepted signature %q, want %q", frames[d+1], want)
			}
		}
		back, err := sess.Decode(sess.Encode(msg))
		if err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if back.Header != msg.Header || !bytes.Equal(back.Content, msg.Content) || len(back.Buffers) != len(msg.Buffers) {
			t.Fatal("round trip changed the message")
		}
	})
}
