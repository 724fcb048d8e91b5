package console

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/go-zeromq/zmq4"

	"github.com/qwengo/qwengo/kernel/wire"
)

// Remote is the client side of the Jupyter messaging protocol, enough for a
// console attached to a running kernel (`qwenrepl --existing FILE`):
// execute_request on shell with the cell's iopub output (stream,
// display_data, execute_result, error, clear_output) passed to the IO,
// input_request answered on stdin, interrupt_request on control, and
// complete_request / is_complete_request for the line editor. Messages are
// signed and checked with the connection file's key (kernel/wire).
// Output the kernel sends for other clients' requests is not shown.
type Remote struct {
	// KernelInfo is the kernel_info_reply content received by Dial.
	KernelInfo map[string]any
	// Timeout bounds the short requests (complete, is_complete,
	// interrupt); default 5 s.
	Timeout time.Duration

	hbEndpoint string
	dead       chan struct{}
	deadOnce   sync.Once

	sess                         *wire.Session
	shell, control, stdin, iopub zmq4.Socket
	ctx                          context.Context
	cancel                       context.CancelFunc

	mu      sync.Mutex
	waiters map[string]chan *wire.Message // shell/control replies by request msg_id
	iopubTo map[string]chan *wire.Message // iopub messages by parent msg_id
	stdinCh chan *wire.Message

	interrupts atomic.Int64 // interrupt_requests sent by Interrupt
}

// Dial connects to the kernel described by the connection file at path and
// waits (up to timeout) until it answers kernel_info_request and its iopub
// channel delivers (the "slow joiner" handshake).
func Dial(path string, timeout time.Duration) (*Remote, error) {
	ci, err := wire.ReadConnectionFile(path)
	if err != nil {
		return nil, err
	}
	return DialInfo(ci, timeout)
}

// DialInfo is Dial with an already read connection file.
func DialInfo(ci *wire.ConnectionInfo, timeout time.Duration) (*Remote, error) {
	ctx, cancel := context.WithCancel(context.Background())
	r := &Remote{
		Timeout: 5 * time.Second,
		sess:    wire.NewSession(ci.Key),
		ctx:     ctx, cancel: cancel,
		waiters: map[string]chan *wire.Message{},
		iopubTo: map[string]chan *wire.Message{},
		stdinCh: make(chan *wire.Message, 4),
		dead:    make(chan struct{}),

		hbEndpoint: ci.Endpoint(ci.HBPort),
	}
	id := zmq4.WithID(zmq4.SocketIdentity("qwenrepl-" + r.sess.ID))
	opts := []zmq4.Option{zmq4.WithDialerRetry(50 * time.Millisecond), zmq4.WithDialerMaxRetries(int(timeout / (50 * time.Millisecond)))}
	r.shell = zmq4.NewDealer(ctx, append(opts, id)...)
	r.control = zmq4.NewDealer(ctx, append(opts, id)...)
	r.stdin = zmq4.NewDealer(ctx, append(opts, id)...)
	r.iopub = zmq4.NewSub(ctx, opts...)
	for _, s := range []struct {
		name string
		sock zmq4.Socket
		port int
	}{{"shell", r.shell, ci.ShellPort}, {"control", r.control, ci.ControlPort}, {"stdin", r.stdin, ci.StdinPort}, {"iopub", r.iopub, ci.IOPubPort}} {
		if err := s.sock.Dial(ci.Endpoint(s.port)); err != nil {
			r.Close()
			return nil, fmt.Errorf("connect %s %s: %w", s.name, ci.Endpoint(s.port), err)
		}
	}
	if err := r.iopub.SetOption(zmq4.OptionSubscribe, ""); err != nil {
		r.Close()
		return nil, fmt.Errorf("iopub subscribe: %w", err)
	}
	go r.recvLoop(r.shell, "shell")
	go r.recvLoop(r.control, "control")
	go r.recvLoop(r.stdin, "stdin")
	go r.recvLoop(r.iopub, "iopub")
	if err := r.handshake(timeout); err != nil {
		r.Close()
		return nil, err
	}
	go r.heartbeat()
	return r, nil
}

// ErrKernelDied is returned by a Remote whose kernel stopped answering
// heartbeats.
var ErrKernelDied = errors.New("the kernel died (no answer on the heartbeat channel)")

// The heartbeat channel is pinged every heartbeatInterval; after
// heartbeatMisses unanswered pings in a row the kernel is declared dead and
// every call fails with ErrKernelDied.
var (
	heartbeatInterval = time.Second
	heartbeatMisses   = 3
)

