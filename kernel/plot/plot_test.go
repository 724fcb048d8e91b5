package plot

import (
	"context"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qwengo/qwengo/kernel/display"
)

func TestLineRender(t *testing.T) {
	for _, c := range []struct {
		name    string
		chart   Line
		wantErr string
		want    []string
	}{
		{"two series", Line{Title: "loss", X: "step", Y: "loss", Series: []Series{{"train", []float64{1, 2, 3}, []float64{3, 2, 1}}, {"held-out", []float64{1, 3}, []float64{3.5, 1.5}}}},
			"", []string{"<svg", "loss", "held-out", "train"}},
		{"log y drops non-positive and NaN", Line{Title: "log", LogY: true, Series: []Series{{"a", []float64{1, 2, 3, 4}, []float64{10, 0, math.NaN(), 1}}}},
			"", []string{"<svg"}},
		{"single point", Line{Series: []Series{{"one", []float64{1}, []float64{1}}}}, "", []string{"<svg"}},
		{"single point, log y below 1", Line{LogY: true, Series: []Series{{"one", []float64{1}, []float64{0.3}}}}, "", []string{"<svg"}},
		{"log y, nothing positive", Line{LogY: true, Series: []Series{{"zero", []float64{1, 2}, []float64{0, -1}}}}, "", []string{"<svg"}},
		{"mismatched lengths", Line{Series: []Series{{"bad", []float64{1, 2}, []float64{1}}}}, `series "bad" has 2 x and 1 y values`, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, err := c.chart.Render()
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("error %v, want %q", err, c.wantErr)
				}
				if !strings.Contains(c.chart.SVG(), "bad") {
					t.Errorf("SVG() does not show the error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range c.want {
				if !strings.Contains(s, w) {
					t.Errorf("SVG lacks %q", w)
				}
			}
		})
	}
}

func TestBars(t *testing.T) {
	s, err := Bars{Title: "phases", Y: "ms", Labels: []string{"forward", "backward", "optimizer"}, Values: []float64{3, 7, math.Inf(1)}}.Render()
	if err != nil || !strings.Contains(s, "backward") {
		t.Fatalf("bars: %v", err)
	}
	if _, err := (Bars{Labels: []string{"a"}, Values: []float64{1, 2}}).Render(); err == nil {
		t.Fatal("mismatched bars accepted")
	}
}

type message struct {
	id     string
	update bool
}

type recorder struct {
	mu   sync.Mutex
	msgs []message
}

func (r *recorder) Display(data, metadata map[string]any, displayID string, update bool) {
	r.mu.Lock()
	r.msgs = append(r.msgs, message{displayID, update})
	r.mu.Unlock()
}
func (r *recorder) ClearOutput(bool)         {}
func (r *recorder) Context() context.Context { return context.Background() }

func TestLiveUpdatesInPlace(t *testing.T) {
	rec := &recorder{}
	prev := display.SetPublisher(rec)
	defer display.SetPublisher(prev)
	l := NewLive(Line{Title: "loss", X: "step", Y: "loss"})
	l.Every = time.Hour // only the first Add and Flush draw
	for i := 1; i <= 50; i++ {
		l.Add("train", float64(i), 1/float64(i))
	}
	l.Add("eval", 50, 0.5)
	l.Flush()
	l.Flush() // nothing new: no message
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.msgs) != 2 {
		t.Fatalf("%d display messages, want 2 (first point, flush)", len(rec.msgs))
	}
	if rec.msgs[0].update || !rec.msgs[1].update || rec.msgs[0].id == "" || rec.msgs[0].id != rec.msgs[1].id {
		t.Errorf("not one display updated in place: %+v / %+v", rec.msgs[0], rec.msgs[1])
	}
	if got := l.Chart(); len(got.Series) != 2 || len(got.Series[0].X) != 50 {
		t.Errorf("chart %+v", got.Series)
	}
}
