package kernel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/qwengo/qwengo/kernel/wire"
)

// Flusher is output capture seen from the kernel: Flush returns once
// everything written to the captured descriptors so far has been handed to
// Kernel.CapturedOutput. *capture.Capture implements it.
type Flusher interface{ Flush() }

// StreamWriter is implemented by captures that accept text into their
// pipes (*capture.Capture does). The kernel then sends IO.Stream text
// through the same pipe as what compiled code writes to descriptors 1 and
// 2, so interpreted and compiled output of a cell keep their relative order.
type StreamWriter interface {
	WriteStream(name string, p []byte) error
}

// Config configures a Kernel.
type Config struct {
	Conn   *wire.ConnectionInfo // where to listen and the signing key
	Interp Interpreter          // the language side
	Log    *log.Logger          // the kernel's own log (nil: discarded)
	// Coalesce is how long stream output is collected before it is sent
	// (default 50ms).
	Coalesce time.Duration
	// HandleSIGINT makes SIGINT interrupt the running cell, as
	// interrupt_request does.
	HandleSIGINT bool
	// InterruptGrace is how long a cell may keep running after a second
	// interrupt before the kernel abandons it (default 2s).
	InterruptGrace time.Duration
}

// Kernel serves the Jupyter messaging protocol for one Interpreter.
type Kernel struct {
	cfg    Config
	log    *log.Logger
	sess   *wire.Session
	socks  *wire.Sockets
	interp Interpreter
	out    *streams

	handlers map[string]handler

	flushMu sync.Mutex
	flusher Flusher

	// parentMu guards parent: the request that captured descriptor output
	// is attributed to (the running or last execute_request).
	parentMu sync.Mutex
	parent   *wire.Message
	discard  bool // a silent cell is running: captured output is dropped

	count int // execution counter (shell goroutine only)

	cellMu sync.Mutex
	cell   *runningCell // nil when no cell runs

	stdinMu  sync.Mutex // one input_request at a time
	stdinCh  chan *wire.Message
	shellCh  chan *wire.Message
	aborting bool // stop_on_error: queued executes are being aborted
	abortN   int  // requests queued when a cell failed (to be aborted)

	shutdown     chan struct{}
	shutdownOnce sync.Once
	ready        chan struct{}
}

// runningCell is the execute_request in progress.
type runningCell struct {
	cancel     context.CancelFunc
	interrupts chan struct{} // one token per interrupt (buffered; only the first two matter)
}

// New creates a kernel; Run starts serving.
func New(cfg Config) (*Kernel, error) {
	if cfg.Conn == nil {
		return nil, errors.New("kernel: no connection info")
	}
	if cfg.Interp == nil {
		return nil, errors.New("kernel: no interpreter")
	}
	if cfg.Coalesce <= 0 {
		cfg.Coalesce = 50 * time.Millisecond
	}
	if cfg.InterruptGrace <= 0 {
		cfg.InterruptGrace = 2 * time.Second
	}
	lg := cfg.Log
	if lg == nil {
		lg = log.New(io.Discard, "", 0)
	}
	k := &Kernel{
		cfg:      cfg,
		log:      lg,
		sess:     wire.NewSession(cfg.Conn.Key),
		interp:   cfg.Interp,
		stdinCh:  make(chan *wire.Message, 16),
		shellCh:  make(chan *wire.Message, 1024),
		shutdown: make(chan struct{}),
		ready:    make(chan struct{}),
	}
	k.out = newStreams(cfg.Coalesce, k.sendStream)
	k.handlers = k.handlerTable()
	return k, nil
}

// Ready is closed once Run listens; ports that were 0 in the connection
// info have been filled in by then.
func (k *Kernel) Ready() <-chan struct{} { return k.ready }

// SessionID is the kernel's own session id, put in every message header.
func (k *Kernel) SessionID() string { return k.sess.ID }

// AttachCapture makes the kernel flush f before it publishes displays,
// results, replies and idle, so captured output keeps its place. If f is
// also a StreamWriter, IO.Stream text goes through it.
func (k *Kernel) AttachCapture(f Flusher) {
	k.flushMu.Lock()
	k.flusher = f
	k.flushMu.Unlock()
}

