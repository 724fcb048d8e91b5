package kernel

import (
	"io"
	"log"
	"os"
	"testing"
)

// testLogger logs to stderr when QWENGO_KERNEL_TEST_LOG is set.
func testLogger(t *testing.T) *log.Logger {
	if os.Getenv("QWENGO_KERNEL_TEST_LOG") == "" {
		return log.New(io.Discard, "", 0)
	}
	return log.New(os.Stderr, t.Name()+": ", log.Lmicroseconds)
}
