//go:build cuda

package engine

// With -tags cuda the GPU backend registers itself as "cuda" and Backend prefers it.
import _ "github.com/qwengo/qwengo/engine/cuda"
