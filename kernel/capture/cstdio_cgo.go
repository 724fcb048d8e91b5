//go:build unix && cgo

package capture

/*
#include <stdio.h>
#include <stdlib.h>
static void qwengo_line_buffered(void) {
	setvbuf(stdout, NULL, _IOLBF, 0);
	setvbuf(stderr, NULL, _IONBF, 0);
}
static void qwengo_fflush(void) { fflush(NULL); }
static void qwengo_puts(const char *s) { fputs(s, stdout); }
*/
import "C"

import "unsafe"

// cSetLineBuffered makes C's stdout line buffered (it is fully buffered on
// a pipe) so printf output from C and CUDA code streams while a cell runs.
func cSetLineBuffered() { C.qwengo_line_buffered() }

// cFlush flushes every C stdio output stream.
func cFlush() { C.qwengo_fflush() }

// hasCStdio reports whether C stdio is linked in (for tests).
const hasCStdio = true

// cPuts writes s with C's fputs to stdout; used by tests to check that C
// output is captured without an explicit fflush.
func cPuts(s string) {
	cs := C.CString(s)
	C.qwengo_puts(cs)
	C.free(unsafe.Pointer(cs))
}
