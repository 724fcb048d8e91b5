// Package plot draws the charts notebooks need — loss curves (also live, updated in place as
// training runs), per-phase bars, per-layer parity curves — as SVG display data, with
// gonum.org/v1/plot doing the drawing.
//
//	plot.Show(plot.Line{Title: "loss", X: "step", Y: "loss", Series: []plot.Series{{Name: "train", X: steps, Y: losses}}})
//
//	live := plot.NewLive(plot.Line{Title: "loss", X: "step", Y: "loss", LogY: true})
//	for step := 1; step <= n; step++ { ...; live.Add("train", float64(step), loss) }
//	live.Flush()
//
// Charts are values: Line and Bars implement display.SVGer, so a cell that ends with one shows
// it. Non-finite points are left out (a NaN loss must not break the plot of the others).
package plot

import (
	"bytes"
	"fmt"
	"image/color"
	"math"
	"sync"
	"time"

	gplot "gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"

	"github.com/qwengo/qwengo/kernel/display"
)

// Series is one named curve.
type Series struct {
	Name string
	X, Y []float64
}

// Line is a line chart of one or more series.
type Line struct {
	Title, X, Y string // title and axis labels
	Series      []Series
	LogY        bool    // logarithmic y axis (values ≤ 0 are left out)
	Width       float64 // centimetres; 0 = 16
	Height      float64 // centimetres; 0 = 9
}

// Bars is a bar chart: one value per label.
type Bars struct {
	Title, Y string
	Labels   []string
	Values   []float64
	Width    float64 // centimetres; 0 = 16
	Height   float64 // centimetres; 0 = 9
}

// palette is colour-blind-safe (Okabe–Ito).
var palette = []color.Color{
	color.RGBA{0, 114, 178, 255}, color.RGBA{213, 94, 0, 255}, color.RGBA{0, 158, 115, 255},
	color.RGBA{204, 121, 167, 255}, color.RGBA{230, 159, 0, 255}, color.RGBA{86, 180, 233, 255},
	color.RGBA{0, 0, 0, 255},
}

func size(w, h float64) (vg.Length, vg.Length) {
	if w <= 0 {
		w = 16
	}
	if h <= 0 {
		h = 9
	}
	return vg.Length(w) * vg.Centimeter, vg.Length(h) * vg.Centimeter
}

func render(p *gplot.Plot, w, h float64) (string, error) {
	wl, hl := size(w, h)
	wt, err := p.WriterTo(wl, hl, "svg")
	if err != nil {
		return "", fmt.Errorf("plot: %w", err)
	}
	var buf bytes.Buffer
	if _, err := wt.WriteTo(&buf); err != nil {
		return "", fmt.Errorf("plot: %w", err)
	}
	return buf.String(), nil
}

// Render draws the chart as an SVG document. gonum/plot panics on some degenerate inputs; a
// panic becomes an error (a chart must never take the cell down).
func (l Line) Render() (svg string, err error) {
	defer func() {
		if r := recover(); r != nil {
			svg, err = "", fmt.Errorf("plot: %v", r)
		}
	}()
	p := gplot.New()
	ymin, ymax := math.Inf(1), math.Inf(-1)
	p.Title.Text, p.X.Label.Text, p.Y.Label.Text = l.Title, l.X, l.Y
	if l.LogY {
		p.Y.Scale = gplot.LogScale{}
		p.Y.Tick.Marker = gplot.LogTicks{Prec: -1}
	}
	p.Add(plotter.NewGrid())
	p.Legend.Top = true
	for i, s := range l.Series {
		if len(s.X) != len(s.Y) {
			return "", fmt.Errorf("plot: series %q has %d x and %d y values", s.Name, len(s.X), len(s.Y))
		}
		pts := make(plotter.XYs, 0, len(s.X))
		for j := range s.X {
			x, y := s.X[j], s.Y[j]
			if math.IsNaN(x) || math.IsInf(x, 0) || math.IsNaN(y) || math.IsInf(y, 0) || (l.LogY && y <= 0) {
				continue
			}
			pts = append(pts, plotter.XY{X: x, Y: y})
			ymin, ymax = math.Min(ymin, y), math.Max(ymax, y)
		}
		if len(pts) == 0 {
			continue
		}
		ln, err := plotter.NewLine(pts)
		if err != nil {
			return "", fmt.Errorf("plot: series %q: %w", s.Name, err)
		}
		ln.Color = palette[i%len(palette)]
		ln.Width = vg.Points(1.5)
		p.Add(ln)
		if len(pts) == 1 { // a single point draws no line: mark it
			sc, _ := plotter.NewScatter(pts)
			sc.Color = ln.Color
			sc.Shape = draw.CircleGlyph{}
			p.Add(sc)
		}
		if s.Name != "" {
			p.Legend.Add(s.Name, ln)
		}
	}
	if l.LogY {
		if math.IsInf(ymin, 1) { // nothing positive to draw
			ymin, ymax = 0.1, 10
		}
		// gonum pads an empty range by ±1, which crosses zero on a log axis: pad by factors.
		p.Y.Min, p.Y.Max = ymin/1.25, ymax*1.25
	}
	return render(p, l.Width, l.Height)
}