// heartbeat pings the kernel's heartbeat channel until the Remote is closed
// or the kernel misses heartbeatMisses pings in a row.
func (r *Remote) heartbeat() {
	interval, misses := heartbeatInterval, heartbeatMisses
	var c *hbConn
	defer func() {
		if c != nil {
			c.sock.Close()
		}
	}()
	missed := 0
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-time.After(interval):
		}
		if c == nil {
			c = &hbConn{sock: zmq4.NewReq(r.ctx, zmq4.WithDialerRetry(interval/4), zmq4.WithDialerMaxRetries(2))}
		}
		if r.ping(c, interval) {
			missed = 0
			continue
		}
		// A REQ socket that lost its reply cannot send again: start over.
		c.sock.Close()
		c = nil
		if missed++; missed >= misses {
			r.deadOnce.Do(func() { close(r.dead) })
			return
		}
	}
}

// hbConn is the heartbeat socket and whether it is connected.
type hbConn struct {
	sock   zmq4.Socket
	dialed atomic.Bool
}

// ping sends one heartbeat and waits up to timeout for the echo.
func (r *Remote) ping(c *hbConn, timeout time.Duration) bool {
	done := make(chan error, 1)
	go func() {
		sock := c.sock
		if !c.dialed.Load() {
			if err := sock.Dial(r.hbEndpoint); err != nil {
				done <- err
				return
			}
			c.dialed.Store(true)
		}
		if err := sock.Send(zmq4.NewMsg([]byte("ping"))); err != nil {
			done <- err
			return
		}
		_, err := sock.Recv()
		done <- err
	}()
	select {
	case err := <-done:
		return err == nil
	case <-time.After(timeout):
		return false
	case <-r.ctx.Done():
		return true
	}
}

// handshake sends kernel_info_request until a reply arrives on shell and
// the matching status message on iopub, so that no output of the first cell
// is lost while the subscription is being set up.
func (r *Remote) handshake(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		m, err := r.sess.NewMessage("kernel_info_request", nil, nil, nil)
		if err != nil {
			return err
		}
		replyCh, pubCh := r.expect(m.Header.MsgID, true)
		if err := r.send(r.shell, m); err != nil {
			r.forget(m.Header.MsgID)
			return err
		}
		wait := min(time.Until(deadline), 500*time.Millisecond)
		var gotReply, gotPub bool
		timer := time.NewTimer(wait)
	loop:
		for !(gotReply && gotPub) {
			select {
			case rep := <-replyCh:
				gotReply = true
				var info map[string]any
				if err := json.Unmarshal(rep.Content, &info); err == nil {
					r.KernelInfo = info
				}
				// After a reply, give iopub a little longer.
				if !gotPub {
					timer.Reset(min(time.Until(deadline), 300*time.Millisecond))
				}
			case <-pubCh:
				gotPub = true
			case <-timer.C:
				break loop
			}
		}
		timer.Stop()
		r.forget(m.Header.MsgID)
		if gotReply && gotPub {
			return nil
		}
	}
	return fmt.Errorf("kernel did not answer kernel_info_request within %v (is it running? is the connection file current?)", timeout)
}

// Banner is the kernel's banner from kernel_info_reply.
func (r *Remote) Banner() string {
	if b, ok := r.KernelInfo["banner"].(string); ok {
		return b
	}
	return ""
}

// Close disconnects.
func (r *Remote) Close() error {
	r.cancel()
	for _, s := range []zmq4.Socket{r.shell, r.control, r.stdin, r.iopub} {
		if s != nil {
			s.Close()
		}
	}
	return nil
}

func (r *Remote) send(s zmq4.Socket, m *wire.Message) error {
	if err := s.SendMulti(zmq4.NewMsgFrom(r.sess.Encode(m)...)); err != nil {
		return fmt.Errorf("send %s: %w", m.Header.MsgType, err)
	}
	return nil
}

// expect registers channels for the reply to msgID (and its iopub
// messages when pub is true).
func (r *Remote) expect(msgID string, pub bool) (reply, iopub chan *wire.Message) {
	reply = make(chan *wire.Message, 1)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.waiters[msgID] = reply
	if pub {
		iopub = make(chan *wire.Message, 256)
		r.iopubTo[msgID] = iopub
	}
	return reply, iopub
}

func (r *Remote) forget(msgID string) {
	r.mu.Lock()
	delete(r.waiters, msgID)
	delete(r.iopubTo, msgID)
	r.mu.Unlock()
}

