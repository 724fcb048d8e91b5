package kernel

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
	"time"

	"github.com/qwengo/qwengo/kernel/wire"
)

// ErrStdinNotAllowed is returned by IO.Input when the execute_request did
// not allow stdin (allow_stdin false, as in jupyter-execute / nbclient).
var ErrStdinNotAllowed = errors.New("stdin is not available: the front-end sent this cell with allow_stdin false")

// ErrInputInterrupted is returned by IO.Input when the cell is interrupted
// (or has finished) while waiting for the reply.
var ErrInputInterrupted = errors.New("input interrupted")

type executeRequest struct {
	Code            string         `json:"code"`
	Silent          bool           `json:"silent"`
	StoreHistory    *bool          `json:"store_history"`
	UserExpressions map[string]any `json:"user_expressions"`
	AllowStdin      *bool          `json:"allow_stdin"`
	StopOnError     *bool          `json:"stop_on_error"`
}

func boolOr(p *bool, def bool) bool {
	if p == nil {
		return def
	}
	return *p
}

type outcome struct {
	res *Result
	err error
}

func (k *Kernel) handleExecute(ch *wire.Channel, m *wire.Message) {
	if ch != nil && ch.Name == "control" {
		k.reply(ch, m, "execute_reply", errorContent("BadRequest", "execute_request must be sent on the shell channel", nil), nil)
		return
	}
	if k.aborting {
		k.reply(ch, m, "execute_reply", map[string]any{
			"status": "aborted", "execution_count": k.count, "user_expressions": map[string]any{}, "payload": []any{},
		}, map[string]any{"status": "aborted", "engine": k.sess.ID})
		return
	}
	var req executeRequest
	if err := m.DecodeContent(&req); err != nil {
		k.reply(ch, m, "execute_reply", withCount(errorContent("BadRequest", err.Error(), nil), k.count), nil)
		return
	}
	silent := req.Silent
	storeHistory := boolOr(req.StoreHistory, !silent) && !silent
	allowStdin := boolOr(req.AllowStdin, true)
	stopOnError := boolOr(req.StopOnError, true)

	if storeHistory {
		k.count++
	}
	if !silent {
		k.publish(m, "execute_input", map[string]any{"code": req.Code, "execution_count": k.count})
	}
	k.parentMu.Lock()
	prevParent := k.parent
	k.parentMu.Unlock()
	if silent {
		// Captured output of a silent cell is dropped; afterwards it goes
		// to the last visible cell again.
		k.setParent(prevParent, true)
	} else {
		k.setParent(m, false)
	}

	started := time.Now()
	ctx, cancel := context.WithCancel(context.Background())
	cell := &runningCell{cancel: cancel, interrupts: make(chan struct{}, 4)}
	k.cellMu.Lock()
	k.cell = cell
	k.cellMu.Unlock()
	cio := &cellIO{k: k, req: m, silent: silent, allowStdin: allowStdin, ctx: ctx}

	o := k.runCell(ctx, cell, req.Code, cio, ExecOptions{StoreHistory: storeHistory})

	k.cellMu.Lock()
	k.cell = nil
	k.cellMu.Unlock()
	cancel()
	wall := time.Since(started)
	k.flushOutput()
	if silent {
		k.setParent(prevParent, false)
	}

	md := map[string]any{
		"started":          started.UTC().Format("2006-01-02T15:04:05.000000Z07:00"),
		"dependencies_met": true,
		"engine":           k.sess.ID,
	}
	if o.res != nil {
		if o.res.Duration > 0 {
			wall = o.res.Duration
		}
		if o.res.PeakDeviceBytes > 0 {
			md["peak_device_memory"] = o.res.PeakDeviceBytes
		}
	}
	md["wall_time"] = wall.Seconds()

	if o.err != nil {
		ce := asCellError(o.err)
		md["status"] = "error"
		if !silent {
			k.publish(m, "error", map[string]any{
				"ename": ce.Name, "evalue": ce.Value, "traceback": ce.Traceback, "execution_count": k.count,
			})
		}
		if stopOnError && !k.aborting {
			// Requests queued behind this cell, counted before the
			// front-end can see the failure.
			k.abortN = len(k.shellCh)
		}
		reply := withCount(errorContent(ce.Name, ce.Value, ce.Traceback), k.count)
		reply["user_expressions"] = map[string]any{}
		reply["payload"] = []any{}
		k.reply(ch, m, "execute_reply", reply, md)
		return
	}
	if o.res != nil && len(o.res.Data) > 0 && !silent {
		content := map[string]any{"execution_count": k.count, "data": o.res.Data, "metadata": map[string]any{}}
		if !k.publish(m, "execute_result", content) {
			k.sendStream(m, "stderr", "qwengo: the cell's result could not be encoded as JSON; see the kernel log\n")
		}
	}
	md["status"] = "ok"
	k.reply(ch, m, "execute_reply", map[string]any{
		"status": "ok", "execution_count": k.count,
		"user_expressions": k.userExpressions(req.UserExpressions), "payload": []any{},
	}, md)
}

