package main

import (
	"fmt"
	"html"
	"path/filepath"
	"sync"
	"time"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/kernel/display"
)

// cellProgress shows model loads as a live progress bar in the running cell: one updatable
// display per load, redrawn at most every 100 ms and once at the end.
func cellProgress() func(path string, done, total int64) {
	var mu sync.Mutex
	type bar struct {
		d    *display.Display
		last time.Time
	}
	bars := map[string]*bar{}
	return func(path string, done, total int64) {
		mu.Lock()
		defer mu.Unlock()
		b := bars[path]
		if b == nil {
			b = &bar{d: display.NewDisplay()}
			bars[path] = b
		}
		finished := total > 0 && done >= total
		if !finished && time.Since(b.last) < 100*time.Millisecond {
			return
		}
		b.last = time.Now()
		pct := 0.0
		if total > 0 {
			pct = 100 * float64(done) / float64(total)
		}
		label := fmt.Sprintf("loading %s: %.0f%% (%s of %s)", filepath.Base(path), pct, backend.Human(done), backend.Human(total))
		data := display.HTMLData(fmt.Sprintf(`<progress value="%d" max="%d" style="width:24em"></progress> %s`, done, max(total, 1), html.EscapeString(label)))
		data[display.MIMEText] = label
		b.d.Update(data) // the first update shows it
		if finished {
			delete(bars, path)
		}
	}
}
