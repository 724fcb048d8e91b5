package kernel

import (
	"sync"
	"time"
	"unicode/utf8"

	"github.com/qwengo/qwengo/kernel/wire"
)

// maxPending is the amount of buffered stream text that triggers an
// immediate send instead of waiting for the coalescing interval.
const maxPending = 1 << 20

// chunk is pending stream text for one parent request and stream name.
type chunk struct {
	parent *wire.Message
	name   string
	data   []byte
}

// streams coalesces stdout/stderr text into few iopub stream messages.
// zmq4's PUB socket queues without bound, so a loop printing 100k lines must
// not become 100k messages: text is collected for interval and sent in
// order, adjacent pieces for the same parent and stream merged into one
// message. Pieces are never reordered; Flush sends everything at once.
type streams struct {
	send     func(parent *wire.Message, name, text string)
	interval time.Duration

	mu      sync.Mutex // held while sending, so sends keep the write order
	pending []chunk
	size    int
	timer   *time.Timer
	// hold keeps an incomplete UTF-8 sequence at the end of a stream until
	// the rest arrives (captured descriptors are read in arbitrary pieces).
	hold map[string][]byte
}

func newStreams(interval time.Duration, send func(parent *wire.Message, name, text string)) *streams {
	return &streams{send: send, interval: interval, hold: map[string][]byte{}}
}

// write queues data for stream name of parent (nil: no parent).
func (s *streams) write(parent *wire.Message, name string, data []byte) {
	if len(data) == 0 {
		return
	}
	if name != "stderr" {
		name = "stdout"
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	key := name
	if h := s.hold[key]; len(h) > 0 {
		data = append(h, data...)
		delete(s.hold, key)
	}
	if k := incompleteTail(data); k > 0 {
		s.hold[key] = append([]byte(nil), data[len(data)-k:]...)
		data = data[:len(data)-k]
	}
	if len(data) == 0 {
		return
	}
	if n := len(s.pending); n > 0 && s.pending[n-1].parent == parent && s.pending[n-1].name == name {
		s.pending[n-1].data = append(s.pending[n-1].data, data...)
	} else {
		s.pending = append(s.pending, chunk{parent: parent, name: name, data: append([]byte(nil), data...)})
	}
	s.size += len(data)
	if s.size >= maxPending {
		s.sendLocked(false)
		return
	}
	if s.timer == nil {
		s.timer = time.AfterFunc(s.interval, func() {
			s.mu.Lock()
			s.timer = nil
			s.sendLocked(false)
			s.mu.Unlock()
		})
	}
}

// flush sends everything pending now, including held partial UTF-8.
func (s *streams) flush() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.timer != nil {
		s.timer.Stop()
		s.timer = nil
	}
	s.sendLocked(true)
}

func (s *streams) sendLocked(all bool) {
	if all {
		for _, name := range []string{"stdout", "stderr"} {
			if h := s.hold[name]; len(h) > 0 {
				var parent *wire.Message
				if n := len(s.pending); n > 0 {
					parent = s.pending[n-1].parent
				}
				s.pending = append(s.pending, chunk{parent: parent, name: name, data: h})
				delete(s.hold, name)
			}
		}
	}
	p := s.pending
	s.pending, s.size = nil, 0
	for _, c := range p {
		s.send(c.parent, c.name, string(c.data))
	}
}

// incompleteTail returns the length of a trailing UTF-8 sequence in b that
// is a valid prefix of a longer rune (0 when b ends on a rune boundary or in
// invalid bytes, which are sent as they are).
func incompleteTail(b []byte) int {
	for k := 1; k <= 3 && k <= len(b); k++ {
		c := b[len(b)-k]
		if c < 0x80 {
			return 0 // ASCII: boundary
		}
		if c >= 0xC0 { // lead byte
			need := 0
			switch {
			case c >= 0xF0:
				need = 4
			case c >= 0xE0:
				need = 3
			default:
				need = 2
			}
			if k < need && !utf8.FullRune(b[len(b)-k:]) {
				return k
			}
			return 0
		}
	}
	return 0
}