// userExpressions answers user_expressions. They are not evaluated (that
// would run code outside the cell and the history); each gets an error
// result saying so, which front-ends display per expression.
func (k *Kernel) userExpressions(exprs map[string]any) map[string]any {
	out := map[string]any{}
	for name := range exprs {
		out[name] = errorContent("NotImplemented", "qwengo does not evaluate user_expressions", nil)
	}
	return out
}

func withCount(c map[string]any, n int) map[string]any {
	c["execution_count"] = n
	return c
}

// asCellError turns any Execute error into a CellError with a non-nil
// traceback.
func asCellError(err error) *CellError {
	var ce *CellError
	if errors.As(err, &ce) {
		c := *ce
		if c.Name == "" {
			c.Name = "Error"
		}
		if c.Traceback == nil {
			c.Traceback = []string{c.Error()}
		}
		return &c
	}
	if errors.Is(err, context.Canceled) {
		return &CellError{Name: "Interrupted", Value: "the cell was interrupted", Traceback: []string{"Interrupted: the cell was interrupted"}}
	}
	return &CellError{Name: "Error", Value: err.Error(), Traceback: strings.Split(err.Error(), "\n")}
}

// runCell runs the interpreter in its own goroutine so that the kernel can
// report, and after a second interrupt abandon, a compiled call that
// ignores cancellation instead of hanging forever.
func (k *Kernel) runCell(ctx context.Context, cell *runningCell, code string, cio *cellIO, opt ExecOptions) outcome {
	done := make(chan outcome, 1)
	go func() {
		defer func() {
			if r := recover(); r != nil {
				stack := strings.Split(strings.TrimRight(string(debug.Stack()), "\n"), "\n")
				k.log.Printf("interpreter panicked: %v", r)
				done <- outcome{err: &CellError{Name: "panic", Value: fmt.Sprint(r),
					Traceback: append([]string{fmt.Sprintf("panic in the interpreter: %v", r)}, stack...)}}
			}
		}()
		var res *Result
		var err error
		if ox, ok := k.interp.(OptionsExecutor); ok {
			res, err = ox.ExecuteWith(ctx, code, cio, opt)
		} else {
			res, err = k.interp.Execute(ctx, code, cio)
		}
		done <- outcome{res: res, err: err}
	}()
	// The interpreter reports a stuck compiled call itself and gives the
	// cell up on the second interrupt. If even that does not return the
	// cell within InterruptGrace, the kernel abandons it, so the notebook
	// is never stuck.
	var grace <-chan time.Time
	interrupts := 0
	for {
		select {
		case o := <-done:
			return o
		case <-cell.interrupts:
			interrupts++
			if interrupts == 2 {
				grace = time.After(k.cfg.InterruptGrace)
			}
		case <-grace:
			k.log.Printf("cell abandoned: still running %v after the second interrupt", k.cfg.InterruptGrace)
			msg := fmt.Sprintf("the cell did not stop within %v of a second interrupt: a compiled call is ignoring cancellation. "+
				"The kernel abandoned the cell; the call keeps running in the background and may hold the interpreter", k.cfg.InterruptGrace)
			k.sendStream(cio.req, "stderr", "qwengo: "+msg+"\n")
			return outcome{err: &CellError{Name: "Interrupted", Value: msg, Traceback: []string{"Interrupted: " + msg}}}
		}
	}
}

