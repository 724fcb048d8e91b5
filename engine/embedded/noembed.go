//go:build qwengo_noembed

package embedded

import "io/fs"

// Built with qwengo_noembed: the model is not in this binary.
func modelFS() (fs.FS, error) { return nil, ErrNotEmbedded }
