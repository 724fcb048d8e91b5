package kernel

import (
	"context"
	"encoding/json"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/qwengo/qwengo/kernel/wire"
)

// client is a minimal Jupyter client over zmq4 for dispatcher tests.
type client struct {
	t                     *testing.T
	sess                  *wire.Session
	ci                    *wire.ConnectionInfo
	shell, control, stdin zmq4.Socket
	iopub                 zmq4.Socket
	shellCh, controlCh    chan *wire.Message
	stdinCh, iopubCh      chan *wire.Message
	ctx                   context.Context
	cancel                context.CancelFunc
}

const testKey = "test-key"

type harness struct {
	k      *Kernel
	c      *client
	fake   *fake
	runErr chan error
}

// start runs a kernel over ipc in a temp dir with the fake interpreter and
// connects a client; it waits until iopub delivers.
func start(t *testing.T, mod func(*Config)) *harness {
	t.Helper()
	ci := &wire.ConnectionInfo{Transport: "ipc", IP: filepath.Join(t.TempDir(), "k"),
		ShellPort: 1, IOPubPort: 2, StdinPort: 3, ControlPort: 4, HBPort: 5,
		SignatureScheme: "hmac-sha256", Key: testKey}
	f := newFake()
	cfg := Config{Conn: ci, Interp: f, Coalesce: 20 * time.Millisecond, InterruptGrace: 300 * time.Millisecond}
	cfg.Log = testLogger(t)
	if mod != nil {
		mod(&cfg)
	}
	k, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f.captured = k.CapturedOutput
	ctx, cancel := context.WithCancel(context.Background())
	h := &harness{k: k, fake: f, runErr: make(chan error, 1)}
	go func() { h.runErr <- k.Run(ctx) }()
	h.c = dial(t, ci)
	t.Cleanup(func() {
		cancel()
		h.c.close()
		close(f.release)
	})
	h.c.waitReady()
	return h
}

func dial(t *testing.T, ci *wire.ConnectionInfo) *client {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c := &client{t: t, sess: wire.NewSession(ci.Key), ci: ci, ctx: ctx, cancel: cancel,
		shellCh: make(chan *wire.Message, 100), controlCh: make(chan *wire.Message, 100),
		stdinCh: make(chan *wire.Message, 100), iopubCh: make(chan *wire.Message, 100000)}
	id := zmq4.WithID(zmq4.SocketIdentity("client-" + c.sess.ID[:8]))
	opts := []zmq4.Option{id, zmq4.WithDialerRetry(20 * time.Millisecond), zmq4.WithDialerMaxRetries(200)}
	c.shell = zmq4.NewDealer(ctx, opts...)
	c.control = zmq4.NewDealer(ctx, opts...)
	c.stdin = zmq4.NewDealer(ctx, opts...)
	c.iopub = zmq4.NewSub(ctx, opts[1:]...)
	for _, d := range []struct {
		s    zmq4.Socket
		port int
		ch   chan *wire.Message
	}{{c.shell, ci.ShellPort, c.shellCh}, {c.control, ci.ControlPort, c.controlCh},
		{c.stdin, ci.StdinPort, c.stdinCh}, {c.iopub, ci.IOPubPort, c.iopubCh}} {
		if err := d.s.Dial(ci.Endpoint(d.port)); err != nil {
			t.Fatal(err)
		}
		go c.recv(d.s, d.ch)
	}
	if err := c.iopub.SetOption(zmq4.OptionSubscribe, ""); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *client) recv(s zmq4.Socket, ch chan *wire.Message) {
	for {
		m, err := s.Recv()
		if err != nil {
			return
		}
		msg, err := c.sess.Decode(m.Frames)
		if err != nil {
			c.t.Errorf("client: kernel sent an undecodable message: %v", err)
			continue
		}
		ch <- msg
	}
}

func (c *client) close() {
	c.cancel()
	for _, s := range []zmq4.Socket{c.shell, c.control, c.stdin, c.iopub} {
		s.Close()
	}
}

// waitReady sends kernel_info until a status message shows up on iopub.
func (c *client) waitReady() {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c.send(c.shell, "kernel_info_request", nil)
		c.get(c.shellCh, 5*time.Second)
		select {
		case <-c.iopubCh:
			c.drainIOPub(100 * time.Millisecond)
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
	c.t.Fatal("iopub never delivered")
}

func (c *client) drainIOPub(quiet time.Duration) {
	for {
		select {
		case <-c.iopubCh:
		case <-time.After(quiet):
			return
		}
	}
}

func (c *client) send(s zmq4.Socket, msgType string, content any) *wire.Message {
	c.t.Helper()
	m, err := c.sess.NewMessage(msgType, nil, content, nil)
	if err != nil {
		c.t.Fatal(err)
	}
	if err := s.SendMulti(zmq4.NewMsgFrom(c.sess.Encode(m)...)); err != nil {
		c.t.Fatal(err)
	}
	return m
}

func (c *client) get(ch chan *wire.Message, timeout time.Duration) *wire.Message {
	c.t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(timeout):
		c.t.Fatalf("no message within %v", timeout)
		return nil
	}
}

// execute sends code and collects the reply and every iopub message of the
// request up to its idle status.
func (c *client) execute(content map[string]any) (reply *wire.Message, iopub []*wire.Message) {
	c.t.Helper()
	req := c.send(c.shell, "execute_request", content)
	reply = c.reply(req, c.shellCh, 10*time.Second)
	iopub = c.untilIdle(req, 10*time.Second)
	return reply, iopub
}

// reply waits for the reply to req on ch, skipping others.
func (c *client) reply(req *wire.Message, ch chan *wire.Message, timeout time.Duration) *wire.Message {
	c.t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case m := <-ch:
			if m.ParentHeader().MsgID == req.Header.MsgID {
				return m
			}
		case <-deadline:
			c.t.Fatalf("no reply to %s within %v", req.Header.MsgType, timeout)
		}
	}
}

// untilIdle returns the iopub messages whose parent is req, up to and
// including its idle status.
func (c *client) untilIdle(req *wire.Message, timeout time.Duration) []*wire.Message {
	c.t.Helper()
	var out []*wire.Message
	deadline := time.After(timeout)
	for {
		select {
		case m := <-c.iopubCh:
			if m.ParentHeader().MsgID != req.Header.MsgID {
				continue
			}
			out = append(out, m)
			if m.Header.MsgType == "status" && content(m)["execution_state"] == "idle" {
				return out
			}
		case <-deadline:
			c.t.Fatalf("no idle for %s within %v (got %d messages)", req.Header.MsgType, timeout, len(out))
		}
	}
}

func content(m *wire.Message) map[string]any {
	var v map[string]any
	json.Unmarshal(m.Content, &v)
	return v
}

func metadata(m *wire.Message) map[string]any {
	var v map[string]any
	json.Unmarshal(m.Metadata, &v)
	return v
}

func types(ms []*wire.Message) []string {
	var out []string
	for _, m := range ms {
		t := m.Header.MsgType
		if t == "status" {
			t += ":" + content(m)["execution_state"].(string)
		}
		out = append(out, t)
	}
	return out
}

func streamText(ms []*wire.Message, name string) (text string, n int) {
	for _, m := range ms {
		if m.Header.MsgType == "stream" && content(m)["name"] == name {
			text += content(m)["text"].(string)
			n++
		}
	}
	return text, n
}