// cellIO is the IO of one execute_request.
type cellIO struct {
	k          *Kernel
	req        *wire.Message
	silent     bool
	allowStdin bool
	ctx        context.Context // cancelled on interrupt and when the cell ends
}

func (c *cellIO) Stream(name, text string) {
	if c.silent || text == "" {
		return
	}
	if sw, ok := c.k.streamWriter(); ok && c.k.isParent(c.req) {
		// Through the capture pipe, behind what compiled code wrote.
		if sw.WriteStream(name, []byte(text)) == nil {
			return
		}
	}
	c.k.out.write(c.req, name, []byte(text))
}

func (c *cellIO) Display(data map[string]any, metadata map[string]any, displayID string, update bool) {
	if c.silent || len(data) == 0 {
		return
	}
	c.k.flushOutput()
	if metadata == nil {
		metadata = map[string]any{}
	}
	transient := map[string]any{}
	if displayID != "" {
		transient["display_id"] = displayID
	}
	typ := "display_data"
	if update && displayID != "" {
		typ = "update_display_data"
	}
	if !c.k.publish(c.req, typ, map[string]any{"data": data, "metadata": metadata, "transient": transient}) {
		c.k.sendStream(c.req, "stderr", "qwengo: display data could not be encoded as JSON; see the kernel log\n")
	}
}

func (c *cellIO) ClearOutput(wait bool) {
	if c.silent {
		return
	}
	c.k.flushOutput()
	c.k.publish(c.req, "clear_output", map[string]any{"wait": wait})
}

func (c *cellIO) Input(prompt string, password bool) (string, error) {
	if !c.allowStdin {
		return "", ErrStdinNotAllowed
	}
	if c.ctx.Err() != nil {
		return "", ErrInputInterrupted
	}
	k := c.k
	k.stdinMu.Lock()
	defer k.stdinMu.Unlock()
	k.flushOutput()
	for drained := false; !drained; {
		select {
		case stale := <-k.stdinCh:
			k.log.Printf("stdin: dropped stale %s", stale.Header.MsgType)
		default:
			drained = true
		}
	}
	req, err := k.sess.NewMessage("input_request", c.req, map[string]any{"prompt": prompt, "password": password}, nil)
	if err != nil {
		return "", fmt.Errorf("input_request: %w", err)
	}
	if k.socks == nil {
		return "", errors.New("input_request: kernel not running")
	}
	if err := k.socks.Stdin.Send(req); err != nil {
		return "", err
	}
	for {
		select {
		case r := <-k.stdinCh:
			if r.Header.MsgType != "input_reply" {
				k.log.Printf("stdin: unexpected %s while waiting for input_reply", r.Header.MsgType)
				continue
			}
			if p := r.ParentHeader().MsgID; p != "" && p != req.Header.MsgID {
				k.log.Printf("stdin: input_reply for another request (%s): ignored", p)
				continue
			}
			var content struct {
				Value  string `json:"value"`
				Status string `json:"status"`
			}
			if err := r.DecodeContent(&content); err != nil {
				return "", err
			}
			if content.Status == "error" {
				return "", ErrInputInterrupted
			}
			return content.Value, nil
		case <-c.ctx.Done():
			return "", ErrInputInterrupted
		}
	}
}