// recvLoop decodes messages from one socket and routes them by parent
// msg_id. Messages that fail the signature check or do not parse are
// dropped: a console never acts on a forged message.
func (r *Remote) recvLoop(s zmq4.Socket, name string) {
	for {
		msg, err := s.Recv()
		if err != nil {
			if r.ctx.Err() != nil {
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		m, err := r.sess.Decode(msg.Frames)
		if err != nil {
			continue
		}
		parent := m.ParentHeader().MsgID
		switch name {
		case "iopub":
			r.mu.Lock()
			ch := r.iopubTo[parent]
			r.mu.Unlock()
			if ch != nil {
				select {
				case ch <- m:
				case <-r.ctx.Done():
					return
				}
			}
		case "stdin":
			select {
			case r.stdinCh <- m:
			case <-r.ctx.Done():
				return
			}
		default:
			r.mu.Lock()
			ch := r.waiters[parent]
			delete(r.waiters, parent)
			r.mu.Unlock()
			if ch != nil {
				ch <- m
			}
		}
	}
}

// request sends a short request on shell or control and waits for its reply.
func (r *Remote) request(s zmq4.Socket, msgType string, content any) (*wire.Message, error) {
	m, err := r.sess.NewMessage(msgType, nil, content, nil)
	if err != nil {
		return nil, err
	}
	ch, _ := r.expect(m.Header.MsgID, false)
	defer r.forget(m.Header.MsgID)
	if err := r.send(s, m); err != nil {
		return nil, err
	}
	t := r.Timeout
	if t <= 0 {
		t = 5 * time.Second
	}
	select {
	case rep := <-ch:
		return rep, nil
	case <-time.After(t):
		return nil, fmt.Errorf("%s: no reply within %v", msgType, t)
	case <-r.dead:
		return nil, fmt.Errorf("%s: %w", msgType, ErrKernelDied)
	case <-r.ctx.Done():
		return nil, errors.New(msgType + ": connection closed")
	}
}

// Interrupt sends interrupt_request on the control channel. Each call sends
// one: a second interrupt of a cell stuck in a compiled call lets the
// kernel abandon it.
func (r *Remote) Interrupt() {
	r.interrupts.Add(1)
	go r.request(r.control, "interrupt_request", nil)
}

// Complete sends complete_request (positions converted between Go byte
// offsets and the protocol's code points). Failures give no matches.
func (r *Remote) Complete(code string, cursor int) Completion {
	cursor = max(0, min(cursor, len(code)))
	rep, err := r.request(r.shell, "complete_request", map[string]any{"code": code, "cursor_pos": utf8.RuneCountInString(code[:cursor])})
	if err != nil {
		return Completion{}
	}
	var c struct {
		Status      string   `json:"status"`
		Matches     []string `json:"matches"`
		CursorStart int      `json:"cursor_start"`
		CursorEnd   int      `json:"cursor_end"`
	}
	if rep.DecodeContent(&c) != nil || c.Status != "ok" {
		return Completion{}
	}
	return Completion{Matches: c.Matches, Start: byteOffset(code, c.CursorStart), End: byteOffset(code, c.CursorEnd)}
}

// byteOffset converts a code-point offset into a byte offset of s (clamped).
func byteOffset(s string, cp int) int {
	if cp <= 0 {
		return 0
	}
	i := 0
	for n := 0; n < cp && i < len(s); n++ {
		_, w := utf8.DecodeRuneInString(s[i:])
		i += w
	}
	return i
}

// IsComplete sends is_complete_request; "unknown" when the kernel does not
// answer.
func (r *Remote) IsComplete(code string) (status, indent string) {
	rep, err := r.request(r.shell, "is_complete_request", map[string]any{"code": code})
	if err != nil {
		return "unknown", ""
	}
	var c struct {
		Status string `json:"status"`
		Indent string `json:"indent"`
	}
	if rep.DecodeContent(&c) != nil {
		return "unknown", ""
	}
	return c.Status, c.Indent
}

// idleGrace is how long Execute waits for the iopub idle status after the
// execute_reply before giving up on late output.
const idleGrace = 2 * time.Second

// Execute runs code in the kernel. Cancelling ctx sends interrupt_request
// (unless Interrupt was called during this execution already) and keeps
// waiting for the kernel to finish the cell.
func (r *Remote) Execute(ctx context.Context, code string, io IO) (*Result, error) {
	m, err := r.sess.NewMessage("execute_request", nil, map[string]any{
		"code": code, "silent": false, "store_history": true, "user_expressions": map[string]any{},
		"allow_stdin": true, "stop_on_error": true,
	}, nil)
	if err != nil {
		return nil, err
	}
	id := m.Header.MsgID
	replyCh, pubCh := r.expect(id, true)
	defer r.forget(id)
	start := time.Now()
	interruptsBefore := r.interrupts.Load()
	if err := r.send(r.shell, m); err != nil {
		return nil, err
	}
	var (
		reply     *wire.Message
		idle      bool
		res       = &Result{}
		cellErr   *CellError
		graceC    <-chan time.Time
		interrupt = ctx.Done()
	)
	for reply == nil || !idle {
		select {
		case <-interrupt:
			interrupt = nil
			if r.interrupts.Load() == interruptsBefore {
				r.Interrupt()
			}
		case reply = <-replyCh:
			if !idle {
				graceC = time.After(idleGrace)
			}
		case <-graceC:
			idle = true
		case p := <-pubCh:
			switch p.Header.MsgType {
			case "status":
				var c struct {
					State string `json:"execution_state"`
				}
				if p.DecodeContent(&c) == nil && c.State == "idle" {
					idle = true
				}
			case "stream":
				var c struct{ Name, Text string }
				if p.DecodeContent(&c) == nil {
					io.Stream(c.Name, c.Text)
				}
			case "display_data", "update_display_data":
				var c struct {
					Data      map[string]any `json:"data"`
					Metadata  map[string]any `json:"metadata"`
					Transient struct {
						DisplayID string `json:"display_id"`
					} `json:"transient"`
				}
				if p.DecodeContent(&c) == nil {
					io.Display(c.Data, c.Metadata, c.Transient.DisplayID, p.Header.MsgType == "update_display_data")
				}
			case "execute_result":
				var c struct {
					Data map[string]any `json:"data"`
				}
				if p.DecodeContent(&c) == nil {
					res.Data = c.Data
				}
			case "error":
				var c struct {
					Ename     string   `json:"ename"`
					Evalue    string   `json:"evalue"`
					Traceback []string `json:"traceback"`
				}
				if p.DecodeContent(&c) == nil {
					cellErr = &CellError{Name: c.Ename, Value: c.Evalue, Traceback: c.Traceback}
				}
			case "clear_output":
				var c struct {
					Wait bool `json:"wait"`
				}
				p.DecodeContent(&c)
				io.ClearOutput(c.Wait)
			}
		case in := <-r.stdinCh:
			r.answerInput(in, io)
		case <-r.ctx.Done():
			return nil, errors.New("execute: connection closed")
		case <-r.dead:
			return nil, ErrKernelDied
		}
	}
	res.Duration = time.Since(start)
	var c struct {
		Status    string   `json:"status"`
		Ename     string   `json:"ename"`
		Evalue    string   `json:"evalue"`
		Traceback []string `json:"traceback"`
	}
	if err := reply.DecodeContent(&c); err != nil {
		return nil, err
	}
	switch c.Status {
	case "ok":
		var md struct {
			Peak int64   `json:"peak_device_memory"`
			Wall float64 `json:"wall_time"`
		}
		if json.Unmarshal(reply.Metadata, &md) == nil {
			res.PeakDeviceBytes = md.Peak
			if md.Wall > 0 {
				res.Duration = time.Duration(md.Wall * float64(time.Second))
			}
		}
		return res, nil
	case "aborted":
		return nil, &CellError{Name: "Aborted", Value: "the kernel aborted this execution (an earlier cell failed)"}
	default:
		if cellErr == nil {
			cellErr = &CellError{Name: c.Ename, Value: c.Evalue, Traceback: c.Traceback}
			if cellErr.Name == "" {
				cellErr.Name = "Error"
			}
		}
		return nil, cellErr
	}
}

// answerInput handles an input_request from the kernel.
func (r *Remote) answerInput(in *wire.Message, io IO) {
	if in.Header.MsgType != "input_request" {
		return
	}
	var c struct {
		Prompt   string `json:"prompt"`
		Password bool   `json:"password"`
	}
	in.DecodeContent(&c)
	value, err := io.Input(c.Prompt, c.Password)
	if err != nil {
		value = ""
	}
	rep, err := r.sess.NewMessage("input_reply", in, map[string]any{"value": value}, nil)
	if err != nil {
		return
	}
	rep.Identities = nil
	r.send(r.stdin, rep)
}
