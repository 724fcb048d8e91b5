package format

import (
	"fmt"
	"strings"
)

// Error is what the readers and writers of this package return for a malformed file or
// invalid input. It names the operation, the file, the tensor when one is concerned, and the
// byte offset of the problem when it has one.
type Error struct {
	Op     string // "open", "read" or "write"
	File   string // path of the file
	Tensor string // tensor name or .dat key; "" when the problem is not in one tensor
	Offset int64  // byte offset in File; -1 when the problem has no position
	Msg    string // what is wrong
	Err    error  // underlying cause (an I/O error), or nil
}

// Error formats e as "op file: tensor "name" at offset N: msg: cause".
func (e *Error) Error() string {
	var b strings.Builder
	if e.Op != "" {
		b.WriteString(e.Op)
		b.WriteByte(' ')
	}
	b.WriteString(e.File)
	if e.Tensor != "" {
		fmt.Fprintf(&b, ": tensor %q", e.Tensor)
	}
	if e.Offset >= 0 {
		if e.Tensor != "" {
			fmt.Fprintf(&b, " at offset %d", e.Offset)
		} else {
			fmt.Fprintf(&b, ": at offset %d", e.Offset)
		}
	}
	if e.Msg != "" {
		b.WriteString(": ")
		b.WriteString(e.Msg)
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// Unwrap returns the underlying cause.
func (e *Error) Unwrap() error { return e.Err }

// newErr builds an *Error; off < 0 means "no position".
func newErr(op, file, tensor string, off int64, format string, args ...any) *Error {
	return &Error{Op: op, File: file, Tensor: tensor, Offset: off, Msg: fmt.Sprintf(format, args...)}
}

// ioErr wraps an I/O error.
func ioErr(op, file, tensor string, off int64, err error, format string, args ...any) *Error {
	e := newErr(op, file, tensor, off, format, args...)
	e.Err = err
	return e
}