// CapturedOutput is the capture sink: bytes written to descriptor 1 or 2
// become stream output of the running (or last) cell.
func (k *Kernel) CapturedOutput(name string, data []byte) {
	k.parentMu.Lock()
	parent, discard := k.parent, k.discard
	k.parentMu.Unlock()
	if discard {
		return
	}
	k.out.write(parent, name, data)
}

// streamWriter returns the attached capture's StreamWriter.
func (k *Kernel) streamWriter() (StreamWriter, bool) {
	k.flushMu.Lock()
	defer k.flushMu.Unlock()
	sw, ok := k.flusher.(StreamWriter)
	return sw, ok
}

// isParent reports whether captured output is attributed to m now (so text
// sent through the capture lands on m's cell).
func (k *Kernel) isParent(m *wire.Message) bool {
	k.parentMu.Lock()
	defer k.parentMu.Unlock()
	return k.parent == m && !k.discard
}

// flushOutput delivers captured and coalesced output now.
func (k *Kernel) flushOutput() {
	k.flushMu.Lock()
	f := k.flusher
	k.flushMu.Unlock()
	if f != nil {
		f.Flush()
	}
	k.out.flush()
}

// Run listens on the connection's sockets, publishes "starting", and serves
// until a shutdown_request arrives or ctx ends. It returns nil after a
// requested shutdown.
func (k *Kernel) Run(ctx context.Context) error {
	socks, err := wire.Listen(ctx, k.cfg.Conn, k.sess, k.log)
	if err != nil {
		return err
	}
	k.socks = socks
	defer socks.Close()
	close(k.ready)
	go socks.Heartbeat()
	k.log.Printf("listening: shell %s, session %s, signed %v", k.cfg.Conn.Endpoint(k.cfg.Conn.ShellPort), k.sess.ID, k.sess.Signed())

	k.publish(nil, "status", map[string]string{"execution_state": "starting"})

	controlCh := make(chan *wire.Message, 64)
	go k.receive(socks.Shell, k.shellCh)
	go k.receive(socks.Control, controlCh)
	go k.receive(socks.Stdin, k.stdinCh)

	if k.cfg.HandleSIGINT {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt)
		defer signal.Stop(sig)
		go func() {
			for {
				select {
				case <-sig:
					k.log.Printf("SIGINT: interrupting the running cell")
					k.interrupt()
				case <-k.shutdown:
					return
				}
			}
		}()
	}

	go func() {
		for {
			select {
			case m := <-controlCh:
				k.dispatch(socks.Control, m)
			case <-k.shutdown:
				return
			}
		}
	}()
	go func() {
		for {
			select {
			case m := <-k.shellCh:
				k.dispatch(socks.Shell, m)
				if k.abortN > 0 {
					k.abortQueued(socks.Shell)
				}
			case <-k.shutdown:
				return
			}
		}
	}()

	select {
	case <-k.shutdown:
		k.flushOutput()
		// zmq4 sends iopub from a queue: give the last messages (the
		// shutdown broadcast) time to leave before the sockets close.
		time.Sleep(200 * time.Millisecond)
		return nil
	case <-ctx.Done():
		k.stop()
		return ctx.Err()
	}
}

// abortQueued answers the execute_requests that were already queued when
// a cell failed with stop_on_error with status "aborted" (other requests
// among them are handled normally), then resumes normal execution.
func (k *Kernel) abortQueued(shell *wire.Channel) {
	n := k.abortN
	k.aborting = true
	defer func() { k.aborting, k.abortN = false, 0 }()
	for i := 0; i < n; i++ {
		select {
		case m := <-k.shellCh:
			k.dispatch(shell, m)
		case <-k.shutdown:
			return
		}
	}
}

// stop ends Run (once).
func (k *Kernel) stop() {
	k.shutdownOnce.Do(func() { close(k.shutdown) })
}

