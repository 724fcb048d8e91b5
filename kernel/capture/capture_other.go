//go:build !unix

package capture

import (
	"errors"
	"os"
)

// Sink receives captured output: name is "stdout" or "stderr".
type Sink func(name string, data []byte)

// Capture is unavailable on this system.
type Capture struct {
	Stdout, Stderr *os.File
}

// Start fails: descriptor capture needs a Unix system.
func Start(Sink) (*Capture, error) {
	return nil, errors.New("capture: file descriptor capture is only implemented on Unix systems")
}

// Flush does nothing.
func (c *Capture) Flush() {}

// Stop does nothing.
func (c *Capture) Stop() error { return nil }

// WriteStream fails: there is no pipe.
func (c *Capture) WriteStream(string, []byte) error { return errors.New("capture: not available") }