// SVG implements display.SVGer (an error is drawn as text in the image).
func (l Line) SVG() string { return svgOrError(l.Render()) }

// Render draws the bar chart as an SVG document.
func (b Bars) Render() (string, error) {
	if len(b.Labels) != len(b.Values) {
		return "", fmt.Errorf("plot: %d labels for %d values", len(b.Labels), len(b.Values))
	}
	p := gplot.New()
	p.Title.Text, p.Y.Label.Text = b.Title, b.Y
	vals := make(plotter.Values, len(b.Values))
	for i, v := range b.Values {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			v = 0
		}
		vals[i] = v
	}
	bars, err := plotter.NewBarChart(vals, vg.Points(18))
	if err != nil {
		return "", fmt.Errorf("plot: %w", err)
	}
	bars.Color = palette[0]
	bars.LineStyle.Width = 0
	p.Add(plotter.NewGrid(), bars)
	p.NominalX(b.Labels...)
	return render(p, b.Width, b.Height)
}

// SVG implements display.SVGer.
func (b Bars) SVG() string { return svgOrError(b.Render()) }

func svgOrError(s string, err error) string {
	if err == nil {
		return s
	}
	return fmt.Sprintf(`<svg xmlns="http://www.w3.org/2000/svg" width="600" height="40"><text x="4" y="24" fill="#b00">%s</text></svg>`, escape(err.Error()))
}

func escape(s string) string {
	var b bytes.Buffer
	for _, r := range s {
		switch r {
		case '<':
			b.WriteString("&lt;")
		case '>':
			b.WriteString("&gt;")
		case '&':
			b.WriteString("&amp;")
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// Show displays a chart in the running cell (or wherever display publishes).
func Show(c interface{ Render() (string, error) }) error {
	s, err := c.Render()
	if err != nil {
		return err
	}
	display.SVG(s)
	return nil
}

// Live is a line chart that updates in place as points arrive (a live loss curve). Add is
// cheap: the chart is redrawn at most every Every (default 500 ms); Flush draws the last
// state. Safe for use from several goroutines.
type Live struct {
	Every time.Duration

	mu    sync.Mutex
	chart Line
	index map[string]int
	disp  *display.Display
	last  time.Time
	dirty bool
}

// NewLive starts a live chart with the given title and labels (its Series are the initial data).
func NewLive(chart Line) *Live {
	l := &Live{Every: 500 * time.Millisecond, chart: chart, index: map[string]int{}, disp: display.NewDisplay()}
	l.chart.Series = append([]Series(nil), chart.Series...)
	for i, s := range l.chart.Series {
		l.index[s.Name] = i
	}
	return l
}

// Add appends a point to the named series (created on first use) and redraws when due.
func (l *Live) Add(series string, x, y float64) {
	l.mu.Lock()
	i, ok := l.index[series]
	if !ok {
		i = len(l.chart.Series)
		l.index[series] = i
		l.chart.Series = append(l.chart.Series, Series{Name: series})
	}
	s := &l.chart.Series[i]
	s.X, s.Y = append(s.X, x), append(s.Y, y)
	l.dirty = true
	due := time.Since(l.last) >= l.Every
	l.mu.Unlock()
	if due {
		l.Flush()
	}
}

// Flush redraws the chart now if points arrived since the last drawing.
func (l *Live) Flush() {
	l.mu.Lock()
	if !l.dirty {
		l.mu.Unlock()
		return
	}
	chart := l.chart
	chart.Series = make([]Series, len(l.chart.Series))
	for i, s := range l.chart.Series {
		chart.Series[i] = Series{Name: s.Name, X: append([]float64(nil), s.X...), Y: append([]float64(nil), s.Y...)}
	}
	l.dirty, l.last = false, time.Now()
	l.mu.Unlock()
	l.disp.SVG(chart.SVG())
}

// Chart returns a copy of the chart as drawn so far (to show it again or save it).
func (l *Live) Chart() Line {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.chart
	c.Series = append([]Series(nil), l.chart.Series...)
	return c
}