// receive decodes messages from ch into out; forged and malformed messages
// are logged and dropped, never handled.
func (k *Kernel) receive(ch *wire.Channel, out chan<- *wire.Message) {
	for {
		frames, err := ch.RecvFrames()
		if err != nil {
			select {
			case <-k.shutdown:
			default:
				if !errors.Is(err, context.Canceled) {
					k.log.Printf("%v: stopped receiving", err)
				}
			}
			return
		}
		m, err := k.sess.Decode(frames)
		if err != nil {
			k.log.Printf("%s: dropped message (%d frames): %v", ch.Name, len(frames), err)
			continue
		}
		select {
		case out <- m:
		case <-k.shutdown:
			return
		}
	}
}

// handler answers one request. reply sends the reply on the request's
// socket.
type handler func(ch *wire.Channel, m *wire.Message)

// dispatch runs the handler for m between busy and idle status messages.
func (k *Kernel) dispatch(ch *wire.Channel, m *wire.Message) {
	h, ok := k.handlers[m.Header.MsgType]
	if !ok {
		k.log.Printf("%s: unknown message type %q (msg_id %s): ignored", ch.Name, m.Header.MsgType, m.Header.MsgID)
		return
	}
	k.publish(m, "status", map[string]string{"execution_state": "busy"})
	func() {
		defer func() {
			if r := recover(); r != nil {
				k.log.Printf("%s: handler %s panicked: %v\n%s", ch.Name, m.Header.MsgType, r, debug.Stack())
				if t, ok := strings.CutSuffix(m.Header.MsgType, "_request"); ok {
					k.reply(ch, m, t+"_reply", errorContent("InternalError",
						fmt.Sprintf("qwengo kernel: %s failed: %v", m.Header.MsgType, r), nil), nil)
				}
			}
		}()
		h(ch, m)
	}()
	k.flushOutput()
	k.publish(m, "status", map[string]string{"execution_state": "idle"})
}

// reply sends msgType with content to the requester on ch.
func (k *Kernel) reply(ch *wire.Channel, req *wire.Message, msgType string, content, metadata any) {
	r, err := k.sess.NewMessage(msgType, req, content, metadata)
	if err != nil {
		k.log.Printf("%s: build %s: %v", ch.Name, msgType, err)
		r, err = k.sess.NewMessage(msgType, req, errorContent("EncodingError", err.Error(), nil), nil)
		if err != nil {
			return
		}
	}
	if err := ch.Send(r); err != nil {
		k.log.Printf("%v", err)
	}
}

// publish broadcasts msgType on iopub with parent (nil: none). It reports
// whether the message could be built.
func (k *Kernel) publish(parent *wire.Message, msgType string, content any) bool {
	m, err := k.sess.NewMessage(msgType, parent, content, nil)
	if err != nil {
		k.log.Printf("iopub: build %s: %v", msgType, err)
		return false
	}
	m.Identities = [][]byte{[]byte("kernel." + k.sess.ID + "." + msgType)}
	if k.socks == nil {
		return true
	}
	if err := k.socks.IOPub.Send(m); err != nil {
		k.log.Printf("%v", err)
	}
	return true
}

// sendStream publishes one coalesced stream message.
func (k *Kernel) sendStream(parent *wire.Message, name, text string) {
	k.publish(parent, "stream", map[string]string{"name": name, "text": text})
}

func errorContent(ename, evalue string, traceback []string) map[string]any {
	if traceback == nil {
		traceback = []string{}
	}
	return map[string]any{"status": "error", "ename": ename, "evalue": evalue, "traceback": traceback}
}

// interrupt cancels the running cell (interrupt_request, SIGINT).
func (k *Kernel) interrupt() {
	k.cellMu.Lock()
	c := k.cell
	k.cellMu.Unlock()
	if c == nil {
		return
	}
	c.cancel()
	k.interp.Interrupt()
	select {
	case c.interrupts <- struct{}{}:
	default: // runCell has enough tokens to act on
	}
}

func (k *Kernel) setParent(m *wire.Message, discard bool) {
	k.parentMu.Lock()
	k.parent, k.discard = m, discard
	k.parentMu.Unlock()
}

func (k *Kernel) String() string { return fmt.Sprintf("qwengo kernel %s", k.sess.ID) }
