package wire

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"os/user"
	"sync"
	"time"

	"github.com/google/uuid"
)

// ProtocolVersion is the Jupyter messaging protocol version put in every header.
const ProtocolVersion = "5.4"

// Delimiter separates routing identities from the signed part of a message.
const Delimiter = "<IDS|MSG>"

// Errors returned by Decode; wrapped with detail, test them with errors.Is.
var (
	ErrNoDelimiter  = errors.New("no <IDS|MSG> delimiter frame")
	ErrShortMessage = errors.New("too few frames after <IDS|MSG>")
	ErrUnsigned     = errors.New("unsigned message (a key is set)")
	ErrBadSignature = errors.New("signature does not match")
	ErrBadJSON      = errors.New("malformed JSON part")
)

// Header is a message header (also the shape of parent_header).
type Header struct {
	MsgID    string `json:"msg_id"`
	Session  string `json:"session"`
	Username string `json:"username"`
	Date     string `json:"date"`
	MsgType  string `json:"msg_type"`
	Version  string `json:"version"`
}

// Message is one decoded Jupyter message. The JSON parts are kept raw so that
// a reply can carry the request header byte for byte as its parent header and
// fields this package does not know survive.
type Message struct {
	Identities [][]byte        // routing frames before <IDS|MSG> (the topic on iopub)
	Header     Header          // parsed header
	RawHeader  json.RawMessage // header exactly as received or encoded
	Parent     json.RawMessage // parent_header; "{}" when there is none
	Metadata   json.RawMessage // metadata object
	Content    json.RawMessage // content object
	Buffers    [][]byte        // extra binary frames, kept as they came
}

// ParentHeader parses the parent header; the zero Header when it is empty.
func (m *Message) ParentHeader() Header {
	var h Header
	_ = json.Unmarshal(m.Parent, &h)
	return h
}

// DecodeContent unmarshals the content into v.
func (m *Message) DecodeContent(v any) error {
	if err := json.Unmarshal(m.Content, v); err != nil {
		return fmt.Errorf("%s content: %w", m.Header.MsgType, err)
	}
	return nil
}

// Session signs, encodes and decodes messages for one kernel process. It
// carries the process's own session id, put in the header of every message it
// creates. Safe for concurrent use.
type Session struct {
	ID       string // session id of this process (a UUID)
	Username string // username put in headers

	key   []byte
	pool  sync.Pool // of hash.Hash
	nowFn func() time.Time
}

// NewSession returns a session signing with key (empty: no signing) and a
// fresh session id.
func NewSession(key string) *Session {
	name := "qwengo"
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	}
	s := &Session{ID: uuid.NewString(), Username: name, key: []byte(key), nowFn: time.Now}
	s.pool.New = func() any { return hmac.New(sha256.New, s.key) }
	return s
}

// Signed reports whether messages are signed (a key is set).
func (s *Session) Signed() bool { return len(s.key) > 0 }

// Sign returns the hex HMAC-SHA256 of the four JSON parts, or "" without a key.
func (s *Session) Sign(header, parent, metadata, content []byte) string {
	if !s.Signed() {
		return ""
	}
	return hex.EncodeToString(s.mac(header, parent, metadata, content))
}

func (s *Session) mac(parts ...[]byte) []byte {
	h := s.pool.Get().(hash.Hash)
	h.Reset()
	for _, p := range parts {
		h.Write(p)
	}
	sum := h.Sum(nil)
	s.pool.Put(h)
	return sum
}

