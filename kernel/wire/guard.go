package wire

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/go-zeromq/zmq4"
	"github.com/go-zeromq/zmq4/transport"
)

// MaxFrameSize is the largest ZMTP frame a peer may send (1 GiB). zmq4
// v0.17.0 allocates a frame's body from the size in its header before
// reading it, so a peer announcing 2^62 bytes would take the whole process
// down; the guarded transports close such a connection instead.
var MaxFrameSize uint64 = 1 << 30

// Guarded transport names registered with zmq4; Listen uses them for the
// connection file's tcp and ipc transports.
const (
	guardedTCP = "qwengo+tcp"
	guardedIPC = "qwengo+ipc"
)

func init() {
	// Errors only if already registered, which cannot happen for these
	// names outside this package.
	_ = zmq4.RegisterTransport(guardedTCP, guardTransport{transport.New("tcp")})
	_ = zmq4.RegisterTransport(guardedIPC, guardTransport{transport.New("unix")})
}

// guardedEndpoint maps tcp:// and ipc:// endpoints onto the guarded
// transports.
func guardedEndpoint(ep string) string {
	switch {
	case strings.HasPrefix(ep, "tcp://"):
		return guardedTCP + ep[len("tcp"):]
	case strings.HasPrefix(ep, "ipc://"):
		return guardedIPC + ep[len("ipc"):]
	}
	return ep
}

type guardTransport struct{ transport.Transport }

func (g guardTransport) Listen(ctx context.Context, addr string) (net.Listener, error) {
	l, err := g.Transport.Listen(ctx, addr)
	if err != nil {
		return nil, err
	}
	return guardListener{l}, nil
}

func (g guardTransport) Dial(ctx context.Context, d transport.Dialer, addr string) (net.Conn, error) {
	c, err := g.Transport.Dial(ctx, d, addr)
	if err != nil {
		return nil, err
	}
	return &guardConn{Conn: c, greeting: zmtpGreeting}, nil
}

type guardListener struct{ net.Listener }

func (l guardListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &guardConn{Conn: c, greeting: zmtpGreeting}, nil
}

// zmtpGreeting is the length of a ZMTP 3 greeting, which precedes frames.
const zmtpGreeting = 64

// errFrameTooLarge closes a connection whose peer announced an oversized
// frame.
var errFrameTooLarge = errors.New("zmtp frame larger than wire.MaxFrameSize")

// guardConn follows ZMTP framing on the bytes it reads (greeting, then
// flags, size, body per frame) and fails the read that would hand an
// oversized size to zmq4, before zmq4 sees it.
type guardConn struct {
	net.Conn
	greeting int  // greeting bytes still to skip
	state    int  // 0: flags, 1: size bytes, 2: body
	long     bool // 8-byte size
	sizeBuf  [8]byte
	sizeN    int    // size bytes seen
	body     uint64 // body bytes still to pass
	err      error
}

func (c *guardConn) Read(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.Conn.Read(p)
	if ferr := c.scan(p[:n]); ferr != nil {
		c.err = ferr
		c.Conn.Close()
		return 0, ferr
	}
	return n, err
}

func (c *guardConn) scan(b []byte) error {
	for len(b) > 0 {
		switch {
		case c.greeting > 0:
			k := min(c.greeting, len(b))
			c.greeting -= k
			b = b[k:]
		case c.state == 0: // flags
			c.long = b[0]&0x02 != 0
			c.state, c.sizeN = 1, 0
			b = b[1:]
		case c.state == 1: // size
			need := 1
			if c.long {
				need = 8
			}
			k := min(need-c.sizeN, len(b))
			copy(c.sizeBuf[c.sizeN:], b[:k])
			c.sizeN += k
			b = b[k:]
			if c.sizeN < need {
				continue
			}
			size := uint64(c.sizeBuf[0])
			if c.long {
				size = binary.BigEndian.Uint64(c.sizeBuf[:])
			}
			if size > MaxFrameSize {
				return fmt.Errorf("%w: %d bytes announced", errFrameTooLarge, size)
			}
			c.body, c.state = size, 2
			if size == 0 {
				c.state = 0
			}
		default: // body
			k := uint64(len(b))
			if k > c.body {
				k = c.body
			}
			c.body -= k
			b = b[k:]
			if c.body == 0 {
				c.state = 0
			}
		}
	}
	return nil
}
