//go:build unix

// Package capture redirects the process's file descriptors 1 and 2 onto pipes
// so that everything written to stdout and stderr — by interpreted cells,
// compiled Go engine code, C libraries, CUDA printf, child processes that
// inherit the descriptors — reaches a Sink, which the kernel turns into the
// current cell's stream messages.
//
// Start dup2s a pipe onto each descriptor and keeps duplicates of the
// originals (Capture.Stdout, Capture.Stderr) for the kernel's own log. One
// goroutine per pipe reads what arrives and hands it to the sink; a writer
// that outpaces the sink blocks on the full pipe instead of growing memory.
//
// Flush gives ordering: it writes a marker into each pipe behind whatever is
// already there and waits until the reader has passed it, so everything
// written before Flush was called has been delivered to the sink. The kernel
// calls it before display messages, execute_result, execute_reply and idle.
// When cgo is available, C stdio is made line buffered at Start and fflush'ed
// on Flush, so printf output from C and CUDA code is not held in a stdio
// buffer.
package capture

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"sync"
	"syscall"
	"time"
)

// Sink receives captured output: name is "stdout" or "stderr". data is only
// valid during the call. Sink must not block for long and must not write to
// the captured descriptors.
type Sink func(name string, data []byte)

// FlushTimeout bounds how long Flush waits for a pipe reader.
var FlushTimeout = 2 * time.Second

// marker is written into a pipe by Flush and removed by the reader. NUL
// bytes make a collision with real output unlikely; a collision only costs
// a few dropped bytes of that output.
var marker = []byte("\x00qwengo-capture-flush\x00")

// Capture is an active redirection of descriptors 1 and 2.
type Capture struct {
	Stdout *os.File // duplicate of the original descriptor 1
	Stderr *os.File // duplicate of the original descriptor 2

	streams [2]*stream
	stopped bool
	mu      sync.Mutex
}

type stream struct {
	name   string
	fd     int      // 1 or 2
	orig   *os.File // duplicate of the original descriptor
	r      *os.File // pipe read end
	w      *os.File // our duplicate of the pipe write end (fd is dup2'ed onto it)
	sink   Sink
	done   chan struct{}
	mu     sync.Mutex
	cond   *sync.Cond
	sent   uint64 // markers written
	seen   uint64 // markers passed by the reader
	closed bool   // reader finished
}

// Start redirects descriptors 1 and 2 to sink. The Go runtime's fatal error
// reports are sent to the original stderr as well, so a crash is not lost in
// a pipe nobody reads any more.
func Start(sink Sink) (*Capture, error) {
	if sink == nil {
		return nil, errors.New("capture: nil sink")
	}
	c := &Capture{}
	for i, name := range []string{"stdout", "stderr"} {
		s, err := redirect(name, i+1, sink)
		if err != nil {
			if i == 1 {
				c.streams[0].restore()
			}
			return nil, err
		}
		c.streams[i] = s
	}
	c.Stdout, c.Stderr = c.streams[0].orig, c.streams[1].orig
	_ = debug.SetCrashOutput(c.Stderr, debug.CrashOptions{})
	cSetLineBuffered()
	for _, s := range c.streams {
		go s.read()
	}
	return c, nil
}

func redirect(name string, fd int, sink Sink) (*stream, error) {
	origFd, err := syscall.Dup(fd)
	if err != nil {
		return nil, fmt.Errorf("capture %s: dup fd %d: %w", name, fd, err)
	}
	syscall.CloseOnExec(origFd)
	r, w, err := os.Pipe()
	if err != nil {
		syscall.Close(origFd)
		return nil, fmt.Errorf("capture %s: pipe: %w", name, err)
	}
	if err := dup2(int(w.Fd()), fd); err != nil {
		syscall.Close(origFd)
		r.Close()
		w.Close()
		return nil, fmt.Errorf("capture %s: dup2 onto fd %d: %w", name, fd, err)
	}
	s := &stream{name: name, fd: fd, orig: os.NewFile(uintptr(origFd), "original-"+name),
		r: r, w: w, sink: sink, done: make(chan struct{})}
	s.cond = sync.NewCond(&s.mu)
	return s, nil
}

// restore puts the original descriptor back and closes our write end.
func (s *stream) restore() {
	_ = dup2(int(s.orig.Fd()), s.fd)
	s.w.Close()
}

