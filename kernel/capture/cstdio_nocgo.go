//go:build unix && !cgo

package capture

// Without cgo there is no C stdio in the process to flush.
func cSetLineBuffered() {}
func cFlush()           {}

const hasCStdio = false

func cPuts(string) {}
