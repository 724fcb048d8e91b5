package console

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
)

// RenderBundle turns a MIME bundle into terminal text: its text/plain
// representation when there is one, otherwise one summary per MIME type
// such as "[image/png 12 KB]". Empty for an empty bundle.
func RenderBundle(data map[string]any) string {
	if len(data) == 0 {
		return ""
	}
	if v, ok := data["text/plain"]; ok {
		return mimeText(v)
	}
	return SummariseBundle(data)
}

// SummariseBundle lists the bundle's MIME types with their sizes, sorted:
// "[image/png 12 KB] [text/html 340 B]".
func SummariseBundle(data map[string]any) string {
	keys := make([]string, 0, len(data))
	for k := range data {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("[%s %s]", k, FormatBytes(mimeSize(k, data[k])))
	}
	return strings.Join(parts, " ")
}

// mimeText returns a text value (a string, or a list of lines as Jupyter
// allows).
func mimeText(v any) string {
	switch t := v.(type) {
	case string:
		return t
	case []string:
		return strings.Join(t, "")
	case []any:
		var b strings.Builder
		for _, x := range t {
			fmt.Fprint(&b, x)
		}
		return b.String()
	case []byte:
		return string(t)
	default:
		return fmt.Sprint(v)
	}
}

// mimeSize estimates the payload size: binary types travel base64-encoded,
// so their size is the decoded one.
func mimeSize(mime string, v any) int64 {
	var n int64
	switch t := v.(type) {
	case string:
		n = int64(len(t))
	case []byte:
		return int64(len(t))
	case []string, []any:
		n = int64(len(mimeText(t)))
	default:
		b, err := json.Marshal(v)
		if err != nil {
			return 0
		}
		return int64(len(b))
	}
	if isBinaryMIME(mime) {
		if _, isStr := v.(string); isStr {
			return n * 3 / 4
		}
	}
	return n
}

func isBinaryMIME(m string) bool {
	if m == "image/svg+xml" {
		return false
	}
	return strings.HasPrefix(m, "image/") || strings.HasPrefix(m, "audio/") || strings.HasPrefix(m, "video/") ||
		m == "application/pdf" || m == "application/octet-stream"
}

// FormatBytes formats a byte count for people: 512 B, 12 KB, 1.5 MB, 3.2 GB.
func FormatBytes(n int64) string {
	const k = 1024
	switch {
	case n < k:
		return fmt.Sprintf("%d B", n)
	case n < 10*k:
		return fmt.Sprintf("%.1f KB", float64(n)/k)
	case n < k*k:
		return fmt.Sprintf("%d KB", (n+k/2)/k)
	case n < k*k*k:
		return fmt.Sprintf("%.1f MB", float64(n)/(k*k))
	default:
		return fmt.Sprintf("%.1f GB", float64(n)/(k*k*k))
	}
}