// Decode parses multipart frames into a Message. It checks the delimiter and
// the frame count before indexing, verifies the signature in constant time
// when a key is set (before any JSON is parsed), and requires the four JSON
// parts to be objects with a non-empty header msg_type. It never panics.
func (s *Session) Decode(frames [][]byte) (*Message, error) {
	d := -1
	for i, f := range frames {
		if string(f) == Delimiter {
			d = i
			break
		}
	}
	if d < 0 {
		return nil, fmt.Errorf("decode %d frames: %w", len(frames), ErrNoDelimiter)
	}
	if len(frames) < d+6 {
		return nil, fmt.Errorf("decode: %d frames after delimiter at %d, want at least 5: %w",
			len(frames)-d-1, d, ErrShortMessage)
	}
	sig, header, parent, meta, content := frames[d+1], frames[d+2], frames[d+3], frames[d+4], frames[d+5]
	if s.Signed() {
		if len(sig) == 0 {
			return nil, fmt.Errorf("decode: %w", ErrUnsigned)
		}
		got := make([]byte, hex.DecodedLen(len(sig)))
		n, err := hex.Decode(got, sig)
		want := s.mac(header, parent, meta, content)
		// hmac.Equal is constant time for equal lengths; a bad hex or
		// length mismatch fails without looking at the bytes.
		if err != nil || !hmac.Equal(got[:n], want) {
			return nil, fmt.Errorf("decode: %w", ErrBadSignature)
		}
	}
	m := &Message{
		Identities: frames[:d],
		RawHeader:  json.RawMessage(header),
		Parent:     json.RawMessage(parent),
		Metadata:   json.RawMessage(meta),
		Content:    json.RawMessage(content),
	}
	if len(frames) > d+6 {
		m.Buffers = frames[d+6:]
	}
	for _, p := range []struct {
		name string
		data []byte
	}{{"header", header}, {"parent_header", parent}, {"metadata", meta}, {"content", content}} {
		if !isObject(p.data) {
			return nil, fmt.Errorf("decode %s (%d bytes): not a JSON object: %w", p.name, len(p.data), ErrBadJSON)
		}
	}
	if err := json.Unmarshal(header, &m.Header); err != nil {
		return nil, fmt.Errorf("decode header: %v: %w", err, ErrBadJSON)
	}
	if m.Header.MsgType == "" {
		return nil, fmt.Errorf("decode header: msg_type missing: %w", ErrBadJSON)
	}
	return m, nil
}

// isObject reports whether b is one valid JSON object.
func isObject(b []byte) bool {
	t := bytes.TrimSpace(b)
	return len(t) >= 2 && t[0] == '{' && json.Valid(t)
}

// Encode returns the frames of m: identities, delimiter, signature, the four
// JSON parts, then the buffers. Empty JSON parts are sent as "{}".
func (s *Session) Encode(m *Message) [][]byte {
	header, parent, meta, content := orEmpty(m.RawHeader), orEmpty(m.Parent), orEmpty(m.Metadata), orEmpty(m.Content)
	frames := make([][]byte, 0, len(m.Identities)+6+len(m.Buffers))
	frames = append(frames, m.Identities...)
	frames = append(frames, []byte(Delimiter), []byte(s.Sign(header, parent, meta, content)),
		header, parent, meta, content)
	frames = append(frames, m.Buffers...)
	return frames
}

func orEmpty(b []byte) []byte {
	if len(b) == 0 {
		return []byte("{}")
	}
	return b
}

// NewMessage builds a message of msgType with a fresh msg_id, this session's
// id, the current time and protocol version. With a parent, the parent's
// header becomes parent_header and its identities the routing frames (so a
// reply goes back to the requester). content and metadata (nil: {}) are
// marshalled to JSON.
func (s *Session) NewMessage(msgType string, parent *Message, content, metadata any) (*Message, error) {
	m := &Message{Header: Header{
		MsgID:    uuid.NewString(),
		Session:  s.ID,
		Username: s.Username,
		Date:     s.nowFn().UTC().Format("2006-01-02T15:04:05.000000Z07:00"),
		MsgType:  msgType,
		Version:  ProtocolVersion,
	}}
	var err error
	if m.RawHeader, err = json.Marshal(m.Header); err != nil {
		return nil, fmt.Errorf("%s header: %w", msgType, err)
	}
	m.Parent = json.RawMessage("{}")
	if parent != nil {
		if len(parent.RawHeader) > 0 {
			m.Parent = parent.RawHeader
		}
		m.Identities = append([][]byte(nil), parent.Identities...)
	}
	if m.Content, err = marshalObject(content); err != nil {
		return nil, fmt.Errorf("%s content: %w", msgType, err)
	}
	if m.Metadata, err = marshalObject(metadata); err != nil {
		return nil, fmt.Errorf("%s metadata: %w", msgType, err)
	}
	return m, nil
}

func marshalObject(v any) (json.RawMessage, error) {
	if v == nil {
		return json.RawMessage("{}"), nil
	}
	if r, ok := v.(json.RawMessage); ok {
		if !isObject(r) {
			return nil, errors.New("raw JSON is not an object")
		}
		return r, nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	if !isObject(b) {
		return nil, fmt.Errorf("%T does not marshal to a JSON object", v)
	}
	return b, nil
}
