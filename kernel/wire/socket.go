package wire

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/go-zeromq/zmq4"
)

// sendTimeout bounds how long a reply waits for a peer connection.
const sendTimeout = 30 * time.Second

// Channel is one kernel socket plus the session that signs its messages.
// Sends are serialised so that multipart messages from several goroutines
// never interleave and iopub keeps the order in which Send was called.
type Channel struct {
	Name string // "shell", "control", "stdin" or "iopub"

	sock zmq4.Socket
	sess *Session
	mu   sync.Mutex
}

// NewChannel wraps an already listening or dialled socket.
func NewChannel(name string, sock zmq4.Socket, sess *Session) *Channel {
	return &Channel{Name: name, sock: sock, sess: sess}
}

// Socket returns the underlying zmq4 socket.
func (c *Channel) Socket() zmq4.Socket { return c.sock }

// Send signs, encodes and sends m.
func (c *Channel) Send(m *Message) error {
	frames := c.sess.Encode(m)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.sock.SendMulti(zmq4.NewMsgFrom(frames...)); err != nil {
		return fmt.Errorf("%s: send %s: %w", c.Name, m.Header.MsgType, err)
	}
	return nil
}

// RecvFrames blocks for the next multipart message. An error means the
// socket is closed or broken; the caller decodes the frames itself so that a
// malformed message is only logged.
func (c *Channel) RecvFrames() ([][]byte, error) {
	msg, err := c.sock.Recv()
	if err != nil {
		return nil, fmt.Errorf("%s: recv: %w", c.Name, err)
	}
	return msg.Frames, nil
}

// Sockets are the five listening kernel sockets.
type Sockets struct {
	Shell, Control, Stdin, IOPub *Channel
	HB                           zmq4.Socket

	ctx      context.Context
	cancel   context.CancelFunc
	ipcPaths []string
}

// Listen binds the five sockets described by ci. Ports that are 0 (tcp) are
// chosen by the system and written back into ci. logger receives zmq4's own
// diagnostics (nil: discarded).
func Listen(ctx context.Context, ci *ConnectionInfo, sess *Session, logger *log.Logger) (*Sockets, error) {
	if err := ci.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = log.New(discard{}, "", 0)
	}
	ctx, cancel := context.WithCancel(ctx)
	opts := []zmq4.Option{zmq4.WithLogger(logger), zmq4.WithTimeout(sendTimeout)}
	s := &Sockets{ctx: ctx, cancel: cancel}
	var opened []zmq4.Socket
	fail := func(err error) (*Sockets, error) {
		for _, o := range opened {
			o.Close()
		}
		cancel()
		return nil, err
	}
	bind := func(name string, sock zmq4.Socket, port *int) error {
		opened = append(opened, sock)
		ep := ci.Endpoint(*port)
		if err := sock.Listen(guardedEndpoint(ep)); err != nil {
			return fmt.Errorf("%s: listen %s: %w", name, ep, err)
		}
		if ci.Transport == "ipc" {
			s.ipcPaths = append(s.ipcPaths, strings.TrimPrefix(ep, "ipc://"))
		}
		if *port == 0 {
			if a, ok := sock.Addr().(*net.TCPAddr); ok {
				*port = a.Port
			}
		}
		return nil
	}
	shell, control, stdin := zmq4.NewRouter(ctx, opts...), zmq4.NewRouter(ctx, opts...), zmq4.NewRouter(ctx, opts...)
	iopub, hb := zmq4.NewPub(ctx, opts...), zmq4.NewRep(ctx, opts...)
	for _, b := range []struct {
		name string
		sock zmq4.Socket
		port *int
	}{{"shell", shell, &ci.ShellPort}, {"control", control, &ci.ControlPort}, {"stdin", stdin, &ci.StdinPort},
		{"iopub", iopub, &ci.IOPubPort}, {"hb", hb, &ci.HBPort}} {
		if err := bind(b.name, b.sock, b.port); err != nil {
			return fail(err)
		}
	}
	s.Shell = NewChannel("shell", shell, sess)
	s.Control = NewChannel("control", control, sess)
	s.Stdin = NewChannel("stdin", stdin, sess)
	s.IOPub = NewChannel("iopub", iopub, sess)
	s.HB = hb
	return s, nil
}

// Heartbeat echoes every heartbeat ping until the socket is closed.
func (s *Sockets) Heartbeat() {
	for {
		msg, err := s.HB.Recv()
		if err != nil {
			if errors.Is(err, context.Canceled) {
				return
			}
			// zmq4 reports a REP envelope without delimiter as an error
			// but the socket stays usable; stop only once it is closed.
			if s.closed() {
				return
			}
			continue
		}
		if err := s.HB.Send(msg); err != nil && s.closed() {
			return
		}
	}
}

func (s *Sockets) closed() bool { return s.ctx.Err() != nil }

// Close closes all sockets and removes ipc socket files.
func (s *Sockets) Close() error {
	s.cancel()
	var first error
	for _, c := range []zmq4.Socket{s.Shell.sock, s.Control.sock, s.Stdin.sock, s.IOPub.sock, s.HB} {
		if err := c.Close(); err != nil && first == nil {
			first = err
		}
	}
	for _, path := range s.ipcPaths {
		os.Remove(path)
	}
	return first
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