func (s *stream) read() {
	defer close(s.done)
	defer func() {
		s.mu.Lock()
		s.closed = true
		s.cond.Broadcast()
		s.mu.Unlock()
	}()
	buf := make([]byte, 64<<10)
	var held []byte // tail that may be the start of a marker
	for {
		n, err := s.r.Read(buf[len(held):])
		if n > 0 {
			data := buf[:len(held)+n]
			held = nil
			for {
				i := bytes.Index(data, marker)
				if i < 0 {
					break
				}
				if i > 0 {
					s.sink(s.name, data[:i])
				}
				data = data[i+len(marker):]
				s.mu.Lock()
				s.seen++
				s.cond.Broadcast()
				s.mu.Unlock()
			}
			keep := partialMarker(data)
			if len(data)-keep > 0 {
				s.sink(s.name, data[:len(data)-keep])
			}
			if keep > 0 {
				held = append([]byte(nil), data[len(data)-keep:]...)
			}
			copy(buf, held)
		}
		if err != nil {
			if len(held) > 0 {
				s.sink(s.name, held)
			}
			// io.EOF once every write end is closed, or an error
			// after Stop closed the pipe: nothing more to read.
			return
		}
	}
}

// partialMarker returns the length of the longest suffix of data that is a
// proper prefix of marker.
func partialMarker(data []byte) int {
	max := len(marker) - 1
	if len(data) < max {
		max = len(data)
	}
	for k := max; k > 0; k-- {
		if bytes.Equal(data[len(data)-k:], marker[:k]) {
			return k
		}
	}
	return 0
}

// Flush returns once everything written to descriptors 1 and 2 before the
// call has been handed to the sink (or after FlushTimeout). C stdio buffers
// are flushed first when cgo is available.
func (c *Capture) Flush() {
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	cFlush()
	var want [2]uint64
	for i, s := range c.streams {
		s.mu.Lock()
		s.sent++
		want[i] = s.sent
		s.mu.Unlock()
		s.repair()
		if _, err := s.w.Write(marker); err != nil {
			s.mu.Lock()
			s.sent--
			want[i] = 0
			s.mu.Unlock()
		}
	}
	deadline := time.Now().Add(FlushTimeout)
	for i, s := range c.streams {
		if want[i] == 0 {
			continue
		}
		s.waitSeen(want[i], deadline)
	}
}

func (s *stream) waitSeen(n uint64, deadline time.Time) {
	t := time.AfterFunc(time.Until(deadline), func() {
		s.mu.Lock()
		s.cond.Broadcast()
		s.mu.Unlock()
	})
	defer t.Stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.seen < n && !s.closed && time.Now().Before(deadline) {
		s.cond.Wait()
	}
}

// repair re-attaches the pipe if cell code closed or replaced descriptor
// 1 or 2 (os.Stdout.Close(), for instance).
func (s *stream) repair() {
	var st1, st2 syscall.Stat_t
	if syscall.Fstat(s.fd, &st1) == nil && syscall.Fstat(int(s.w.Fd()), &st2) == nil &&
		st1.Dev == st2.Dev && st1.Ino == st2.Ino {
		return
	}
	_ = dup2(int(s.w.Fd()), s.fd)
}

// Stop restores the original descriptors, delivers what is still in the
// pipes and stops the readers. Child processes that still hold the pipe
// open only delay Stop by FlushTimeout.
func (c *Capture) Stop() error {
	c.Flush()
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return nil
	}
	c.stopped = true
	c.mu.Unlock()
	var first error
	for _, s := range c.streams {
		if err := dup2(int(s.orig.Fd()), s.fd); err != nil && first == nil {
			first = fmt.Errorf("capture %s: restore fd %d: %w", s.name, s.fd, err)
		}
		s.w.Close()
	}
	for _, s := range c.streams {
		select {
		case <-s.done:
		case <-time.After(FlushTimeout):
		}
		s.r.Close()
	}
	_ = debug.SetCrashOutput(nil, debug.CrashOptions{})
	return first
}

// WriteStream writes p into the pipe of "stdout" or "stderr" (other names:
// stdout), behind whatever compiled code has written there, so that text a
// cell produces through the interpreter and through the descriptors comes
// out in the order it was written.
func (c *Capture) WriteStream(name string, p []byte) error {
	c.mu.Lock()
	stopped := c.stopped
	c.mu.Unlock()
	if stopped {
		return errors.New("capture stopped")
	}
	s := c.streams[0]
	if name == "stderr" {
		s = c.streams[1]
	}
	_, err := s.w.Write(p)
	return err
}
